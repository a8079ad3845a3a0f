"""The rank grid: a `DeviceMesh` laid out from the plan's own rank coordinates.

Mesh axes are ("dp", "pp", "tp") (`planner.plan.MESH_AXES`): ranks that share a
``(dp_index, pp_index)`` form one tensor group (they split the same stages' blocks), ranks
that share a ``dp_index`` one pipeline (a replica), ranks that share a ``(pp_index,
tp_index)`` hold the same shards of the same stages and average their gradients. The grid
comes from the plan rather than a default row-major layout, because the planner may place
a pipeline's stages on non-consecutive ranks (e.g. to keep a stage boundary on NVLink).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh

from planner.plan import MESH_AXES, Plan, RankAssignment


def rank_grid(plan: Plan) -> list[list[list[int]]]:
    """Global rank at each (dp_index, pp_index, tp_index).

    Coordinates [(0, 0), (1, 0), (0, 1), (1, 1)] for ranks 0..3 (no tensor parallelism)
    give [[[0], [2]], [[1], [3]]].
    """
    return [
        [[plan.rank_of(d, p, t).rank for t in range(plan.tp_degree)] for p in range(plan.pp_degree)]
        for d in range(plan.dp_degree)
    ]


@dataclass
class Placement:
    """Where this process sits: its rank's plan entry, the mesh and the torch device."""

    rank: RankAssignment
    mesh: DeviceMesh
    device: torch.device

    @property
    def dp_group(self):
        return self.mesh.get_group("dp")

    @property
    def pp_group(self):
        return self.mesh.get_group("pp")

    @property
    def tp_mesh(self) -> DeviceMesh:
        """This rank's tensor group as a one-axis mesh (what `parallelize_module` takes)."""
        return self.mesh["tp"]


def build_mesh(plan: Plan, device_type: str) -> DeviceMesh:
    """The ("dp", "pp", "tp") mesh of the plan; every rank must call it (it creates groups)."""
    return DeviceMesh(device_type, torch.tensor(rank_grid(plan)), mesh_dim_names=MESH_AXES)
