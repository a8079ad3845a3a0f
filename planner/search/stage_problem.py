"""One candidate plan's partitioning problem: what `partition.best_split` needs from it.

Given a template plan (degrees, devices, micro-batches, schedule fixed; stages to be
chosen), this derives each stage position's per-block work on its device, a memory lower
bound per stage, and the price of any split.
"""

from __future__ import annotations

import functools
import itertools
import math

import networkx as nx

from planner.cost.price import Pricer
from planner.plan import Plan, Strategy
from planner.precision import DTYPE_BYTES, optimizer_state_bytes
from planner.schedules import Schedule, in_flight, rank_actions
from planner.search.build import stages_for
from planner.search.partition import SplitResult, best_split
from planner.sharding import recomputed, shard_group_size

MAX_UNITS = 512  # past this many blocks, cut only between groups of consecutive blocks


def unit_starts(graph: nx.DiGraph, blocks: list[str]) -> list[int] | None:
    """For very long graphs, group consecutive blocks into MAX_UNITS units of similar FLOPs:
    the index of each unit's first block (None: every block is its own unit)."""
    if len(blocks) <= MAX_UNITS:
        return None
    flops = [max(1, graph.nodes[b]["fwd_flops"]) for b in blocks]
    total = sum(flops)
    starts, acc = [0], 0.0
    for i, f in enumerate(flops[:-1]):
        acc += f
        if acc >= total * len(starts) / MAX_UNITS and len(starts) < MAX_UNITS:
            starts.append(i + 1)
    return starts


class StageProblem:
    """Partition ``template``'s blocks; with ``units``, only at those block indices (a coarser
    problem for very long graphs: cuts fall between units of consecutive blocks)."""

    def __init__(self, pricer: Pricer, template: Plan, units: list[int] | None = None) -> None:
        self.pricer, self.template = pricer, template
        graph, plan = pricer.graph, template
        self.blocks = list(plan.model.blocks)
        self.units = units
        self.k = len(plan.stages)
        self.recipe = plan.training.precision.recipe
        traced = DTYPE_BYTES[graph.graph.get("dtype", "float32")]
        self.scale = self.recipe.compute_bytes / traced
        """Activations' bytes per element in training / in the trace."""
        self.weight_scale = self.recipe.weight_bytes / traced
        self.trace_batch = int(graph.graph.get("batch_size", 1))
        m, p = plan.training.micro_batches, plan.pp_degree
        shares = {r.dp_index: r.batch_share for r in plan.replicas}
        # Per stage position and replica: (device, micro-batch size).
        self.places = [
            [(plan.rank_of(dp, j % p).device, shares[dp] / m) for dp in range(plan.dp_degree)]
            for j in range(self.k)
        ]
        self._memory_bounds()
        self.ranks = [j % p for j in range(self.k)] if plan.virtual_stages > 1 else None
        self.units_count = len(units) if units is not None else len(self.blocks)

    @functools.cached_property
    def work(self) -> list[list[float]]:
        """Per stage position, each unit's forward + backward seconds per micro-batch (made
        when first asked: a memory check (`may_fit`) does not need it)."""
        work = self._work()
        if self.units is not None:
            bounds = [*self.units, len(self.blocks)]
            work = [[sum(row[a:b]) for a, b in itertools.pairwise(bounds)] for row in work]
        return work

    def _work(self) -> list[list[float]]:
        """Per stage position, each block's forward + backward seconds per micro-batch."""
        kinds = {d.id: d.kind for d in self.pricer.cluster.devices}
        dtype = self.recipe.compute
        tp = (self.template.tp_degree, self.template.sequence_parallel)  # each rank's share of a block
        rows: dict[tuple, list[float]] = {}  # one row per distinct (kind, micro-batch) set
        work = []
        for j in range(self.k):
            key = tuple(sorted({(kinds[dev], mb) for dev, mb in self.places[j]}))
            if key not in rows:
                per_place = [
                    [
                        sum(
                            self.pricer.block_times(b, kind, dtype, mb, self.scale, self.trace_batch, *tp)[:2]
                        )
                        for b in self.blocks
                    ]
                    for kind, mb in key
                ]
                # The least over replicas keeps the partitioner's bound a lower bound for each.
                rows[key] = [min(col) for col in zip(*per_place, strict=True)]
            work.append(rows[key])
        return work

    def _memory_bounds(self) -> None:
        """Memory lower bound per block: parameters + gradients + optimizer state (over the
        shard group under a sharded dp_mode; a pipeline stage's gradients accumulate whole,
        its parameters stay gathered: `planner.cost.memory.sharded_terms`), and saved
        activations per sample (a recomputing block's inputs; tied copies and re-kept
        inputs only add to it); micro-batches in flight per stage, and each device's
        capacity."""
        plan, graph, scale = self.template, self.pricer.graph, self.scale
        opt = plan.training.optimizer
        per_param = optimizer_state_bytes(opt.name, opt.momentum, plan.training.precision)
        traced = DTYPE_BYTES[graph.graph.get("dtype", "float32")]
        mode = plan.dp_mode
        shard = min(
            shard_group_size(mode, [plan.rank_of(dp, q).node for dp in range(plan.dp_degree)])
            for q in range(plan.pp_degree)
        )
        grads, gathered = 1 / shard, 0.0
        if mode.sharded and self.k > 1:
            grads, gathered = 1.0, self.recipe.compute_bytes / traced
        sizes = self.pricer.sizes_for(plan.tp_degree, plan.sequence_parallel)
        own = sizes.block_param_bytes
        per_byte = self.weight_scale * (1 / shard + grads) + gathered + per_param / traced / shard
        fixed = [own[b] * per_byte for b in self.blocks]
        every = plan.stages[0].recompute_every
        saved = [
            (sizes.input_bytes[b] if recomputed(every, i) else sizes.saved[b]) / self.trace_batch * scale
            for i, b in enumerate(self.blocks)
        ]
        self.fixed = list(itertools.accumulate(fixed, initial=0.0))
        self.saved = list(itertools.accumulate(saved, initial=0.0))
        self.last_out = sizes.output[self.blocks[-1]] / self.trace_batch * scale
        # Micro-batches whose activations a stage holds at once, by its schedule.
        schedule = plan.schedule or (Schedule.ONE_F_ONE_B if plan.strategy == Strategy.DP else Schedule.GPIPE)
        flight: dict[int, int] = {}
        for order in rank_actions(schedule, plan.pp_degree, plan.training.micro_batches, plan.virtual_stages):
            flight.update(in_flight(order))
        self.flight = [flight.get(j, 1) for j in range(self.k)]
        cluster = self.pricer.cluster
        self.capacity = {
            d.id: d.memory_bytes - cluster.overhead_bytes.get(d.kind, 0) for d in cluster.devices
        }

    def _block_range(self, a: int, b: int) -> tuple[int, int]:
        """Units a..b as blocks (first, last)."""
        if self.units is None:
            return a, b
        bounds = [*self.units, len(self.blocks)]
        return bounds[a], bounds[b + 1] - 1

    def block_cuts(self, cuts: list[int]) -> list[int]:
        return cuts if self.units is None else [self.units[c] for c in cuts]

    def fits(self, j: int, a: int, b: int) -> bool:
        """Could stage j hold units a..b on every replica's device? (a lower bound of memory)"""
        a, b = self._block_range(a, b)
        fixed = self.fixed[b + 1] - self.fixed[a]
        saved = self.saved[b + 1] - self.saved[a]
        last = b == len(self.blocks) - 1
        for dev, mb in self.places[j]:
            need = fixed + saved * mb * self.flight[j] + (self.last_out * mb * self.flight[j] if last else 0)
            if need > self.capacity[dev]:
                return False
        return True

    def may_fit(self) -> bool:
        """Whether any split could fit by the memory lower bound (`fits`): each stage in turn
        takes the most units it can hold, leaving one for each stage after it. Taking the
        most is never worse: a stage that ends later leaves the next less to hold, and a
        stage's bound only grows with the units it holds."""
        n = self.units_count
        at = 0
        for j in range(self.k):
            room = n - (self.k - j - 1)  # units this stage may end before
            if at >= room or not self.fits(j, at, at):
                return False
            low, high = at, room - 1  # it fits ending at low; the last end that fits, by bisection
            while low < high:
                mid = (low + high + 1) // 2
                if self.fits(j, at, mid):
                    low = mid
                else:
                    high = mid - 1
            at = low + 1
        return at == n

    def plan(self, cuts: list[int]) -> Plan:
        t = self.template
        stages = stages_for(
            self.blocks, self.block_cuts(cuts), t.pp_degree, [s.name for s in t.stages], t.stages[0].recompute
        )
        return t.model_copy(update={"stages": stages})

    def evaluate(self, cuts: list[int]) -> float:
        pred = self.pricer(self.plan(cuts), with_timeline=False)
        return pred.step_time_s if pred.feasible else math.inf

    def solve(self, max_evaluations: int | None = None, max_nodes: int | None = None) -> SplitResult:
        return best_split(
            self.work,
            self.template.training.micro_batches,
            self.evaluate,
            fits=self.fits,
            ranks=self.ranks,
            max_evaluations=max_evaluations,
            max_nodes=max_nodes,
        )
