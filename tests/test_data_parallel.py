"""Data-parallel replicas start from the first rank's weights (the broadcast that replaces
DDP's initial sync, see runtime.parallel.data_parallel.replicate_first)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runtime.parallel.data_parallel import replicate_first


def _replicate(rank: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # each rank draws other weights
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        model[1].running_mean.fill_(float(rank))  # a buffer that differs too
        first = torch.cat([t.detach().flatten().clone() for t in model.state_dict().values()])
        replicate_first(model, None)
        mine = torch.cat([t.detach().flatten() for t in model.state_dict().values()])
        both = [torch.zeros_like(mine) for _ in range(2)]
        dist.all_gather(both, mine)
        assert torch.equal(both[0], both[1])
        if rank == 0:  # the first rank's weights are the ones kept
            assert torch.equal(mine, first)
    finally:
        dist.destroy_process_group()


def test_every_replica_starts_from_the_first_ranks_parameters_and_buffers(tmp_path):
    mp.spawn(_replicate, args=(f"file://{tmp_path / 'rendezvous'}",), nprocs=2)
