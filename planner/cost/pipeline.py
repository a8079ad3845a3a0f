"""The pipeline step: torch's schedules, their sends, then DDP's all-reduces.

Every simulated replica runs its pipeline schedule's order (`planner.schedules.rank_actions`):
a forward and a backward task for each stage and micro-batch, in torch's order per rank. A
forward waits for the activation sent by the stage before; a backward waits for its own
forward and the gradient sent back by the stage after. Every micro-batch crossing a stage
boundary sends the same bytes over the same link, so each hop is priced once. A plan of one
stage (data parallel) is a pipeline of one stage. The step ends with the reductions and
optimizer steps (`planner.cost.reductions`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from planner.cost.memory import StepMemory
from planner.cost.plan_pricing import PlanPricing
from planner.cost.reductions import add_reductions
from planner.cost.sharded import collectives_per_step, pass_plan, pass_time
from planner.cost.simulate import Task, TaskKind, TaskList
from planner.cost.step import Step, StepTasks
from planner.cost.timing import transfer_time
from planner.plan import RankAssignment, Strategy
from planner.profile import DDP_STEP
from planner.schedules import Action, Schedule, held_peak, in_flight, rank_actions


class Hop(NamedTuple):
    """One micro-batch's send across a stage boundary."""

    sender: int
    """The rank that sends."""
    receiver: int
    work: float
    """Seconds on the link."""
    channel: str
    """The link's FIFO: one per device pair and direction."""
    nbytes: int


def price_hop(pricing: PlanPricing, ranks: list[int], src: int, dst: int, nbytes: float) -> Hop:
    """One micro-batch's send of ``nbytes`` from stage src to dst of the pipeline on ``ranks``,
    with its bytes for the whole step counted on every link it uses, the mirrored replicas' too."""
    plan, pp = pricing.plan, pricing.pp_degree
    a, b = ranks[src % pp], ranks[dst % pp]
    da, db = plan.ranks[a].device, plan.ranks[b].device
    latency, bandwidth = pricing.link(da, db)
    per_step = nbytes * pricing.micro_batches
    pricing.link_bytes[(da, db)] += per_step
    for oa, ob in pricing.twins([a, b]):  # identical ranks send the same, on their own links
        pricing.link_bytes[(oa, ob)] += per_step
    return Hop(a, b, transfer_time(nbytes, latency, bandwidth), f"p2p:{da}->{db}", round(nbytes))


def add_send(tasks: TaskList, hop: Hop, producer: Task, stage: int, posted: int | None = None) -> int:
    """The send of ``producer``'s output (or input gradient) over ``hop``, once the task
    ``posted`` (after which the receiver posts its receive) is done too; returns its id."""
    return tasks.add(
        kind=TaskKind.SEND,
        work=hop.work,
        rank=hop.sender,
        deps=[producer.id] if posted is None else [producer.id, posted],
        channel=hop.channel,
        lanes=(hop.sender,),
        peers=(hop.sender, hop.receiver),
        stage=stage,
        micro_batch=producer.micro_batch,
        nbytes=hop.nbytes,
    ).id


ComputeTasks = dict[tuple[str, int, int], Task]
"""(action kind "F"/"B", stage, micro-batch) -> its task, for one replica."""

Previous = dict[int, int]
"""A compute task's id -> the id of the task before it in its rank's program."""


class PipelineStep(Step):
    """torch's pipeline schedule on every replica, then the reductions and optimizer steps."""

    def __init__(self, pricing: PlanPricing) -> None:
        super().__init__(pricing)
        # (pipeline rank, micro-batch size) -> what it holds: its replicas and tensor peers alike.
        self._held: dict[tuple[int, float], StepMemory] = {}

    def schedule(self) -> Schedule:
        """The plan's schedule; a plan without one has one stage per rank and runs each
        micro-batch's forward then its backward (data parallel: 1F1B's order)."""
        plan = self.pricing.plan
        return plan.schedule or (Schedule.ONE_F_ONE_B if plan.strategy == Strategy.DP else Schedule.GPIPE)

    def host_loop(self) -> str:
        """torch's schedule; DDP's step for a plan of one stage."""
        return DDP_STEP if len(self.pricing.stages) == 1 else self.schedule().value

    def actions(self) -> dict[int, Sequence[Action]]:
        pricing, plan = self.pricing, self.pricing.plan
        orders = rank_actions(self.schedule(), pricing.pp_degree, pricing.micro_batches, plan.virtual_stages)
        actions: dict[int, Sequence[Action]] = {}
        for dp in pricing.simulated:
            ranks = [plan.rank_of(dp, q).rank for q in range(pricing.pp_degree)]
            actions.update(zip(ranks, orders, strict=True))
        return actions

    def tasks(self) -> StepTasks:
        pricing, plan = self.pricing, self.pricing.plan
        actions = self.actions()
        tasks = TaskList()
        programs: dict[int, list[int]] = defaultdict(list)
        last_backward: dict[tuple[int, int], int] = {}  # (rank, stage) -> task id
        previous: Previous = {}
        for dp in pricing.simulated:
            ranks = [plan.rank_of(dp, q).rank for q in range(pricing.pp_degree)]
            orders = [actions[r] for r in ranks]
            compute = self._compute(tasks, ranks, orders, programs, last_backward, previous)
            self._connect(tasks, ranks, dp, compute, previous)
        add_reductions(pricing, self, tasks, programs, last_backward)
        return StepTasks(tasks.tasks, dict(programs), actions)

    def _compute(
        self,
        tasks: TaskList,
        ranks: list[int],
        orders: Sequence[Sequence[Action]],
        programs: dict[int, list[int]],
        last_backward: dict[tuple[int, int], int],
        previous: Previous,
    ) -> ComputeTasks:
        """One replica's forwards and backwards, each rank's in its schedule's order."""
        compute: ComputeTasks = {}
        # Bound once: this runs once per micro-batch and stage (tens of thousands).
        add, stage_time = tasks.add, self.stage_time
        forward_kind, backward_kind = TaskKind.FORWARD, TaskKind.BACKWARD
        pricing = self.pricing
        stages, pp, measured = len(pricing.stages), pricing.pp_degree, pricing.profile is not None
        groups = pricing.shard_groups
        tp_comm = pricing.tp_comm if pricing.tp_degree > 1 else None  # filled by stage_time
        for q, order in enumerate(orders):
            rank = ranks[q]
            program = programs[rank]
            # The step's own host work, paid by the rank's first action (stage q, q + p, ...).
            before = self.step_host(rank, range(q, stages, pp)) if measured else 0.0
            passes = pass_plan(groups.mode, stages == 1, order) if groups.mode.sharded else None
            # Every shard group's bytes, once a step: counted with the first replica simulated.
            if passes is not None and pricing.plan.ranks[rank].dp_index == pricing.simulated[0]:
                for (stage, what), n in collectives_per_step(passes).items():
                    groups.count_bytes(stage, n if what == "gather" else 0, n if what == "reduce" else 0)
            for a in order:
                forward = a.kind == "F"
                if passes is None:
                    fwd, bwd = stage_time(rank, a.stage)
                    work = fwd if forward else bwd
                else:
                    stage_time(rank, a.stage)  # the stage's compute alone, for `Prediction.stage_times`
                    work, waited = pass_time(self, rank, a.stage, forward, *passes[a])
                    work += self.action_host(rank)
                    pricing.comm_in_compute[rank] += waited
                    key = (rank, a.stage, forward, *passes[a])
                if tp_comm:  # the tensor group's collectives inside this forward or backward
                    pricing.comm_in_compute[rank] += tp_comm[(rank, a.stage)][0 if forward else 1]
                t = add(
                    kind=forward_kind if forward else backward_kind,
                    work=work,
                    rank=rank,
                    stage=a.stage,
                    micro_batch=a.micro_batch,
                )
                compute[(a.kind, a.stage, a.micro_batch)] = t
                if tp_comm and passes is None:  # its collectives on the timeline (not sharded)
                    pricing.tp_task[t.id] = (rank, a.stage, forward)
                if passes is not None:
                    pricing.sharded_task[t.id] = key
                if before:
                    t.work, before = t.work + before, 0.0
                if program:
                    previous[t.id] = program[-1]
                program.append(t.id)
                if not forward:
                    last_backward[(rank, a.stage)] = t.id
        return compute

    def _connect(
        self, tasks: TaskList, ranks: list[int], dp: int, compute: ComputeTasks, previous: Previous
    ) -> None:
        """The sends between one replica's stages, and what each forward and backward waits for.

        A send moves its bytes only once the receiver has posted the matching receive (gloo's
        point-to-point waits for the receiver's notice; NCCL's send kernel for its peer's
        receive kernel), and torch's schedules post a receive when the receiving rank is done
        with the action before the one that needs it. So a send starts when both its
        producer and the receiver's previous action have ended: on a rank that is busy until
        then, the transfer is not hidden behind its compute.
        """
        pricing = self.pricing
        samples = pricing.micro_batch_size(dp)
        boundaries = range(len(pricing.stages) - 1)
        forward = pricing.boundaries.forward
        backward = pricing.boundaries.backward
        fwd_hops = [price_hop(pricing, ranks, j, j + 1, forward[j] * samples) for j in boundaries]
        bwd_hops = [price_hop(pricing, ranks, j + 1, j, backward[j] * samples) for j in boundaries]
        last = len(pricing.stages) - 1
        ready = previous.get  # the task after which the receiver posts its receive
        for (kind, s, i), t in compute.items():
            if kind == "F":
                if s > 0:
                    t.deps.append(
                        add_send(tasks, fwd_hops[s - 1], compute[("F", s - 1, i)], s - 1, ready(t.id))
                    )
            else:
                t.deps.append(compute[("F", s, i)].id)
                if s < last:
                    t.deps.append(add_send(tasks, bwd_hops[s], compute[("B", s + 1, i)], s + 1, ready(t.id)))

    def held(self, rank: RankAssignment, stages: list[int], actions: Sequence[Action]) -> StepMemory:
        """Activations at their peak over the schedule's order, the loss's outputs on the last
        stage, and the receive buffers."""
        pricing = self.pricing
        samples = pricing.micro_batch_size(rank.dp_index)
        key = (rank.pp_index, samples)
        if key not in self._held:
            saved = {s: pricing.stages[s].saved_per_sample * samples for s in stages}
            last = len(pricing.stages) - 1
            loss = pricing.loss_copies * pricing.stages[last].out_per_sample if last in stages else 0.0
            self._held[key] = StepMemory(
                in_flight=in_flight(actions),
                micro_batch_size=samples,
                loss_output_per_sample=loss,
                buffers=self._receive_buffers(stages, samples),
                activations_held=held_peak(actions, saved),
                runtime_strategy=Strategy.PP if pricing.pp_degree > 1 else Strategy.DP,
            )
        return self._held[key]

    def _receive_buffers(self, stages: list[int], samples: float) -> float:
        """Bytes of the receive buffers of ``stages``: m per input activation (not on the
        first stage) and m per output gradient (not on the last)."""
        pricing = self.pricing
        last = len(pricing.stages) - 1
        activations = sum(pricing.boundaries.forward[s - 1] for s in stages if s > 0)
        gradients = sum(pricing.boundaries.backward[s] for s in stages if s < last)
        per_sample = activations + gradients
        return pricing.micro_batches * samples * per_sample
