"""What the pricer asks of a plan's step: its tasks, its stages' work, what each rank holds.

One step is chosen per plan (`planner.cost.price.step_for`): torch's pipeline schedules
with DDP's all-reduces (`planner.cost.pipeline.PipelineStep`), or a GAN's own step
(`planner.cost.gan`). The base class prices a stage's work the way torch runs a stage:
each block once per micro-batch, the profile's timings of the whole model and of the
schedule's actions where they apply.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from planner.cost.memory import StepMemory
from planner.cost.plan_pricing import PlanPricing
from planner.cost.simulate import Task
from planner.cost.stages import StageCost
from planner.cost.tensor_parallel import collective_spans
from planner.plan import RankAssignment
from planner.schedules import Action


class StepTasks(NamedTuple):
    """One step's task graph, ready to simulate."""

    tasks: list[Task]
    programs: dict[int, list[int]]
    """Rank -> its compute task ids, in the order it runs them."""
    actions: dict[int, Sequence[Action]]
    """Rank -> its schedule's actions (what memory reads the micro-batches in flight from)."""


class Step(ABC):
    """One optimizer step of a plan, as the runtime runs it."""

    uses_profiled_loops = True
    """Whether the profile's timings of torch's own loops apply: the whole uncut model's
    forward and backward (a one-stage plan) and the pipeline schedule's cost per action."""

    def __init__(self, pricing: PlanPricing) -> None:
        self.pricing = pricing

    @abstractmethod
    def tasks(self) -> StepTasks:
        """The step's task graph."""

    def actions(self) -> dict[int, Sequence[Action]] | None:
        """Each simulated rank's schedule actions without building the tasks, where the step
        knows them so (`planner.cost.price.Pricer.fits`); None: only `tasks` says."""
        return None

    @abstractmethod
    def held(self, rank: RankAssignment, stages: list[int], actions: Sequence[Action]) -> StepMemory:
        """The memory terms of ``rank`` (holding ``stages``) that the step decides."""

    def host_loop(self) -> str | None:
        """The loop whose host work per action the profile measured for this step
        (`planner.profile.Profile.schedule_action_s`); None where none applies."""
        return None

    def passes(self, block: str, stage_blocks: list[str]) -> tuple[int, ...]:
        """Each run of ``block`` in one micro-batch, as a multiple of its samples: once."""
        return (1,)

    def reduced_bytes(self, cost: StageCost) -> list[float]:
        """The all-reduces a replica's stage makes per step, in bytes: its gradients, once."""
        return [cost.param_bytes]

    def stage_time(self, rank: int, stage: int) -> tuple[float, float]:
        """(forward, backward) seconds of one micro-batch of ``stage`` on ``rank``, the host
        work of each action included (a sharded stage's passes: `planner.cost.sharded`)."""
        table = self.pricing.stage_time_table
        key = (rank, stage)
        if key not in table:
            blocks = self.block_times(rank, stage)
            action = self.action_host(rank)
            table[key] = (sum(f for f, _ in blocks) + action, sum(b for _, b in blocks) + action)
        return table[key]

    def action_host(self, rank: int) -> float:
        """The host work of each forward and backward on ``rank`` (torch's schedule or
        DDP's step, from the profile; noted in `PlanPricing.host_per_action`)."""
        pricing = self.pricing
        profile, loop = pricing.profile, self.host_loop()
        if profile is None or loop is None:
            return 0.0
        kind = pricing.cluster.device(pricing.plan.ranks[rank].device).kind
        action = profile.action_s(kind, loop)
        if action:
            pricing.host_per_action[rank] = action
        return action

    def block_times(self, rank: int, stage: int) -> list[tuple[float, float]]:
        """(forward, backward) seconds of each of ``stage``'s blocks in one micro-batch on
        ``rank``; a block that recomputes runs its forward again in its backward."""
        table = self.pricing.block_time_table
        key = (rank, stage)
        if key not in table:
            table[key] = self._price_blocks(rank, stage)
        return table[key]

    def _price_blocks(self, rank: int, stage: int) -> list[tuple[float, float]]:
        pricing = self.pricing
        r = pricing.plan.ranks[rank]
        kind = pricing.cluster.device(r.device).kind
        samples = pricing.micro_batch_size(r.dp_index)
        profile = pricing.profile
        cost = pricing.stages[stage]
        tp, sp = pricing.tp_degree, pricing.sequence_parallel
        blocks = self._blocks_times(kind, samples, cost.blocks, tp, sp)
        # A replica of the whole model runs it uncut and eagerly; a pipeline stage runs
        # the pieces pipeline() cuts, which the block timings measured. The whole model's
        # timing is shared out over its blocks as their own timings share it (whole blocks:
        # a tensor-parallel rank's shares are taken of those).
        timed = profile is not None and len(pricing.stages) == 1 and profile.timed_in(pricing.dtype)
        whole = profile.whole_time(kind, samples) if timed else None
        if whole is not None and self.uses_profiled_loops:
            pricing.sources_used["compute"].add("profile")
            uncut = blocks if tp == 1 else self._blocks_times(kind, samples, cost.blocks)
            fwd, bwd = sum(f for f, _ in uncut), sum(b for _, b in uncut)
            to_f = whole[0] / fwd if fwd else 0.0
            to_b = whole[1] / bwd if bwd else 0.0
            blocks = [(f * to_f, b * to_b) for f, b in blocks]
        if tp > 1:  # the tensor group's collectives, in series with each block's ops
            groups = pricing.tensor_groups
            own = groups.pass_work(rank)  # measured: DTensor's work around each split block
            if own:
                split = [("tp" in pricing.graph.nodes[b]) * own for b in cost.blocks]
                blocks = [(f + w, b + w) for (f, b), w in zip(blocks, split, strict=True)]
            comm = groups.stage_comm(rank, cost.blocks, samples)
            again = [name in cost.recomputed for name in cost.blocks]
            pricing.tp_spans[(rank, stage)] = collective_spans(blocks, comm, again)
            blocks = [(f + cf, b + cb) for (f, b), (cf, cb) in zip(blocks, comm, strict=True)]
            forward = sum(cf for cf, _ in comm)
            redone = sum(cf for (cf, _), a in zip(comm, again, strict=True) if a)  # forwards run again
            pricing.tp_comm[(rank, stage)] = (forward, sum(cb for _, cb in comm) + redone)
        if not cost.recomputed:
            return blocks
        again = set(cost.recomputed)
        return [
            (f, b + f) if name in again else (f, b) for name, (f, b) in zip(cost.blocks, blocks, strict=True)
        ]

    def step_host(self, rank: int, stages: Iterable[int]) -> float:
        """Host seconds at the start of ``rank``'s step, holding ``stages``, from the profile:
        loading its replica's share of the batch, which every rank does, and, on a pipeline
        rank, its gradients zeroed in place (and scaled by 1/m after the step, by torch's
        schedule). Noted in `PlanPricing.host_per_step`."""
        pricing = self.pricing
        profile = pricing.profile
        if profile is None:
            return 0.0
        r = pricing.plan.ranks[rank]
        seconds = profile.batch_load_s(pricing.batch_share[r.dp_index])
        if len(pricing.stages) > 1:
            per_byte = profile.grad_s_per_byte.get(pricing.cluster.device(r.device).kind, 0.0)
            seconds += per_byte * sum(pricing.stages[s].param_bytes for s in stages)
        pricing.host_per_step[rank] = seconds
        return seconds

    def _blocks_times(
        self, kind: str, samples: float, blocks: list[str], tp: int = 1, sp: bool = False
    ) -> list[tuple[float, float]]:
        """(forward, backward) of each block, run as often as `passes` says, on one rank of
        a tensor group of ``tp`` (its share of each block, `planner.cost.tensor_parallel`)."""
        pricing = self.pricing
        out = []
        for block in blocks:
            fwd = bwd = 0.0
            for times in self.passes(block, blocks):
                f, b, src = pricing.pricer.block_times(
                    block, kind, pricing.dtype, samples * times, pricing.scale, pricing.trace_batch, tp, sp
                )
                fwd, bwd = fwd + f, bwd + b
                pricing.sources_used["compute"].add(src)
            out.append((fwd, bwd))
        return out
