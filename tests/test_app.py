"""The dashboard's landing page (the Model page) and its sidebar, through Streamlit's AppTest."""

import json
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from runtime.supervise import store

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SMALL_LLAMA = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 128,
}


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(store.RUNS_DIR_ENV, str(tmp_path / "runs"))


def _app():
    return AppTest.from_file(APP, default_timeout=120).run()


def plain(text: str) -> str:
    """Markdown as the browser shows it (the pages escape user text)."""
    return text.replace("\\", "")


def sidebar(at) -> str:
    return plain(" ".join(m.value for m in at.sidebar.get("markdown")))


def gpt_parameters(cfg) -> int:
    """The zoo GPT's parameters, counted from its architecture (planner/zoo/gpt.py)."""
    C, F, V, T = cfg.d_model, cfg.ff_width, cfg.vocab_size, cfg.seq_len  # width, MLP width, vocab, context
    layer_norm = 2 * C  # weight and bias
    attention = 3 * (C * C + C) + C * C  # q, v, proj with bias; k without
    mlp = (C * F + F) + (F * C + C)
    embeddings = V * C + T * C  # tokens, positions
    head = 0 if cfg.tie_embeddings else V * C  # no bias
    return embeddings + cfg.n_layer * (2 * layer_norm + attention + mlp) + layer_norm + head


def gpt2_parameters(cfg) -> int:
    """Hugging Face GPT-2's parameters, from its config: the head is tied to the token embedding."""
    C, V, P = cfg.n_embd, cfg.vocab_size, cfg.n_positions
    F = cfg.n_inner or 4 * C
    layer_norm = 2 * C
    attention = (C * 3 * C + 3 * C) + (C * C + C)  # fused q/k/v (c_attn), output (c_proj)
    mlp = (C * F + F) + (F * C + C)
    return V * C + P * C + cfg.n_layer * (2 * layer_norm + attention + mlp) + layer_norm


def test_model_page_opens_with_a_worked_example():
    from planner.zoo.gpt import GPTConfig

    at = _app()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    default = GPTConfig()  # the page opens on the zoo GPT without overrides
    assert metrics["Parameters"] == f"{gpt_parameters(default) / 1e3:.1f} k"  # 136,832: "136.8 k"
    # Blocks: the input, the token and position embeddings, every layer, the final norm, the head.
    blocks = 1 + 2 + default.n_layer + 1 + 1
    assert any(f"ops grouped into {blocks} blocks" in c.value for c in at.caption)  # 7
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    markers = next(t for t in spec["data"] if t.get("name") == "blocks")
    assert "blocks.0" in markers["text"]
    assert len(at.dataframe) == 1


def test_a_first_visit_says_where_to_start():
    at = _app()
    line = at.info[0].value
    assert [line.index(step) for step in ("Model", "Devices", "Plan", "Run")] == sorted(
        line.index(step) for step in ("Model", "Devices", "Plan", "Run")
    )


def test_changing_the_model_retraces_it_and_the_sidebar_follows_at_once():
    from transformers import GPT2Config

    at = _app()
    assert "gpt" in sidebar(at)
    at.text_input(key="model_source").set_value("hf:gpt2").run()
    at.text_input(key="model_overrides").set_value("n_layer=2 n_embd=64 n_head=4").run()
    assert not at.exception
    parameters = gpt2_parameters(GPT2Config(n_layer=2, n_embd=64, n_head=4))
    assert {m.label: m.value for m in at.metric}["Parameters"] == f"{parameters / 1e6:.1f} M"  # 3,382,080
    # The sidebar is drawn before the page runs; it still shows the model the page just set.
    assert "hf:gpt2 n_layer=2 n_embd=64 n_head=4" in sidebar(at)


def test_bad_input_shows_a_message_not_a_traceback():
    at = _app()
    at.text_input(key="model_source").set_value("resnet").run()
    assert not at.exception
    assert "unknown model source 'resnet'" in plain(at.error[0].value)
    assert at.session_state["model"] == ("gpt", "")  # the current model is still the last good one
    at.text_input(key="model_source").set_value("gpt").run()
    at.text_input(key="model_overrides").set_value("n_layers=3").run()
    assert "gpt has no parameter 'n_layers'" in plain(at.error[0].value)
    at.text_input(key="model_overrides").set_value("n_layer=" + "9" * 2000).run()
    assert not at.exception and len(at.error) == 1 and "\n" not in at.error[0].value


def test_user_text_is_shown_as_typed_not_as_markdown():
    at = _app()
    at.text_input(key="model_source").set_value("hf::llama:").run()
    assert not at.exception
    assert "\\:llama\\:" in at.error[0].value  # an emoji short code, escaped


def test_a_failure_the_page_did_not_expect_is_one_line(monkeypatch):
    import dashboard.figures.graph

    def broken(*args):
        raise RuntimeError("/srv/stagecraft/planner/figures.py: cannot draw\nsecond line")

    monkeypatch.setattr(dashboard.figures.graph, "block_graph_figure", broken)
    at = _app()
    assert not at.exception
    assert plain(at.error[-1].value) == "The Model page failed: RuntimeError: figures.py: cannot draw"


def test_import_paths_are_refused_in_the_browser(monkeypatch):
    import planner.capture.source

    imported = []
    monkeypatch.setattr(planner.capture.source, "_build_py", lambda *a: imported.append(a))
    at = _app()
    for source in ("py:os:system", "py:tests.fixtures.models:branchy"):
        at.text_input(key="model_source").set_value(source).run()
        assert not at.exception
        message = plain(at.error[0].value)
        assert "allow-list" in message and "python -m planner graph" in message and "--allow-py" in message
        assert not at.metric
    assert imported == []  # nothing was imported


def test_an_allowed_import_path_is_traced(monkeypatch):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "tests.fixtures.models")
    at = _app()
    at.text_input(key="model_source").set_value("py:tests.fixtures.models:two_linear").run()
    assert not at.exception and not at.error
    assert {m.label for m in at.metric} >= {"Parameters"}


def test_hf_llama_traces_with_export_while_other_sessions_trace():
    """Each browser session's script runs in a thread of its own; torch.export keeps global
    state, so one trace finishing in another thread used to fail this one over to module hooks."""
    from planner.capture.trace import trace

    captured: dict[str, str] = {}
    failures: list[BaseException] = []

    def traced(name: str, source: str, overrides: dict) -> None:
        try:
            captured[name] = trace(source, overrides).graph["capture"]
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=traced, args=("llama", "hf:llama", SMALL_LLAMA))]
    for i in range(3):
        threads.append(threading.Thread(target=traced, args=(f"gpt{i}", "gpt", {"n_layer": 1 + i})))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert captured == dict.fromkeys(("llama", "gpt0", "gpt1", "gpt2"), "torch.export")


def test_hf_llama_in_the_page_is_captured_by_export():
    at = _app()
    overrides = " ".join(f"{k}={v}" for k, v in SMALL_LLAMA.items())
    at.text_input(key="model_overrides").set_value(overrides).run()
    at.text_input(key="model_source").set_value("hf:llama").run()
    assert not at.exception and not at.error and not at.warning
    assert any("Captured by torch.export" in c.value for c in at.caption)
