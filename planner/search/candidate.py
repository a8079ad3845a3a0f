"""One layout the search considers: its degrees, devices and shares, then its price.

A candidate is built by one of three constructors, one per family of plans: `data_parallel`
(replicas of the whole model), `pipelined` (one pipeline, or replicas of one: pp and hybrid)
and `model_parallel` (a GAN's networks on their own devices). The search fills in its
screening estimate, then its plan, prediction and, when it does not fit, the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from planner.cost.price import Prediction
from planner.plan import Plan, Strategy
from planner.schedules import Schedule
from planner.sharding import DpMode


@dataclass(kw_only=True)
class Candidate:
    strategy: Strategy
    dp_degree: int
    pp_degree: int
    tp_degree: int = 1
    """Ranks per tensor group (`with_tensor_groups`)."""
    sequence_parallel: bool = False
    micro_batches: int
    schedule: Schedule | None
    virtual_stages: int
    devices: list[int]
    """Device of each rank, in rank order."""
    coords: list[tuple[int, ...]]
    """``(dp_index, pp_index)`` of each rank, or ``(dp_index, pp_index, tp_index)``."""
    shares: list[int]
    """Samples per replica."""
    mesh: str = ""
    """How the ranks lie on the nodes and device kinds, in words ("" when there is one way)."""
    names: list[str] = field(default_factory=list)
    """Stage names: the networks of a model-parallel GAN, else empty."""
    dp_mode: DpMode = DpMode.REPLICATE
    """How its data-parallel groups hold the model: the search's choice (`planner.search.levers`)."""
    recompute: str = "none"
    """What every stage recomputes: the search's choice."""
    estimate: float = math.inf
    """The screen's quick step time (`planner.search.screen`)."""
    plan: Plan | None = None
    prediction: Prediction | None = None
    exact: bool = False
    """True when the stage split is proven the fastest by `price()`."""
    reason: str = ""
    """Why the plan cannot run (memory), or why no plan could be built."""

    @classmethod
    def data_parallel(
        cls, devices: Sequence[int], shares: Sequence[int], *, micro_batches: int = 1, mesh: str = ""
    ) -> Candidate:
        """Replicas of the whole model, one per device (one device alone when there is one)."""
        return cls(
            strategy=Strategy.DP,
            dp_degree=len(devices),
            pp_degree=1,
            micro_batches=micro_batches,
            schedule=None,
            virtual_stages=1,
            devices=list(devices),
            coords=[(i, 0) for i in range(len(devices))],
            shares=list(shares),
            mesh=mesh,
        )

    @classmethod
    def pipelined(
        cls,
        *,
        dp_degree: int,
        pp_degree: int,
        micro_batches: int,
        schedule: Schedule,
        virtual_stages: int,
        devices: Sequence[int],
        coords: list[tuple[int, int]],
        shares: Sequence[int],
        mesh: str = "",
    ) -> Candidate:
        """``dp_degree`` pipelines of ``pp_degree`` stages: pp when there is one, else hybrid."""
        return cls(
            strategy=Strategy.PP if dp_degree == 1 else Strategy.HYBRID,
            dp_degree=dp_degree,
            pp_degree=pp_degree,
            micro_batches=micro_batches,
            schedule=schedule,
            virtual_stages=virtual_stages,
            devices=list(devices),
            coords=coords,
            shares=list(shares),
            mesh=mesh,
        )

    @classmethod
    def model_parallel(cls, devices: Sequence[int], batch: int, networks: Sequence[str]) -> Candidate:
        """Each of a GAN's networks (in execution order) on its own device, the whole batch."""
        return cls(
            strategy=Strategy.MP,
            dp_degree=1,
            pp_degree=len(devices),
            micro_batches=1,
            schedule=None,
            virtual_stages=1,
            devices=list(devices),
            coords=[(0, j) for j in range(len(devices))],
            shares=[batch],
            names=list(networks),
        )

    def with_tensor_groups(self, groups: dict[int, list[int]], sequence_parallel: bool) -> Candidate:
        """This layout with each of its devices standing for a tensor group: ``groups`` maps
        each device to its group's devices (itself first); the group's ranks are consecutive."""
        tp = len(next(iter(groups.values())))
        if tp == 1:
            return self
        return replace(
            self,
            tp_degree=tp,
            sequence_parallel=sequence_parallel,
            devices=[d for lead in self.devices for d in groups[lead]],
            coords=[(dp, q, t) for dp, q in self.coords for t in range(tp)],
        )

    @property
    def family(self) -> tuple:
        """What the results list once: the variants of a family differ in order, mesh,
        micro-batches or shares only."""
        return (
            self.strategy,
            len(self.devices),
            self.dp_degree,
            self.pp_degree,
            self.tp_degree,
            self.sequence_parallel,
            self.schedule,
            self.virtual_stages,
        )

    @property
    def feasible(self) -> bool:
        return self.prediction is not None and self.prediction.feasible and not self.reason

    @property
    def schedule_text(self) -> str:
        """``1f1b``, ``interleaved_1f1b v2``, or ``-`` without a pipeline schedule."""
        text = str(self.schedule or "-")
        return text + (f" v{self.virtual_stages}" if self.virtual_stages > 1 else "")

    @property
    def label(self) -> str:
        parts = (
            f"{self.strategy} dp{self.dp_degree}xpp{self.pp_degree}"
            + (f"xtp{self.tp_degree}" if self.tp_degree > 1 else "")
            + (" sp" if self.sequence_parallel else "")
            + f" m{self.micro_batches}",
            self.schedule_text,
            "" if self.dp_mode == DpMode.REPLICATE else str(self.dp_mode),
            "" if self.recompute == "none" else f"recompute {self.recompute}",
            self.mesh,
        )
        text = " ".join(x for x in parts if x)
        return text.strip()

    def row(self) -> dict[str, Any]:
        p = self.prediction
        return {
            "strategy": str(self.strategy),
            "dp": self.dp_degree,
            "pp": self.pp_degree,
            "tp": self.tp_degree,
            "sp": self.sequence_parallel,
            "m": self.micro_batches,
            "schedule": self.schedule_text,
            "dp_mode": str(self.dp_mode),
            "recompute": self.recompute,
            "mesh": self.mesh,
            "step_s": p.step_time_s if p else None,
            "samples_s": p.samples_per_s if p else None,
            "peak_mem": max((m.total for m in p.memory), default=0) if p else None,
            "bytes_sent": p.bytes_sent if p else None,
            "bubble": p.bubble_fraction if p else None,
            "mfu": p.mfu if p else None,
            "exact": self.exact,
            "feasible": self.feasible,
            "reason": self.reason,
        }
