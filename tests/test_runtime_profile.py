"""`python -m runtime profile`: measured block, optimizer and link timings the planner uses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.capture.coarsen import coarsen
from planner.capture.graph import graph_digest
from planner.capture.trace import trace
from planner.profile import load_profile, profile_from_json
from tests.supervision import ENV, ROOT, runtime_cli

pytestmark = pytest.mark.slow


def test_profile_measures_every_block_and_the_link_and_round_trips(tmp_path):
    out = tmp_path / "profile.json"
    done = runtime_cli(
        "profile",
        "--model",
        "gpt",
        "--set",
        "size=toy",
        "--cluster",
        "cpu:2",
        "--micro-batch-sizes",
        "1,2",
        "--repeats",
        "2",
        "-o",
        out,
        "--runs-dir",
        tmp_path / "runs",
    )
    assert done.returncode == 0, done.stderr
    profile = load_profile(out)
    # A copy where runs look for it, under its own digest (runtime.measure.compare.find_profile).
    assert load_profile(tmp_path / "runs" / "profiles" / f"{profile.digest()}.json") == profile
    graph = coarsen(trace("gpt", {"size": "toy"}))
    assert profile.graph_digest == graph_digest(graph)
    blocks = [n for n in graph if graph.nodes[n].get("kind") != "input"]
    assert {(b.block, b.micro_batch_size) for b in profile.blocks} == {(b, s) for b in blocks for s in (1, 2)}
    assert all(b.forward_s > 0 and b.backward_s >= 0 for b in profile.blocks)
    assert {t.op for t in profile.links} == {"p2p", "all_reduce", "all_gather", "reduce_scatter"}
    assert all(t.bandwidth > 0 and t.latency_s >= 0 for t in profile.links)
    assert profile.optimizers[0].seconds_per_param > 0 and profile.overhead_bytes["cpu"] > 0
    assert 0 <= profile.optimizers[0].sharded_s_per_tensor < 0.01  # DTensor's cost per tensor
    assert set(profile.contention) == {"cpu"} and profile.contention["cpu"] >= 0  # 2 ranks, 2 cores
    assert {(w.micro_batch_size, w.forward_s > 0) for w in profile.whole} == {(1, True), (2, True)}
    assert 0 < profile.pipeline_action_s["cpu"] < 0.1
    actions = profile.schedule_action_s["cpu"]  # each schedule's host work, and DDP's step's
    assert set(actions) == {"gpipe", "1f1b", "interleaved_1f1b", "ddp"} and all(
        0 < a < 0.1 for a in actions.values()
    )
    assert actions["gpipe"] == profile.pipeline_action_s["cpu"]
    assert set(profile.grad_s_per_byte) == {"cpu"} and 0 <= profile.grad_s_per_byte["cpu"] < 1e-6
    # FSDP's own work beyond the price's collective fits (none here: the fits' latencies,
    # timed after compute, cover a tiny unit's collective), and its hooks per block pass.
    assert 0 <= profile.fsdp_collective_s["cpu"] < 0.05 and 0 < profile.fsdp_pass_s["cpu"] < 0.05
    # Tensor parallelism's own work per split block and pass, measured on this toy GPT at 2
    # samples less the price's share and fits: it may come out 0 (a slow spell during the
    # replicas' steps), never negative, and small.
    assert "cpu" in profile.tp_pass_s and 0 <= profile.tp_pass_s["cpu"] < 0.05
    assert [b.samples for b in profile.batch_load] == [1, 2, 8, 16]  # each size, and 8 times it
    assert (
        set(profile.runtime_bytes["cpu"]) == {"pp", "dp"} and min(profile.runtime_bytes["cpu"].values()) >= 0
    )
    assert profile_from_json(profile.model_dump_json()) == profile
    assert profile.digest() in done.stdout

    plan_path = tmp_path / "plan.json"
    planned = runtime_cli_planner(
        "plan",
        "--model",
        "gpt",
        "--set",
        "size=toy",
        "--cluster",
        "cpu:2",
        "--global-batch",
        "8",
        "--profile",
        out,
        "-o",
        plan_path,
    )
    assert planned.returncode == 0, planned.stderr
    sources = json.loads(plan_path.read_text())["predicted"]["sources"]
    assert any(f"profile:{profile.digest()}" in v for v in sources.values()), sources


def test_profile_refuses_a_cluster_it_cannot_measure(tmp_path):
    done = runtime_cli(
        "profile", "--model", "gpt", "--set", "size=toy", "--cluster", "h100:2", "-o", tmp_path / "p.json"
    )
    assert done.returncode == 2 and "h100-80gb GPUs, and this machine has no CUDA" in done.stderr
    assert not (tmp_path / "p.json").exists()


def runtime_cli_planner(*args):
    return subprocess.run(
        [sys.executable, "-m", "planner", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=300,
    )


def test_an_all_reduce_is_timed_after_compute_and_averaged(monkeypatch):
    """Each try follows a barrier and the compute, and the figure is the mean of the tries:
    after compute, a try is either fast or slow, and a step pays the mean."""
    from runtime.measure import profiling as profile

    calls, clock = [], iter([0.0, 1.0, 10.0, 12.0, 20.0, 29.0])  # tries of 1, 2 and 9 s
    monkeypatch.setattr(profile.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(profile.time, "perf_counter", lambda: next(clock))
    all_reduce, compute = lambda: calls.append("all-reduce"), lambda: calls.append("compute")
    seconds = profile.mean_after_compute(all_reduce, compute, 3)
    assert seconds == pytest.approx(4.0)  # the median would be 2
    assert calls == ["all-reduce"] + ["barrier", "compute", "all-reduce"] * 3  # a warm-up first


def _gpus_here(monkeypatch, names: list[str]) -> None:
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(names))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    gpus = [SimpleNamespace(name=n, total_memory=80 * 2**30) for n in names]
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: gpus[i])


def test_a_profile_measures_the_clusters_one_kind_of_device_on_this_machine(monkeypatch):
    import warnings

    import torch

    from planner.cluster import resolve_cluster
    from planner.errors import PlanError
    from runtime.measure.profiling import measured_device

    assert measured_device(resolve_cluster("cpu:2")) == ("cpu", torch.device("cpu"))
    with pytest.raises(PlanError, match=r"one kind of device.*\['a100-80gb', 'h100-80gb'\]"):
        measured_device(resolve_cluster("h100:1+a100-80gb:1"))
    _gpus_here(monkeypatch, [])
    with pytest.raises(PlanError, match="h100-80gb GPUs, and this machine has no CUDA"):
        measured_device(resolve_cluster("h100:2"))
    _gpus_here(monkeypatch, ["NVIDIA H100 80GB HBM3"])
    with pytest.raises(PlanError, match="links needs 2 GPUs here; this machine has 1"):
        measured_device(resolve_cluster("h100:2"))
    _gpus_here(monkeypatch, ["NVIDIA H100 80GB HBM3"] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same model: nothing to warn about
        assert measured_device(resolve_cluster("h100:2")) == ("h100-80gb", torch.device("cuda", 0))
    _gpus_here(monkeypatch, ["NVIDIA A100-SXM4-80GB"] * 2)
    with pytest.warns(UserWarning, match="cluster's h100-80gb on this machine's NVIDIA A100-SXM4-80GB"):
        assert measured_device(resolve_cluster("h100:2"))[0] == "h100-80gb"
