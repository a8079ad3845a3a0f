"""Gradient collectives the pipeline needs besides its own sends: dp averaging, tied weights.

- Across replicas (hybrid): an explicit all-reduce over the dp group. DDP around a pipeline
  stage crashed or was silently wrong with several schedules (docs/facts.md); a flat all-reduce
  was correct with all of them. Each replica's gradient is a mean over its b_i samples, so
  it is weighted by b_i / B and summed: the mean over the whole global batch.
- Across tensor-parallel replicas (with or without a pipeline): the local gradients
  averaged over the dp group (`average_local`), DDP's average without DDP.
- Across stages (a tied embedding and head): `pipeline()` gives each stage its own copy,
  and the true gradient is the sum of both copies' gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.tensor import DTensor


def _all_reduce_sum(grads: list[torch.Tensor], group, scale: float = 1.0) -> None:
    """Each of ``grads`` replaced by ``scale`` x its sum over ``group``, in one collective."""
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)  # one collective instead of one per tensor
    if scale != 1.0:
        flat.mul_(scale)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(reduced)


def average_replicas(flat: torch.Tensor, weight: float, group) -> None:
    """Replace every gradient by the batch-weighted sum over the dp group, in place:
    ``flat`` is the buffer the gradients are views of (`runtime.rank.model.flat_gradients`)."""
    flat.mul_(weight)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)


def average_local(params: list[torch.nn.Parameter], group, weight: float | None = None) -> None:
    """Each gradient's local part (its shard, for a DTensor) averaged over ``group``, in one
    collective: the dp average of tensor-parallel replicas, whose parameters DDP cannot hold
    as DTensors (runtime.parallel.tensor_parallel). Without ``weight`` the caller scales its
    loss by P b_i / B, as for DDP (runtime.parallel.data_parallel); a pipeline's replica
    weights its gradient by ``weight`` = b_i / B instead, as `average_replicas` does."""
    size = dist.get_world_size(group)
    if size > 1:
        scale = 1.0 / size if weight is None else weight
        _all_reduce_sum([local(p.grad) for p in params if p.grad is not None], group, scale)


def sum_tied(copies: list[list[torch.Tensor]], group) -> None:
    """For each tied weight, sum the gradients of its local copies and of the other ranks'.

    ``copies[k]`` are this rank's distinct tensors of tied weight k (two stages of one rank
    may hold separate copies); ``group`` spans the ranks that hold a copy, or is None when
    this rank holds them all. Sharded copies (FSDP's DTensors) are summed shard by shard:
    the ranks of ``group`` share a dp index, so they hold the same shard of each copy.
    """
    sums = []
    for tensors in copies:
        grads = [local(t.grad) if t.grad is not None else torch.zeros_like(local(t)) for t in tensors]
        sums.append(torch.stack(grads).sum(0))
    if group is not None:
        _all_reduce_sum(sums, group)
    for tensors, total in zip(copies, sums, strict=True):
        for t in tensors:
            if t.grad is None:
                t.grad = (
                    total.clone()
                    if not isinstance(t, DTensor)
                    else DTensor.from_local(total.clone(), t.device_mesh, t.placements)
                )
            else:  # in place: the gradient may be a view of the replicas' flat buffer
                local(t.grad).copy_(total)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: its shard of a DTensor, else the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
