"""What the dashboard makes of an uploaded file: data, read within `planner.limits`.

A plan upload is validated strictly, then priced for its own model (traced on the meta
device; a ``py:`` model only if the server allows its module, `planner.capture.source`). Every
failure is a `PlannerError` with one line naming the file and the problem; the pages show
it and change nothing.
"""

from __future__ import annotations

from planner.cluster import Cluster, cluster_from_json
from planner.errors import PlanError, PlannerError
from planner.limits import decode_text
from planner.plan import Plan, plan_from_json


def read_plan_upload(name: str, data: bytes) -> Plan:
    """The uploaded plan, validated and priced for its own model (raises with one line)."""
    from dashboard.shared import coarse_graph_json, overrides_text
    from planner.capture.graph import from_json
    from planner.cost.price import Pricer

    plan = plan_from_json(decode_text(data, name, PlanError), origin=name)
    try:
        overrides = tuple(overrides_text(plan.model.overrides).split())
        graph = from_json(coarse_graph_json(plan.model.source, overrides))
        prediction = Pricer(graph, plan.cluster)(plan)
    except PlannerError as exc:  # its model does not build, or the plan is not for it
        raise type(exc)(f"{name}: {exc}") from None
    return plan.model_copy(update={"predicted": prediction.to_predicted()})


def read_cluster_upload(name: str, data: bytes) -> Cluster:
    """The uploaded cluster, validated (raises `ClusterError` with one line)."""
    return cluster_from_json(data, origin=name)
