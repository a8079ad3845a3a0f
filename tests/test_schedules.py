"""Schedule rules and orders agree with torch.distributed.pipelining, both ways."""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)
from torch.distributed.pipelining.schedules import _ComputationType
from torch.testing._internal.distributed.fake_pg import FakeStore

from planner.schedules import Action, in_flight, rank_actions, schedule_error


@pytest.fixture(scope="module")
def groups():
    # A fake process group: schedules validate and lay out their order without any peers.
    dist.init_process_group("fake", rank=0, world_size=4, store=FakeStore())
    yield {p: dist.new_group(list(range(p))) for p in (2, 4)}
    dist.destroy_process_group()


def _stage(index, num_stages, group):
    return PipelineStage(torch.nn.Linear(2, 2), index, num_stages, torch.device("cpu"), group=group)


def _torch_accepts(schedule, p, m, v, group):
    loss = lambda out, target: out.sum()
    try:
        if schedule == "gpipe":
            ScheduleGPipe(_stage(0, p, group), m, loss_fn=loss)
        elif schedule == "1f1b":
            Schedule1F1B(_stage(0, p, group), m, loss_fn=loss)
        else:
            ScheduleInterleaved1F1B([_stage(k * p, v * p, group) for k in range(v)], m, loss_fn=loss)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("p", [2, 4])
def test_rules_agree_with_torch_both_ways(groups, p):
    for m in range(1, 17):
        for schedule, v in [("gpipe", 1), ("1f1b", 1), ("interleaved_1f1b", 2), ("interleaved_1f1b", 3)]:
            ours = schedule_error(schedule, p, m, v) is None
            assert ours == _torch_accepts(schedule, p, m, v, groups[p]), (schedule, p, m, v)


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("v", [2, 3])
def test_interleaved_order_is_torchs(groups, p, v):
    for m in range(1, 17):
        if schedule_error("interleaved_1f1b", p, m, v):
            continue
        sched = ScheduleInterleaved1F1B(
            [_stage(k * p, v * p, groups[p]) for k in range(v)], m, loss_fn=lambda o, t: o.sum()
        )
        ours = rank_actions("interleaved_1f1b", p, m, v)
        for rank in range(p):
            theirs = [
                (
                    a.stage_index,
                    "F" if a.computation_type == _ComputationType.FORWARD else "B",
                    a.microbatch_index,
                )
                for a in sched.pipeline_order[rank]
                if a is not None
                and a.computation_type in (_ComputationType.FORWARD, _ComputationType.FULL_BACKWARD)
            ]
            assert [(a.stage, a.kind, a.micro_batch) for a in ours[rank]] == theirs, (p, m, v, rank)


def test_gpipe_order_is_torchs(groups):
    for m in (1, 3, 8):
        sched = ScheduleGPipe(_stage(0, 4, groups[4]), m, loss_fn=lambda o, t: o.sum())
        order = sched._get_pipeline_order()
        ours = rank_actions("gpipe", 4, m)
        for rank in range(4):
            theirs = [
                ("F" if a.computation_type == _ComputationType.FORWARD else "B", a.microbatch_index)
                for a in order[rank]
                if a is not None
                and a.computation_type in (_ComputationType.FORWARD, _ComputationType.FULL_BACKWARD)
            ]
            assert [(a.kind, a.micro_batch) for a in ours[rank]] == theirs


def test_every_micro_batch_is_run_forward_then_backward_once_per_stage():
    for schedule, p, m, v in [("gpipe", 4, 5, 1), ("1f1b", 4, 6, 1), ("interleaved_1f1b", 2, 4, 2)]:
        for rank, actions in enumerate(rank_actions(schedule, p, m, v)):
            for stage in {a.stage for a in actions}:
                assert stage % p == rank
                for i in range(m):
                    fwd = actions.index(Action(stage, "F", i))
                    bwd = actions.index(Action(stage, "B", i))
                    assert fwd < bwd
                    assert actions.count(Action(stage, "F", i)) == actions.count(Action(stage, "B", i)) == 1


def test_1f1b_keeps_fewer_micro_batches_in_flight_than_gpipe():
    p, m = 4, 8
    for s in range(p):
        assert in_flight(rank_actions("gpipe", p, m)[s]) == {s: m}
        assert in_flight(rank_actions("1f1b", p, m)[s]) == {s: min(m, p - s)}
