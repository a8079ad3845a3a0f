"""The plan document: round trip, schema, and refusals that name the field."""

import json
import subprocess
import sys

import pytest

from planner.capture.coarsen import coarsen
from planner.capture.trace import trace
from planner.cluster import resolve_cluster
from planner.errors import PlanError
from planner.plan import SCHEMA_PATH, json_schema, load_plan, plan_from_json, save_plan
from planner.search.build import make_plan


@pytest.fixture(scope="module")
def gpt():
    return coarsen(trace("gpt", {"n_layer": 4}))


@pytest.fixture(scope="module")
def hybrid(gpt):
    return make_plan(
        gpt,
        resolve_cluster("cpu:4"),
        strategy="hybrid",
        global_batch=16,
        dp_degree=2,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=4,
    )


def test_round_trip_is_exact(hybrid, tmp_path):
    path = tmp_path / "plan.json"
    save_plan(hybrid, path)
    again = load_plan(path)
    assert again == hybrid
    assert again.to_json() == hybrid.to_json()


def test_the_committed_json_schema_is_current():
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == json_schema(), "regenerate with: python -m planner schema > planner/plan.schema.json"


def test_stages_cut_between_modules_and_ranks_have_coordinates(hybrid):
    assert [(s.first, s.last, s.pp_rank) for s in hybrid.stages] == [
        ("tok_emb", "blocks.1", 0),
        ("blocks.2", "head", 1),
    ]
    assert [(r.rank, r.device, r.dp_index, r.pp_index) for r in hybrid.ranks] == [
        (0, 0, 0, 0),
        (1, 1, 0, 1),
        (2, 2, 1, 0),
        (3, 3, 1, 1),
    ]
    assert [r.batch_share for r in hybrid.replicas] == [8, 8]


def test_interleaved_stages_round_robin_over_pipeline_ranks(gpt):
    plan = make_plan(
        gpt,
        resolve_cluster("cpu:2"),
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule="interleaved_1f1b",
        virtual_stages=2,
        micro_batches=4,
    )
    assert [s.pp_rank for s in plan.stages] == [0, 1, 0, 1]
    assert plan.stage_blocks()[0] == ["tok_emb", "pos_emb"]


def _doc(plan):
    return json.loads(plan.to_json())


def _refused(doc, message):
    with pytest.raises(PlanError, match=message):
        plan_from_json(json.dumps(doc))


def test_unknown_keys_nan_negative_ids_and_newer_versions_are_refused(hybrid):
    doc = _doc(hybrid)
    _refused({**doc, "colour": "red"}, "colour: unknown key")
    _refused({**doc, "training": {**doc["training"], "lr": 0.1}}, r"training.lr: unknown key")
    _refused({**doc, "schema_version": 5}, r"schema_version 5 is newer than this planner supports \(4\)")
    _refused({**doc, "training": {**doc["training"], "dtype": "float32"}}, r"training.dtype: unknown key")
    _refused({**doc, "training": {**doc["training"], "precision": "fp8"}}, r"training.precision")
    bad = _doc(hybrid)
    bad["ranks"][1]["device"] = -1
    _refused(bad, r"ranks.1.device: Input should be greater than or equal to 0")
    text = hybrid.to_json().replace('"pg_timeout_s": 60.0', '"pg_timeout_s": NaN')
    with pytest.raises(PlanError, match="NaN is not allowed"):
        plan_from_json(text)
    with pytest.raises(PlanError, match="not valid JSON"):
        plan_from_json("{")


@pytest.mark.parametrize(
    ("dtype", "precision"), [("float32", "fp32"), ("bfloat16", "bf16-mixed"), ("float16", "fp16-mixed")]
)
def test_a_version_1_plan_loads_its_dtype_as_a_precision_and_is_written_as_version_4(
    hybrid, tmp_path, dtype, precision
):
    doc = _doc(hybrid)
    doc["schema_version"] = 1
    doc["training"] = {k: v for k, v in doc["training"].items() if k != "precision"} | {"dtype": dtype}
    (tmp_path / "old.json").write_text(json.dumps(doc))
    plan = load_plan(tmp_path / "old.json")
    assert plan.schema_version == 4 and plan.training.precision == precision
    save_plan(plan, tmp_path / "new.json")
    written = json.loads((tmp_path / "new.json").read_text())
    assert written["schema_version"] == 4 and written["training"]["precision"] == precision
    assert "dtype" not in written["training"]
    doc["training"]["dtype"] = "float64"
    _refused(doc, r"training.dtype: 'float64' is not one of float32, bfloat16, float16")
    doc["training"]["dtype"] = [["float32"] * 1000]  # hostile: not even a word
    _refused(doc, r"training.dtype: \[\['float32', .* is not one of float32, bfloat16, float16")


def _mutated(plan, change):
    doc = _doc(plan)
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["stages"][1].update(first="blocks.3"), r"stages\[1\].first: expected 'blocks.2'"),
        (lambda d: d["stages"][0].update(last="blocks.2"), r"stages\[1\].first: expected 'blocks.3'"),
        (lambda d: d["stages"][1].update(last="ln_f"), r"stages: blocks from 'head' on are in no stage"),
        (
            lambda d: d["stages"][1].update(first="blocks.2", last="blocks.1"),
            r"stages\[1\]: last 'blocks.1' comes before",
        ),
        (lambda d: d["stages"][1].update(last="decoder"), r"stages\[1\].last: 'decoder' is not a block"),
        (lambda d: d["stages"][1].update(pp_rank=0), r"stages\[1\].pp_rank: stage 1 runs on pipeline rank 1"),
        (lambda d: d["stages"].pop(), r"stages: pp_degree x virtual_stages = 2 x 1 needs 2 stages, got 1"),
        (lambda d: d["replicas"][0].update(batch_share=7), r"replicas: batch shares sum to 15"),
        (
            lambda d: (d["replicas"][0].update(batch_share=6), d["replicas"][1].update(batch_share=10)),
            r"replicas\[0\].batch_share: 6 does not split evenly into 4 micro-batches",
        ),
        (
            lambda d: d["training"].update(micro_batches=1),
            r"schedule: 1f1b needs micro_batches >= stages \(1 < 2\)",
        ),
        (lambda d: d.update(schedule="interleaved_1f1b"), "needs virtual_stages >= 2"),
        (lambda d: d.update(schedule=None), "hybrid needs a schedule"),
        (lambda d: d.update(dp_degree=1), r"strategy: hybrid needs dp_degree >= 2"),
        (lambda d: d.update(strategy="dp"), r"strategy: dp needs pp_degree 1"),
        (
            lambda d: d["ranks"].pop(),
            r"ranks: dp_degree x pp_degree x tp_degree = 2 x 2 x 1 = 4, but 3 ranks are listed",
        ),
        (lambda d: d["ranks"][3].update(device=9), r"ranks\[3\].device: device 9 is not in the cluster"),
        (lambda d: d["ranks"][3].update(device=0), r"ranks\[3\].device: device 0 is already rank 0's"),
        (lambda d: d["ranks"][3].update(node=1), r"ranks\[3\].node: device 3 is on node 0, not 1"),
        (lambda d: d["ranks"][3].update(pp_index=0), r"ranks\[3\]: coordinates \(1, 0, 0\) .* taken twice"),
        (lambda d: d["ranks"][3].update(dp_index=2), r"ranks\[3\]: coordinates \(2, 1, 0\) .* are outside"),
        (lambda d: d["ranks"][3].update(tp_index=1), r"ranks\[3\]: coordinates \(1, 1, 1\) .* tp_degree 1"),
        (
            lambda d: d["unused_devices"].append({"device": 1, "reason": "slow"}),
            r"unused_devices\[0\].device: device 1 is used",
        ),
        (lambda d: d["cluster"]["devices"][3].update(kind="a100"), "ambiguous"),
    ],
)
def test_inconsistent_plans_name_the_field(hybrid, change, message):
    _refused(_mutated(hybrid, change), message)


def test_a_device_left_out_needs_a_reason(gpt):
    plan = make_plan(gpt, resolve_cluster("cpu:4"), strategy="dp", global_batch=8, dp_degree=2)
    assert [(u.device, u.reason) for u in plan.unused_devices] == [
        (2, "not needed by this plan"),
        (3, "not needed by this plan"),
    ]
    doc = _doc(plan)
    doc["unused_devices"].pop()
    _refused(doc, "unused_devices: device 3 is neither used by a rank nor listed with a reason")


def test_mp_needs_named_sub_networks_and_no_schedule():
    gan = coarsen(trace("gan"))
    plan = make_plan(
        gan,
        resolve_cluster("cpu:2"),
        strategy="mp",
        global_batch=32,
        pp_degree=2,
        stage_names=["generator", "discriminator"],
    )
    assert [(s.name, s.first) for s in plan.stages] == [
        ("generator", "generator"),
        ("discriminator", "discriminator"),
    ]
    doc = _doc(plan)
    doc["stages"][0]["name"] = ""
    _refused(doc, "mp stages need the name of their sub-network")
    _refused({**_doc(plan), "schedule": "gpipe"}, "mp has no pipeline schedule")


def test_validate_command(hybrid, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    save_plan(hybrid, good)
    doc = _doc(hybrid)
    doc["training"]["micro_batches"] = 3
    bad.write_text(json.dumps(doc))
    ok = subprocess.run(
        [sys.executable, "-m", "planner", "validate", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "valid" in ok.stdout
    no = subprocess.run(
        [sys.executable, "-m", "planner", "validate", str(bad)], capture_output=True, text=True
    )
    assert no.returncode == 2
    assert "replicas[0].batch_share: 8 does not split evenly into 3 micro-batches" in no.stderr
    assert "Traceback" not in no.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["ranks"][3].update(device=True), r"ranks.3.device: Input should be a valid integer"),
        (
            lambda d: d["training"].update(global_batch="16"),
            r"training.global_batch: Input should be",
        ),
        (lambda d: d["training"].update(seed=2**70), r"training.seed: Input should be less than or equal to"),
        (lambda d: d["training"].update(steps=10**20), r"training.steps: Input should be less than or equal"),
        (lambda d: d["training"].update(pg_timeout_s=1e20), r"training.pg_timeout_s: Input should be less"),
        (
            lambda d: d["training"].update(pg_timeout_s=1e-9),
            r"training.pg_timeout_s: .* greater",
        ),
        (lambda d: d["model"].update(overrides={"n_layer": 10**9}), r"model.overrides: .*'n_layer' is 1,000"),
        (lambda d: d["model"].update(overrides={"d_model": 1e12}), r"model.overrides: .*sizes are at most"),
        (lambda d: d["model"].update(source="gpt" * 1000), r"model.source: String should have at most"),
    ],
)
def test_values_past_the_limits_are_refused_naming_the_field(hybrid, change, message):
    _refused(_mutated(hybrid, change), message)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[" * 5_000 + "]" * 5_000, "JSON nested 5000 deep, over the limit of 32"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested 100000 deep"),
        (b'{"schema_version": 1, "name": "\xff\xfe"}', r"not UTF-8 text \(byte 31 is 0xff\)"),
        (b" " * (33 * 2**20), "33.0 MiB is over the 32 MiB limit"),
        ('{"a": ' + "1" * 5_000 + "}", "Exceeds the limit"),
    ],
    ids=["nested-5000", "nested-100000", "not-utf8", "33MiB", "5000-digit-int"],
)
def test_hostile_documents_get_one_line(tmp_path, data, message):
    path = tmp_path / "plan.json"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(PlanError, match=message) as caught:
        load_plan(path)
    assert "\n" not in str(caught.value)


def test_a_version_2_plan_replicates_and_recomputes_nothing(hybrid):
    doc = _doc(hybrid)
    doc["schema_version"] = 2
    del doc["dp_mode"]
    for stage in doc["stages"]:
        del stage["recompute"]
    plan = plan_from_json(json.dumps(doc))
    assert plan.schema_version == 4 and plan.dp_mode == "replicate"
    assert [s.recompute_every for s in plan.stages] == [0, 0]
    written = json.loads(plan.to_json())
    assert written["dp_mode"] == "replicate" and written["stages"][0]["recompute"] == "none"


def test_sharding_and_recomputation_are_recorded_and_checked(hybrid, gpt):
    doc = _doc(hybrid)
    doc["dp_mode"] = "full_shard"
    doc["stages"][1]["recompute"] = "every-2"
    plan = plan_from_json(json.dumps(doc))
    assert plan.dp_mode == "full_shard" and [s.recompute_every for s in plan.stages] == [0, 2]
    _refused({**doc, "dp_mode": "zero4"}, r"dp_mode: Input should be 'replicate', 'shard_grad_op'")
    for bad in ("every-1", "every-02", "partial", "every-", "every-x", "every-\u0661\u0662", "x" * 10_000):
        doc["stages"][1]["recompute"] = bad
        _refused(doc, r"stages.1.recompute")
    doc["stages"][1]["recompute"] = "full"
    # hybrid_shard: in a node, across nodes; cpu:4 is one node.
    _refused({**doc, "dp_mode": "hybrid_shard"}, r"dp_mode: hybrid_shard .* lies on one node")
    pipeline = make_plan(
        gpt,
        resolve_cluster("cpu:2"),
        strategy="pp",
        global_batch=8,
        pp_degree=2,
        schedule="1f1b",
        micro_batches=4,
    )
    _refused(
        {**_doc(pipeline), "dp_mode": "full_shard"},
        r"dp_mode: full_shard shards over replicas; .* dp_degree 1",
    )


def test_hybrid_shard_needs_equal_ranks_on_two_nodes_or_more(gpt):
    two_nodes = make_plan(gpt, resolve_cluster("cpu:2x2"), strategy="dp", global_batch=8, dp_degree=4)
    plan = plan_from_json(json.dumps({**_doc(two_nodes), "dp_mode": "hybrid_shard"}))
    assert plan.dp_mode == "hybrid_shard"
    one_each = make_plan(gpt, resolve_cluster("cpu:1x2"), strategy="dp", global_batch=8, dp_degree=2)
    _refused({**_doc(one_each), "dp_mode": "hybrid_shard"}, r"one rank per node")


def test_the_gan_replicates_and_recomputes_nothing():
    gan = coarsen(trace("gan", {"hidden": 32}))
    plan = make_plan(gan, resolve_cluster("cpu:2"), strategy="dp", global_batch=8, dp_degree=2)
    _refused({**_doc(plan), "dp_mode": "full_shard"}, r"dp_mode: the GAN's two players step apart")


def test_a_version_3_plan_has_no_tensor_parallelism(hybrid):
    doc = _doc(hybrid)
    doc["schema_version"] = 3
    for key in ("tp_degree", "sequence_parallel"):
        del doc[key]
    for rank in doc["ranks"]:
        del rank["tp_index"]
    plan = plan_from_json(json.dumps(doc))
    assert (plan.schema_version, plan.tp_degree, plan.sequence_parallel) == (4, 1, False)
    assert [r.coords for r in plan.ranks] == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]


def test_tensor_groups_are_consecutive_ranks_and_checked(gpt):
    plan = make_plan(
        gpt,
        resolve_cluster("cpu:8"),
        strategy="hybrid",
        global_batch=8,
        dp_degree=2,
        pp_degree=2,
        tp_degree=2,
        schedule="1f1b",
        micro_batches=2,
    )
    assert [r.coords for r in plan.ranks] == [
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (0, 1, 1),
        (1, 0, 0),
        (1, 0, 1),
        (1, 1, 0),
        (1, 1, 1),
    ]
    assert [r.rank for r in plan.tensor_group(1, 0)] == [4, 5]
    assert plan_from_json(plan.to_json()) == plan
    doc = _doc(plan)
    _refused({**doc, "tp_degree": 4}, r"ranks: dp_degree x pp_degree x tp_degree = 2 x 2 x 4 = 16, but 8")
    doc["ranks"][1]["tp_index"] = 0
    _refused(doc, r"ranks\[1\]: coordinates \(0, 0, 0\) \(dp, pp, tp\) are taken twice")
    doc = _doc(plan)
    _refused(
        {
            **_doc(make_plan(gpt, resolve_cluster("cpu:2"), strategy="dp", global_batch=8, dp_degree=2)),
            "sequence_parallel": True,
        },
        r"sequence_parallel: .* tp_degree 1",
    )
    _refused({**doc, "tp_degree": 0}, r"tp_degree: Input should be greater than or equal to 1")
    odd = {**doc, "sequence_parallel": True, "model": {**doc["model"], "seq_len": 63}}
    _refused(odd, r"sequence_parallel: tp_degree 2 does not divide the sequence length 63")
    assert plan_from_json(json.dumps({**doc, "sequence_parallel": True})).sequence_parallel


def test_the_gan_has_no_tensor_parallel_layout():
    gan = coarsen(trace("gan", {"hidden": 32}))
    with pytest.raises(PlanError, match=r"tp_degree: the GAN's networks have no tensor-parallel layout"):
        make_plan(gan, resolve_cluster("cpu:2"), strategy="dp", global_batch=8, dp_degree=1, tp_degree=2)
