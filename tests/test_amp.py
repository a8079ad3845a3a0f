"""The plan's precision inside a rank: autocast only where mixed, and loss scaling that
skips a step on every rank when any rank's gradients overflowed."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planner.precision import Precision
from runtime.rank.amp import Amp

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("precision", "compute"),
    [("fp32", torch.float32), ("bf16-mixed", torch.bfloat16), ("fp16-mixed", torch.float16)],
)
def test_autocast_computes_matrix_products_in_the_compute_dtype_only_when_mixed(precision, compute):
    amp = Amp(Precision(precision), CPU)
    layer = torch.nn.Linear(4, 4)
    with amp.autocast():
        out = layer(torch.ones(2, 4))
        loss = torch.nn.functional.cross_entropy(out, torch.zeros(2, dtype=torch.long))
    assert out.dtype == compute and loss.dtype == torch.float32  # losses on autocast's fp32 list
    loss.backward()
    assert layer.weight.grad.dtype == torch.float32  # fp32 weights, fp32 gradients
    assert (amp.scaler is not None) == (precision == "fp16-mixed")


def _overflow_on_one_rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    amp = Amp(Precision.FP16_MIXED, CPU)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scale = amp.scaler.get_scale()
    amp.scale((weight * 2).sum()).backward()
    if rank == 1:
        weight.grad[0] = float("inf")  # only this rank's stage overflowed
    amp.step([optimizer])
    torch.save(
        {"weight": weight.detach(), "scale": amp.scaler.get_scale(), "before": scale}, f"{out}/{rank}.pt"
    )
    dist.destroy_process_group()


def test_an_overflow_on_one_rank_makes_every_rank_skip_the_step_and_halve_its_scale():
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_overflow_on_one_rank, args=(2, f"file://{tmp}/rendezvous", tmp), nprocs=2)
        results = [torch.load(f"{tmp}/{rank}.pt", weights_only=True) for rank in range(2)]
    for got in results:
        assert torch.equal(got["weight"], torch.ones(3))  # skipped
        assert got["scale"] == got["before"] / 2


def test_a_finite_step_is_taken_with_the_gradient_unscaled():
    amp = Amp(Precision.FP16_MIXED, CPU)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    loss = (weight * 2).sum()
    amp.scale(loss).backward()
    assert weight.grad[0] == 2 * amp.scaler.get_scale()
    amp.step([optimizer])
    torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 0.1 * 2))
    assert amp.unscaled(loss.item() * amp.scaler.get_scale()) == loss.item()
