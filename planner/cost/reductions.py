"""The end of a pipeline step: gradients summed, then each rank's optimizer step.

In the order torch runs them: the gradients of a tied weight held by several stages are
summed across those stages once their last backward is done; then each stage's replicas
all-reduce their gradients (DDP; under a sharded ``dp_mode`` the reduce-scatters are in the
backwards, `planner.cost.sharded`, and ``hybrid_shard`` all-reduces each shard across
nodes); then every rank steps its optimizer, over its shard.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from planner.cost.collectives import all_reduce_time, count_ring_bytes
from planner.cost.plan_pricing import PlanPricing
from planner.cost.simulate import TaskKind, TaskList
from planner.cost.stages import tied_stages
from planner.sharding import DpMode

if TYPE_CHECKING:
    from planner.cost.step import Step

TaskIds = dict[int, list[int]]
"""Rank -> task ids."""


def add_reductions(
    pricing: PlanPricing,
    step: Step,
    tasks: TaskList,
    programs: TaskIds,
    last_backward: dict[tuple[int, int], int],
) -> None:
    """Tied-weight sums, then data-parallel all-reduces, then each rank's optimizer step.

    ``last_backward`` maps (rank, stage) to the task id of that stage's last backward.
    """
    before_optimizer: TaskIds = defaultdict(list)
    tied_of_stage = _tied_weight_sums(pricing, tasks, last_backward, before_optimizer)
    _data_parallel_all_reduces(pricing, step, tasks, last_backward, tied_of_stage, before_optimizer)
    _optimizer_steps(pricing, tasks, programs, before_optimizer)


def _tied_weight_sums(
    pricing: PlanPricing,
    tasks: TaskList,
    last_backward: dict[tuple[int, int], int],
    before_optimizer: TaskIds,
) -> dict[tuple[int, int], list[int]]:
    """One all-reduce per tied weight and replica among the ranks holding it; returns
    (dp index, stage) -> the sums that stage's gradients wait for."""
    plan, pp = pricing.plan, pricing.pp_degree
    tied_of_stage: dict[tuple[int, int], list[int]] = defaultdict(list)
    for fqn, stages in tied_stages(pricing.graph, pricing.stage_of).items():
        nbytes = pricing.graph.graph.get("param_bytes", {}).get(fqn, 0) * pricing.weight_scale
        for dp in pricing.simulated:
            ranks = sorted({plan.rank_of(dp, s % pp).rank for s in stages})
            if len(ranks) < 2:
                continue
            devices = [plan.ranks[r].device for r in ranks]
            for twin in pricing.twins(ranks):
                count_ring_bytes(pricing, twin, nbytes)
            t = tasks.add(
                kind=TaskKind.ALL_REDUCE,
                work=all_reduce_time(pricing, devices, nbytes),
                rank=ranks[0],
                deps=[last_backward[(plan.rank_of(dp, s % pp).rank, s)] for s in stages],
                channel=f"tied:{dp}:{fqn}",
                lanes=tuple(ranks),
                nbytes=round(nbytes),
            )
            for s in stages:
                tied_of_stage[(dp, s)].append(t.id)
            for r in ranks:
                before_optimizer[r].append(t.id)
    return tied_of_stage


def _data_parallel_all_reduces(
    pricing: PlanPricing,
    step: Step,
    tasks: TaskList,
    last_backward: dict[tuple[int, int], int],
    tied_of_stage: dict[tuple[int, int], list[int]],
    before_optimizer: TaskIds,
) -> None:
    """Each stage's gradients all-reduced across its replicas, once its backward and
    tied sums are done (without replicas, the optimizer waits for those directly)."""
    plan, pp = pricing.plan, pricing.pp_degree
    for s, cost in enumerate(pricing.stages):
        group = [plan.rank_of(dp, s % pp).rank for dp in range(plan.dp_degree)]
        simulated = [plan.rank_of(dp, s % pp).rank for dp in pricing.simulated]
        done = [last_backward[(r, s)] for r in simulated] + [
            t for dp in pricing.simulated for t in tied_of_stage[(dp, s)]
        ]
        mode = plan.dp_mode
        if mode == DpMode.HYBRID_SHARD:
            done = [_shards_across_nodes(pricing, step, tasks, s, simulated, done)]
        elif plan.dp_degree > 1 and not mode.sharded:
            devices = [plan.ranks[r].device for r in group]
            reduced = step.reduced_bytes(cost)
            for t in range(1, plan.tp_degree):  # each tensor index's replicas, on their own links
                others = [plan.rank_of(dp, s % pp, t).device for dp in range(plan.dp_degree)]
                for nbytes in reduced:
                    count_ring_bytes(pricing, others, nbytes)
            t = tasks.add(
                kind=TaskKind.ALL_REDUCE,
                work=sum(all_reduce_time(pricing, devices, nbytes) for nbytes in reduced),
                rank=group[0],
                deps=done,
                channel=f"dp:{s % pp}",
                lanes=tuple(simulated),
                stage=s,
                nbytes=round(sum(reduced)),
            )
            done = [t.id]
        for r in simulated:
            before_optimizer[r].extend(done)


def _shards_across_nodes(
    pricing: PlanPricing, step: Step, tasks: TaskList, stage: int, simulated: list[int], done: list[int]
) -> int:
    """``hybrid_shard``: each rank's shard of ``stage``'s gradients all-reduced with the ranks
    holding the same shard on the other nodes, all such groups at once; returns its task."""
    groups = pricing.shard_groups
    nbytes = sum(step.reduced_bytes(pricing.stages[stage])) / groups.size(simulated[0])
    replicate = {
        tuple(groups.replicate[r.rank]) for r in pricing.plan.ranks if r.pp_index == stage % pricing.pp_degree
    }
    first, *others = sorted(replicate)
    for devices in others:  # on their own links, in the same time
        count_ring_bytes(pricing, list(devices), nbytes)
    return tasks.add(
        kind=TaskKind.ALL_REDUCE,
        work=all_reduce_time(pricing, list(first), nbytes),
        rank=simulated[0],
        deps=done,
        channel=f"hsdp:{stage % pricing.pp_degree}",
        lanes=tuple(simulated),
        stage=stage,
        nbytes=round(nbytes),
    ).id


def _optimizer_steps(pricing: PlanPricing, tasks: TaskList, programs: TaskIds, before: TaskIds) -> None:
    """Each simulated rank's optimizer step over its stages' parameters (its shard of them
    under a sharded ``dp_mode``), last in its program."""
    stage_blocks = pricing.plan.stage_blocks()
    for r in pricing.plan.ranks:
        if not pricing.is_simulated(r.rank):
            continue
        mine = [s for s in range(len(pricing.stages)) if s % pricing.pp_degree == r.pp_index]
        params = round(sum(pricing.stages[s].param_count for s in mine) / pricing.shard_groups.size(r.rank))
        if pricing.plan.dp_mode.sharded:  # every tensor a DTensor shard
            sharded = sum(pricing.stages[s].param_tensors for s in mine)
        else:  # a tensor group's split layers (and norms, under sequence parallelism)
            sharded = pricing.tensor_groups.dtensor_count([b for s in mine for b in stage_blocks[s]])
        work = pricing.optimizer_time(params, r.device, sharded)
        t = tasks.add(kind=TaskKind.OPTIMIZER, work=work, rank=r.rank, deps=sorted(set(before[r.rank])))
        programs[r.rank].append(t.id)
