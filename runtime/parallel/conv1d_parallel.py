"""Megatron's split of Hugging Face's ``Conv1D`` layers (GPT-2), q, k and v fused in one.

GPT-2's linear layers are ``Conv1D``: a weight stored (in, out) and ``addmm(bias, x, weight)``,
which torch's `ColwiseParallel` and `RowwiseParallel` do not take; its attention projects q,
k and v with one of them (``c_attn``, its output q | k | v side by side), so a rank's share
is not one slice of the output but its slice of each of the three (its heads of q, of k and
of v). The weight is kept as a DTensor laid out so (``_StridedShard(1, split_factor=3)``:
the whole weight it stands for is the model's own, so a checkpoint and `full_tensor` see
the unsplit ``c_attn``), and the layer computes on its local shard with Megatron's two
operators spelled out: a column-split layer's input is copied to the group (identity
forward, all-reduce of its gradient in backward: one per layer, where torch's q, k and v
layers make three), a row-split layer's partial products are summed (all-reduce forward, or
reduce-scatter along the sequence under sequence parallelism), then its bias added.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard


def is_conv1d(module: nn.Module) -> bool:
    """A Hugging Face ``Conv1D`` (``transformers.pytorch_utils``)."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers.")


def split_columns(layer: nn.Module, mesh: DeviceMesh, parts: int = 1) -> None:
    """Split a ``Conv1D`` by output features across ``mesh``: each of its ``parts`` equal
    parts of the output (3 for a fused q | k | v) sliced alike; its input copied to the group."""
    rank, size = mesh.get_local_rank(), mesh.size()
    along_out = _StridedShard(1, split_factor=parts) if parts > 1 else Shard(1)
    along_bias = _StridedShard(0, split_factor=parts) if parts > 1 else Shard(0)
    _keep_share(layer, "weight", mesh, along_out, _slice(layer.weight, 1, parts, rank, size))
    _keep_share(layer, "bias", mesh, along_bias, _slice(layer.bias, 0, parts, rank, size))

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = _copy_to(x, mesh)
        weight, bias = layer.weight.to_local(), layer.bias.to_local()
        out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
        return out.view(*x.shape[:-1], weight.shape[-1])

    layer.forward = forward


def split_rows(layer: nn.Module, mesh: DeviceMesh, output: Placement) -> None:
    """Split a ``Conv1D`` by input features across ``mesh``: its partial products summed into
    ``output`` (whole, or this rank's slice of the sequence), then its bias (whole) added."""
    rank, size = mesh.get_local_rank(), mesh.size()
    _keep_share(layer, "weight", mesh, Shard(0), _slice(layer.weight, 0, 1, rank, size))
    _keep_share(layer, "bias", mesh, Replicate(), layer.bias.detach())

    def forward(x: torch.Tensor) -> torch.Tensor:
        partial = (x.reshape(-1, x.shape[-1]) @ layer.weight.to_local()).view(*x.shape[:-1], -1)
        summed = DTensor.from_local(partial, mesh, [Partial()], run_check=False).redistribute(mesh, [output])
        return (summed + layer.bias).to_local()  # the bias in DTensor: its gradient summed where split

    layer.forward = forward


def _slice(tensor: torch.Tensor, dim: int, parts: int, rank: int, size: int) -> torch.Tensor:
    """This rank's slice of each of ``parts`` equal parts of ``tensor`` along ``dim``."""
    return torch.cat([part.chunk(size, dim)[rank] for part in tensor.detach().chunk(parts, dim)], dim).clone()


def _keep_share(
    layer: nn.Module, name: str, mesh: DeviceMesh, placement: Placement, local: torch.Tensor
) -> None:
    """Replace ``layer.name`` by a DTensor parameter: this rank's ``local`` share of the whole."""
    whole = getattr(layer, name)
    share = DTensor.from_local(
        local, mesh, [placement], run_check=False, shape=whole.shape, stride=whole.stride()
    )
    layer.register_parameter(name, nn.Parameter(share, requires_grad=whole.requires_grad))


def _copy_to(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Megatron's f: ``x`` unchanged forward; in backward the group's partial gradients summed."""
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def is_strided(t: torch.Tensor) -> bool:
    """A DTensor laid out with a strided shard (a fused layer split by parts)."""
    return isinstance(t, DTensor) and any(isinstance(pl, _StridedShard) for pl in t.placements)


def _step(placements: tuple[Placement, ...], i: int) -> Placement:
    """Mesh dim ``i``'s placement as one step of a nested split: FSDP2 marks its shard of a
    tensor the tensor group already split along the same dim `_StridedShard` (it is a
    plain shard of what this rank's group holds); the last dim's is the group's own."""
    placement = placements[i]
    if i < len(placements) - 1 and isinstance(placement, _StridedShard):
        return Shard(placement.dim)
    return placement


def _along(mesh: DeviceMesh, i: int) -> DeviceMesh:
    return mesh if mesh.ndim == 1 else mesh[mesh.mesh_dim_names[i]]


def whole(t: DTensor) -> torch.Tensor:
    """The whole tensor a strided DTensor stands for, gathered one mesh dim at a time from the
    first (collective). Under FSDP2 GPT-2's fused bias is split twice along its one dim (the
    tensor group's strided shard, then FSDP's shard of it): `DTensor.full_tensor` put its
    elements out of order (and zeros in place of some), this gathers each split in turn."""
    mesh, placements = t.device_mesh, t.placements
    local = t.to_local()
    for i in range(mesh.ndim):
        inner = list(t.shape)  # what the dims after i still split
        for j in range(i + 1, mesh.ndim):
            if isinstance(placements[j], (Shard, _StridedShard)):
                inner[placements[j].dim] //= mesh.size(j)  # the group splits evenly (by heads)
        size = torch.Size(inner)
        stride = torch.empty(size, device="meta").stride()
        along, placement = _along(mesh, i), [_step(placements, i)]
        step = DTensor.from_local(local, along, placement, run_check=False, shape=size, stride=stride)
        local = step.full_tensor()
    return local


def held_part(full: torch.Tensor, like: DTensor) -> DTensor:
    """This rank's part of ``full`` laid out as ``like`` (the inverse of `whole`: split by the
    last mesh dim first)."""
    mesh, placements = like.device_mesh, like.placements
    local = full
    for i in reversed(range(mesh.ndim)):
        placement = [_step(placements, i)]
        local = distribute_tensor(local, _along(mesh, i), placement, src_data_rank=None).to_local()
    shape, stride = like.shape, like.stride()
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)
