"""Hundreds of mutated and hostile plans and clusters, seeded: one line, exit 2, no code run.

Each document is a valid one with one to three random mutations (a key removed or added,
a value replaced by another type, a huge or negative number, a bool, a deep array, a `py:`
payload, blocks reordered, bytes cut or garbled). `planner validate` (in this process, as
`main` runs it) must answer 0 or 2 with one line on stderr, never an unexpected error; the
dashboard's upload readers (`dashboard.uploads`, what the Export and Devices pages call)
must accept a document or raise a one-line `PlannerError`; no payload may leave its marker.
"""

from __future__ import annotations

import copy
import json
import random
import signal
from contextlib import contextmanager

import pytest

from dashboard.uploads import read_cluster_upload, read_plan_upload
from planner.cli import main
from planner.cluster import resolve_cluster
from planner.errors import PlannerError

SEED = 20261201
CASES = 300
PER_CASE_S = 20  # a hang fails the test instead of stalling CI


@pytest.fixture(scope="module")
def base_plan(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("fuzz") / "plan.json"
    code = main(
        [
            "plan",
            "--model",
            "mlp",
            "--cluster",
            "cpu:2",
            "--strategy",
            "pp",
            "--global-batch",
            "8",
            "-o",
            str(path),
        ]
    )
    assert code == 0
    return json.loads(path.read_text())


@contextmanager
def deadline(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def hostile_values(marker: str) -> list:
    deep = json.loads("[" * 40 + "]" * 40)
    return [
        True,
        False,
        None,
        -1,
        0,
        2**70,
        10**20,
        1e308,
        -1e-9,
        1.5,
        "",
        "x" * 5000,
        "py:os:system",
        "py:subprocess:run",
        [1, 2, 3],
        [],
        {},
        {"command": f"touch {marker}"},
        deep,
        "true",
        "4",
    ]


def paths(doc, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, (*prefix, i))


def mutate(doc: dict, rng: random.Random, marker: str) -> dict:
    doc = copy.deepcopy(doc)
    if "model" in doc and rng.random() < 0.15:  # a valid plan with a py: payload: reaches the model check
        doc["model"]["source"] = rng.choice(["py:os:system", "py:subprocess:run", "py:shutil:rmtree"])
        doc["model"]["overrides"] = {"command": f"touch {marker}"}
        return doc
    for _ in range(rng.randint(1, 3)):
        where, _ = rng.choice([p for p in paths(doc) if p[0]])
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        last = where[-1]
        action = rng.random()
        if action < 0.15 and isinstance(parent, dict):
            del parent[last]
        elif action < 0.25 and isinstance(parent, dict):
            parent[rng.choice(["extra", "__class__", "command"])] = rng.choice(hostile_values(marker))
        elif action < 0.35 and isinstance(parent, list) and len(parent) > 1:
            rng.shuffle(parent)
        else:
            parent[last] = rng.choice(hostile_values(marker))
    if "model" in doc and rng.random() < 0.2:  # a py: source whose factory runs a command
        model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
        doc["model"] = {
            **model,
            "source": rng.choice(["py:os:system", "py:subprocess:run"]),
            "overrides": {"command": f"touch {marker}", "args": ["touch", marker]},
        }
    return doc


def as_bytes(doc: dict, rng: random.Random) -> bytes:
    data = json.dumps(doc).encode()
    roll = rng.random()
    if roll < 0.05:
        return data[: rng.randrange(len(data))]  # cut short
    if roll < 0.10:
        i = rng.randrange(len(data))
        return data[:i] + b"\xff\xfe" + data[i:]  # not UTF-8
    if roll < 0.13:
        return b"[" * 50_000 + b"]" * 50_000
    return data


def test_validate_answers_every_hostile_plan_in_one_line(base_plan, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "")
    rng = random.Random(SEED)
    marker = str(tmp_path / "payload-ran")
    codes = {0: 0, 2: 0}
    for case in range(CASES):
        path = tmp_path / f"case{case}.json"
        path.write_bytes(as_bytes(mutate(base_plan, rng, marker), rng))
        with deadline(PER_CASE_S):
            code = main(["validate", str(path)])
        _, err = capsys.readouterr()
        assert code in codes, f"case {case}: exit {code}: {err}"
        codes[code] += 1
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, f"case {case}: {err!r}"
            assert "Traceback" not in err
    assert not (tmp_path / "payload-ran").exists(), "a plan file ran code"
    assert codes[2] > CASES // 2, codes  # the mutations do reach the checks


def refused_in_one_line(read, data: bytes, case: int) -> bool:
    """Whether ``read`` refused ``data``; a refusal must be one `PlannerError` line."""
    with deadline(PER_CASE_S):
        try:
            read("upload.json", data)
        except PlannerError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("upload.json"), f"case {case}: {exc}"
            return True
    return False


def test_every_hostile_cluster_upload_is_one_planner_error(tmp_path):
    rng = random.Random(SEED + 1)
    base = json.loads(resolve_cluster("a100-80gb:4+v100-32gb:4").to_json())
    marker = str(tmp_path / "payload-ran")
    refused = sum(
        refused_in_one_line(read_cluster_upload, as_bytes(mutate(base, rng, marker), rng), case)
        for case in range(CASES)
    )
    assert not (tmp_path / "payload-ran").exists()
    assert refused > CASES // 2, refused  # the mutations do reach the checks


def test_every_hostile_plan_upload_is_one_planner_error(base_plan, tmp_path, monkeypatch):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "")
    rng = random.Random(SEED + 2)
    marker = str(tmp_path / "payload-ran")
    refused = sum(
        refused_in_one_line(read_plan_upload, as_bytes(mutate(base_plan, rng, marker), rng), case)
        for case in range(CASES)
    )
    assert not (tmp_path / "payload-ran").exists()
    assert refused > CASES // 2, refused
