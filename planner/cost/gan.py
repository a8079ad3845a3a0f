"""The GAN's step as the runtime's GAN engine runs it (runtime.parallel.gan), priced.

A GAN (planner.networks) never runs torch's pipeline schedule. Two steps price it:

- `GanStep` (mp: each network on its own rank): the engine's hand-written phases, G's
  samples sent to D and their gradient sent back; D holds the real and the fake half of
  its batch at once.
- `GanReplicaStep` (data parallel: each replica holds both networks): the pipeline step's
  tasks, but a replica runs D on three batches' worth of samples per step (``gan_step``: on
  the real and the generated samples at once for D's loss, then on the generated ones again
  for G's), and all-reduces twice (DDP reduces after every backward).

Neither uses the profile's timings of torch's own loops (the whole model's, the schedule's
per action): the engine runs neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from planner.cost.memory import StepMemory
from planner.cost.pipeline import PipelineStep, add_send, price_hop
from planner.cost.simulate import Task, TaskKind, TaskList
from planner.cost.stages import StageCost
from planner.cost.step import Step, StepTasks
from planner.errors import PlanError
from planner.networks import ADVERSARIAL, DISCRIMINATOR, GENERATOR, is_adversarial
from planner.plan import RankAssignment, Strategy
from planner.schedules import Action, in_flight


class GanReplicaStep(PipelineStep):
    """A GAN on replicas that each hold both networks: the pipeline step's tasks, D run
    three times and the gradients reduced twice."""

    uses_profiled_loops = False

    def passes(self, block: str, stage_blocks: list[str]) -> tuple[int, ...]:
        """D runs on the real and the generated samples (twice the micro-batch), then on
        the generated ones (once); G once."""
        return (2, 1) if block == DISCRIMINATOR and is_adversarial(stage_blocks) else (1,)

    def reduced_bytes(self, cost: StageCost) -> list[float]:
        """D's gradients after D's loss, then G's and D's again after G's loss (DDP
        reduces every backward; D's second gradients are cleared unused)."""
        if is_adversarial(cost.blocks):
            d_bytes = self.pricing.graph.nodes[DISCRIMINATOR]["param_bytes"] * self.pricing.weight_scale
            return [d_bytes, cost.param_bytes]
        return [cost.param_bytes]


class _Networks(NamedTuple):
    """Where an mp plan puts G and D, and their (forward, backward) seconds."""

    g_stage: int
    d_stage: int
    g_rank: int
    d_rank: int
    g_time: tuple[float, float]
    d_time: tuple[float, float]


class _BatchBytes(NamedTuple):
    samples: float
    """G's samples, sent to D."""
    gradient: float
    """Their gradient, sent back to G."""


class GanStep(Step):
    """G and D on their own ranks (mp): one step as the engine's phases.

    Discriminator step: D forward and backward on real samples; G forward, send the
    samples, D forward and backward on them; D's optimizer. Generator step: D forward on
    the same samples, backward to its input, send that gradient back, G backward, G's
    optimizer.
    """

    uses_profiled_loops = False

    def tasks(self) -> StepTasks:
        at = self._networks()
        tasks = TaskList()
        d_program, g_program = self._discriminator_step(tasks, at)
        more_d, more_g = self._generator_step(tasks, at, after=d_program[-1])
        pricing = self.pricing
        pricing.sources_used["compute"].add("datasheet" if pricing.profile is None else "profile")
        programs = {at.d_rank: d_program + more_d, at.g_rank: g_program + more_g}
        actions = {
            at.d_rank: [Action(at.d_stage, "F", 0), Action(at.d_stage, "B", 0)],
            at.g_rank: [Action(at.g_stage, "F", 0), Action(at.g_stage, "B", 0)],
        }
        return StepTasks(tasks.tasks, programs, actions)

    def _networks(self) -> _Networks:
        """The stages named after G and D (the engine finds its networks by stage name)."""
        plan = self.pricing.plan
        stage = {s.name: s.index for s in plan.stages}
        if not is_adversarial(stage):
            raise PlanError(
                f"stages: the GAN's mp plan needs a stage named after each of {', '.join(ADVERSARIAL)}, "
                f"got {sorted(stage, key=str)}"
            )
        g_stage, d_stage = stage[GENERATOR], stage[DISCRIMINATOR]
        g, d = plan.rank_of(0, g_stage).rank, plan.rank_of(0, d_stage).rank
        return _Networks(g_stage, d_stage, g, d, self.stage_time(g, g_stage), self.stage_time(d, d_stage))

    def _discriminator_step(self, tasks: TaskList, at: _Networks) -> tuple[list[int], list[int]]:
        """D on real samples, G's samples sent to D, D on them, D's optimizer; returns D's and
        G's task ids in program order."""
        (g_f, _), (d_f, d_b) = at.g_time, at.d_time
        d, d_stage = at.d_rank, at.d_stage
        real_f = tasks.add(kind=TaskKind.FORWARD, work=d_f, rank=d, stage=d_stage, micro_batch=0)
        real_b = tasks.add(
            kind=TaskKind.BACKWARD, work=d_b, rank=d, stage=d_stage, micro_batch=0, deps=[real_f.id]
        )
        g_fwd = tasks.add(kind=TaskKind.FORWARD, work=g_f, rank=at.g_rank, stage=at.g_stage, micro_batch=0)
        samples = self._send(tasks, at.g_stage, at.d_stage, g_fwd, self._batch_bytes(at).samples)
        fake_f = tasks.add(
            kind=TaskKind.FORWARD, work=d_f, rank=d, stage=d_stage, micro_batch=1, deps=[samples]
        )
        fake_b = tasks.add(
            kind=TaskKind.BACKWARD, work=d_b, rank=d, stage=d_stage, micro_batch=1, deps=[fake_f.id]
        )
        d_opt = tasks.add(
            kind=TaskKind.OPTIMIZER,
            work=self._optimizer_time(d_stage, d),
            rank=d,
            deps=[real_b.id, fake_b.id],
        )
        return [real_f.id, real_b.id, fake_f.id, fake_b.id, d_opt.id], [g_fwd.id]

    def _generator_step(self, tasks: TaskList, at: _Networks, after: int) -> tuple[list[int], list[int]]:
        """D on the same samples for G's loss once D has stepped, the gradient sent back to G,
        G's backward and optimizer; returns D's and G's task ids in program order."""
        (_, g_b), (d_f, d_b) = at.g_time, at.d_time
        d, d_stage, g = at.d_rank, at.d_stage, at.g_rank
        gen_f = tasks.add(kind=TaskKind.FORWARD, work=d_f, rank=d, stage=d_stage, micro_batch=2, deps=[after])
        gen_b = tasks.add(
            kind=TaskKind.BACKWARD, work=d_b, rank=d, stage=d_stage, micro_batch=2, deps=[gen_f.id]
        )
        grad = self._send(tasks, d_stage, at.g_stage, gen_b, self._batch_bytes(at).gradient)
        g_bwd = tasks.add(
            kind=TaskKind.BACKWARD, work=g_b, rank=g, stage=at.g_stage, micro_batch=0, deps=[grad]
        )
        g_opt = tasks.add(
            kind=TaskKind.OPTIMIZER, work=self._optimizer_time(at.g_stage, g), rank=g, deps=[g_bwd.id]
        )
        return [gen_f.id, gen_b.id], [g_bwd.id, g_opt.id]

    def _batch_bytes(self, at: _Networks) -> _BatchBytes:
        """What the whole batch sends across the boundary between G and D."""
        pricing = self.pricing
        boundary = min(at.g_stage, at.d_stage)
        batch = pricing.plan.training.global_batch
        return _BatchBytes(
            pricing.boundaries.forward[boundary] * batch, pricing.boundaries.backward[boundary] * batch
        )

    def _send(self, tasks: TaskList, src: int, dst: int, producer: Task, nbytes: float) -> int:
        pricing = self.pricing
        ranks = [pricing.plan.rank_of(0, q).rank for q in range(pricing.pp_degree)]
        return add_send(tasks, price_hop(pricing, ranks, src, dst, nbytes), producer, src)

    def _optimizer_time(self, stage: int, rank: int) -> float:
        pricing = self.pricing
        return pricing.optimizer_time(pricing.stages[stage].param_count, pricing.plan.ranks[rank].device)

    def held(self, rank: RankAssignment, stages: list[int], actions: Sequence[Action]) -> StepMemory:
        """The whole batch at once; D's loss holds the real and the fake half of its batch
        together. No loss outputs beyond D's activations, no receive buffers."""
        plan = self.pricing.plan
        flight = {
            s: 2 * n if plan.stages[s].name == DISCRIMINATOR else n for s, n in in_flight(actions).items()
        }
        return StepMemory(
            in_flight=flight,
            micro_batch_size=plan.training.global_batch,
            loss_output_per_sample=0.0,
            buffers=0.0,
            activations_held=None,
            runtime_strategy=Strategy.DP,
        )
