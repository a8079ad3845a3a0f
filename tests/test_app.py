"""The dashboard's Model page, through Streamlit's AppTest."""

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _app():
    return AppTest.from_file(APP, default_timeout=120).run()


def test_model_page_opens_with_a_worked_example():
    at = _app()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "136,832"  # the default gpt
    assert metrics["Nodes (ops → blocks)"].endswith("→ 7")
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    markers = next(t for t in spec["data"] if t.get("name") == "blocks")
    assert "blocks.0" in markers["text"]
    assert len(at.dataframe) == 1


def test_changing_the_model_retraces_it():
    at = _app()
    at.text_input(key="model_source").set_value("hf:gpt2").run()
    at.text_input(key="model_overrides").set_value("n_layer=2 n_embd=64 n_head=4").run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Parameters"] == "3,382,080"


def test_bad_input_shows_a_message_not_a_traceback():
    at = _app()
    at.text_input(key="model_source").set_value("resnet").run()
    assert not at.exception
    assert "unknown model source 'resnet'" in at.error[0].value
    at.text_input(key="model_source").set_value("gpt").run()
    at.text_input(key="model_overrides").set_value("n_layers=3").run()
    assert "gpt has no parameter 'n_layers'" in at.error[0].value


def test_import_paths_are_refused_in_the_browser(monkeypatch):
    import planner.source

    imported = []
    monkeypatch.setattr(planner.source, "_build_py", lambda *a: imported.append(a))
    at = _app()
    for source in ("py:os:system", "py:tests.fixtures.models:branchy"):
        at.text_input(key="model_source").set_value(source).run()
        assert not at.exception
        assert "allow-list" in at.error[0].value and "python -m planner graph" in at.error[0].value
        assert not at.metric
    assert imported == []  # nothing was imported


def test_an_allowed_import_path_is_traced(monkeypatch):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "py:tests.fixtures.models:two_linear")
    at = _app()
    at.text_input(key="model_source").set_value("py:tests.fixtures.models:two_linear").run()
    assert not at.exception and not at.error
    assert {m.label for m in at.metric} >= {"Parameters"}
