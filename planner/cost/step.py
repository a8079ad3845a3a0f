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
        """(forward, backward) seconds of one micro-batch of ``stage`` on ``rank``."""
        table = self.pricing.stage_time_table
        key = (rank, stage)
        if key not in table:
            table[key] = self._price_stage(rank, stage)
        return table[key]

    def _price_stage(self, rank: int, stage: int) -> tuple[float, float]:
        pricing = self.pricing
        r = pricing.plan.ranks[rank]
        kind = pricing.cluster.device(r.device).kind
        samples = pricing.micro_batch_size(r.dp_index)
        profile = pricing.profile
        one_stage = len(pricing.stages) == 1
        # A replica of the whole model runs it uncut and eagerly; a pipeline stage runs
        # the pieces pipeline() cuts, which the block timings measured.
        timed = profile is not None and one_stage and profile.timed_in(pricing.dtype)
        whole = profile.whole_time(kind, samples) if timed else None
        if whole is not None and self.uses_profiled_loops:
            fwd, bwd = whole
            pricing.sources_used["compute"].add("profile")
        else:
            fwd, bwd = self._blocks_time(kind, samples, pricing.stages[stage].blocks)
        loop = self.host_loop()
        action = profile.action_s(kind, loop) if profile is not None and loop is not None else 0.0
        if action:
            fwd, bwd = fwd + action, bwd + action
            pricing.host_per_action[rank] = action
        return fwd, bwd

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

    def _blocks_time(self, kind: str, samples: float, blocks: list[str]) -> tuple[float, float]:
        """The stage's blocks, each run as often as `passes` says, block by block."""
        pricing = self.pricing
        fwd = bwd = 0.0
        for block in blocks:
            for times in self.passes(block, blocks):
                f, b, src = pricing.pricer.block_times(
                    block, kind, pricing.dtype, samples * times, pricing.scale, pricing.trace_batch
                )
                fwd, bwd = fwd + f, bwd + b
                pricing.sources_used["compute"].add(src)
        return fwd, bwd
