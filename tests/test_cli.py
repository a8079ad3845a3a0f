"""`python -m planner`: the commands users type, run as users run them."""

import json
import subprocess
import sys

import networkx as nx


def planner(*args):
    return subprocess.run(
        [sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=120
    )


def test_graph_json_has_the_documented_shape():
    out = planner(
        "graph", "--model", "gpt", "--set", "n_layer=1", "--set", "d_model=32", "n_head=2", "--json"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {"summary", "graph"}
    assert set(doc["summary"]) == {
        "num_nodes",
        "param_count",
        "fwd_flops_per_sample",
        "saved_bytes_per_sample",
        "largest_activation_bytes",
    }
    assert all(isinstance(v, int) for v in doc["summary"].values())
    graph = nx.node_link_graph(doc["graph"], edges="edges")
    assert graph.number_of_nodes() == doc["summary"]["num_nodes"]
    assert graph.graph["config"]["n_layer"] == 1 and graph.graph["config"]["d_model"] == 32
    # 256*32 embedding + 64*32 positions + one block (no key bias) + final norm + head
    block = 4 * (32 * 32 + 32) - 32 + 2 * 2 * 32 + (32 * 128 + 128) + (128 * 32 + 32)
    assert doc["summary"]["param_count"] == 256 * 32 + 64 * 32 + block + 2 * 32 + 32 * 256


def test_graph_coarsen_prints_a_block_table():
    out = planner("graph", "--model", "gan", "--coarsen")
    assert out.returncode == 0, out.stderr
    assert "generator" in out.stdout and "discriminator" in out.stdout
    assert "parameters   35,393" in out.stdout


def test_graph_of_an_untraceable_model_warns_and_still_answers():
    out = planner("graph", "--model", "py:tests.fixtures.models:branchy")
    assert out.returncode == 0, out.stderr
    assert "warning: torch.export could not capture module 'gate'" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_inputs_exit_2_with_one_line_and_no_traceback():
    for args, message in [
        (["graph", "--model", "resnet"], "unknown model source 'resnet'"),
        (["graph", "--model", "gpt", "--set", "n_layer"], "not of the form key=value"),
        (["graph", "--model", "gpt", "--set", "layers=3"], "gpt has no parameter 'layers'"),
        (["graph", "--model", "py:tests.fixtures.models:broken"], "module 'inner'"),
        (["cluster", "a100:8"], "ambiguous: a100-40gb, a100-80gb"),
        (["cluster", "nope.json"], "cannot read cluster file"),
        (["graph", "--model", "gpt", "--set", "n_layer=1000000000"], "'n_layer' is 1,000,000,000; sizes"),
        (
            ["plan", "--model", "gpt", "--cluster", "cpu:2", "--global-batch", "8", "--micro-batches", "0"],
            "argument --micro-batches: 0 is not from 1 to",
        ),
        (
            ["plan", "--model", "gpt", "--cluster", "cpu:2", "--global-batch", "8", "-o", "/no/such/p.json"],
            "folder '/no/such' does not exist",
        ),
        (["graph", "--model", "gpt", "--batch-size", "x"], "argument --batch-size: 'x' is not an integer"),
        (
            ["plan", "--model", "gpt", "--cluster", "cpu:2", "--global-batch", "8", "--strategy", "zero"],
            "(choose from 'auto', 'dp', 'pp', 'hybrid', 'mp')",
        ),
        (
            ["plan", "--model", "gpt", "--cluster", "cpu:2", "--global-batch", "8", "--schedule", "x"],
            "(choose from 'gpipe', '1f1b', 'interleaved_1f1b')",
        ),
        (
            ["plan", "--model", "gpt", "--cluster", "cpu:2", "--global-batch", "8", "--tp", "two"],
            "tp: 'two' is not auto or a positive whole number of ranks",
        ),
        (
            ["plan", "--model", "gpt", "--cluster", "cpu:2", "--global-batch", "8", "--tp", "\uff12"],
            "tp: '\uff12' is not auto or a positive whole number of ranks",  # a full-width 2
        ),
        (
            ["plan", "--model", "gpt", "--cluster", "cpu:6", "--global-batch", "8", "--tp", "3"],
            "tp: block 'blocks.0': tp_degree 3 does not divide its 4 attention heads",
        ),
        (
            ["plan", "--model", "mlp", "--cluster", "cpu:2", "--global-batch", "8", "--tp", "2"],
            "tp: 2: no block of this model has a tensor-parallel layout (use 1)",
        ),
        (
            ["plan", "--model", "mlp", "--cluster", "cpu:2", "--global-batch", "8", "--sequence-parallel"],
            "sequence_parallel: splits a tensor group's norms; no tensor degree above 1 applies",
        ),
    ]:
        out = planner(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1, out.stderr


def test_cluster_forms_and_list(tmp_path):
    out = planner("cluster", "a100-80gb:8x2", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["devices"]) == 16
    path = tmp_path / "c.json"
    path.write_text(out.stdout)
    again = planner("cluster", str(path), "--json")
    assert json.loads(again.stdout) == doc
    text = planner("cluster", "dgx-h100").stdout
    assert "8 devices on 1 node(s)" in text and "28 link(s) nvlink4" in text
    listing = planner("cluster", "--list").stdout
    for kind in ["h100-80gb", "a100-40gb", "a100-80gb", "v100-16gb", "v100-32gb", "l4", "rtx4090", "cpu"]:
        assert f"  {kind} " in listing
    assert "datasheet" in listing and "source:" in listing


def test_hostile_plan_files_get_one_line(tmp_path):
    for name, data in [
        ("deep.json", b"[" * 100_000 + b"]" * 100_000),
        ("latin1.json", b'{"name": "caf\xe9"}'),
        ("big-int.json", b'{"schema_version": ' + b"9" * 10_000 + b"}"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        out = planner("validate", str(path))
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"error: {path}: ") and out.stderr.count("\n") == 1, out.stderr


def test_a_large_cluster_is_summed_up_per_run_of_identical_nodes():
    out = planner("cluster", "a100-80gb:4x20+v100-32gb:4x20")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == [
        "cluster a100-80gb:4x20+v100-32gb:4x20: 160 devices on 20 node(s)",
        "  nodes 0-19 (20): 4 x a100-80gb 80.0 GiB, 4 x v100-32gb 32.0 GiB each node",
    ]
    assert len(lines) < 10  # not one line per device, nor per pair


def test_plan_searches_tensor_parallel_degrees_and_shows_them_with_mfu():
    out = planner(
        "plan",
        "--model",
        "gpt",
        "--set",
        "size=toy",
        "--cluster",
        "h100:4",
        "--global-batch",
        "8",
        "--tp",
        "2",
        "--sequence-parallel",
        "--precision",
        "bf16-mixed",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if "strategy" in line)
    assert " tp " in header and " MFU " in header
    rows = [line for line in lines[lines.index(header) + 1 :] if line.strip()]
    assert rows and all(" 2 sp " in row for row in rows), rows  # the pinned degree, everywhere
    assert any(line.startswith("note: 4 blocks without a tensor-parallel layout") for line in lines)
