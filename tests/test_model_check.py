"""`planner validate` checks a plan against the model it names, and imports nothing unasked."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.model_check import _first_difference


@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("plans") / "plan.json"
    assert (
        main(
            [
                "plan",
                "--model",
                "gpt",
                "--set",
                "size=toy",
                "--cluster",
                "cpu:2",
                "--strategy",
                "dp",
                "--global-batch",
                "8",
                "-o",
                str(path),
            ]
        )
        == 0
    )
    return json.loads(path.read_text())


def validate(doc: dict, tmp_path, capsys, *flags: str) -> tuple[int, str]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    code = main(["validate", str(path), *flags])
    err = capsys.readouterr().err
    return code, err


def renamed(doc: dict, old: str, new: str) -> dict:
    """The plan with one block renamed everywhere: consistent with itself, not with the model."""
    text = json.dumps(doc).replace(json.dumps(old), json.dumps(new))
    return json.loads(text)


def test_a_plan_made_for_the_model_is_valid(plan_doc, tmp_path, capsys):
    assert validate(plan_doc, tmp_path, capsys) == (0, "")


def test_a_stage_cut_at_a_block_the_model_does_not_have(plan_doc, tmp_path, capsys):
    code, err = validate(renamed(plan_doc, "head", "decoder"), tmp_path, capsys)
    assert code == 2
    assert err.startswith("error: model.blocks: 'decoder' is not a block of the model")
    assert err.count("\n") == 1


def test_blocks_out_of_order(plan_doc, tmp_path, capsys):
    doc = json.loads(json.dumps(plan_doc))
    blocks = doc["model"]["blocks"]
    blocks[1], blocks[2] = blocks[2], blocks[1]  # inside the one stage: the plan stays consistent
    assert doc["stages"][0]["last"] not in blocks[1:3]
    code, err = validate(doc, tmp_path, capsys)
    assert code == 2 and f"block 1 is {blocks[1]!r}, but the model's block 1 is {blocks[2]!r}" in err


def test_a_digest_of_another_graph_and_skipping_the_check(plan_doc, tmp_path, capsys):
    doc = {**plan_doc, "model": {**plan_doc["model"], "graph_digest": "0" * 64}}
    code, err = validate(doc, tmp_path, capsys)
    assert code == 2 and "model.graph_digest: the plan was made for graph 000000000000" in err
    code, err = validate(doc, tmp_path, capsys, "--skip-model-check")
    assert code == 0 and err.startswith("warning: the model was not traced")


def test_unknown_overrides_are_named(plan_doc, tmp_path, capsys):
    doc = {**plan_doc, "model": {**plan_doc["model"], "overrides": {"n_layers": 2}}}
    code, err = validate(doc, tmp_path, capsys)
    assert code == 2 and err.startswith("error: model.source: gpt:") and "n_layers" in err


def test_weights_that_cannot_fit_their_device(plan_doc, tmp_path, capsys):
    doc = json.loads(json.dumps(plan_doc))
    for device in doc["cluster"]["devices"]:
        device["memory_bytes"] = 1024
    code, err = validate(doc, tmp_path, capsys)
    assert code == 2 and "alone need" in err and "more than device 0's" in err


@pytest.mark.parametrize(
    "source", ["py:os:system", "py:subprocess:run", "py:tests.fixtures.models:two_linear"]
)
def test_a_py_source_in_a_plan_needs_consent(plan_doc, tmp_path, capsys, monkeypatch, source):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "")
    marker = tmp_path / "payload-ran"
    payload = {"command": f"touch {marker}", "args": ["touch", str(marker)]}
    doc = {**plan_doc, "model": {**plan_doc["model"], "source": source, "overrides": payload}}
    code, err = validate(doc, tmp_path, capsys)
    module = source.split(":")[1]
    assert code == 2
    assert f"would import {module!r}" in err and f"--allow-py {module}" in err
    assert not marker.exists()


def test_allowed_py_source_is_imported_and_checked(plan_doc, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "")
    doc = {
        **plan_doc,
        "model": {**plan_doc["model"], "source": "py:tests.fixtures.models:two_linear", "overrides": {}},
    }
    code, err = validate(doc, tmp_path, capsys, "--allow-py", "tests.fixtures.models")
    assert code == 2 and "model.blocks" in err  # imported, traced, and found to be another model


def test_first_difference_names_a_missing_tail():
    assert _first_difference(["a"], ["a", "b"]).startswith("the plan lists 1 blocks and leaves out 'b'")
