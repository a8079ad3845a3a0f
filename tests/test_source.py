"""Model sources and size overrides: parsing, building, and the errors users see."""

import pytest

from planner.capture.overrides import parse_overrides, parse_value
from planner.capture.source import allow_py, build_model, parse_source
from planner.errors import SourceError


def test_override_values_are_json_literals_or_strings():
    assert parse_overrides(["n_layer=4", "lr=3e-4", "tie=true", "dims=[8, 8]", "act=gelu", "x=null"]) == {
        "n_layer": 4,
        "lr": 3e-4,
        "tie": True,
        "dims": [8, 8],
        "act": "gelu",
        "x": None,
    }
    # NaN and Infinity are not sizes: they stay strings, and configs reject them.
    assert parse_value("NaN") == "NaN"
    # Never evaluated as Python.
    assert parse_value("__import__('os').system('true')") == "__import__('os').system('true')"


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["n_layer"], "not of the form key=value"),
        (["=3"], "not a valid parameter name"),
        (["n-layer=3"], "not a valid parameter name"),
        (["a=1", "a=2"], "given twice"),
    ],
)
def test_bad_overrides_name_the_pair(pairs, message):
    with pytest.raises(SourceError, match=message):
        parse_overrides(pairs)


def test_parse_source_kinds():
    assert parse_source("gpt").kind == "zoo"
    assert parse_source("hf:gpt2").name == "gpt2"
    assert parse_source("py:tests.fixtures.models:branchy").name == "tests.fixtures.models:branchy"
    assert str(parse_source("py:a.b:c")) == "py:a.b:c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resnet", "unknown model source 'resnet'"),
        ("", "unknown model source ''"),
        ("hf:", "expected hf:<model_type>"),
        ("hf:../etc", "expected hf:<model_type>"),
        ("py:os.system", "expected py:package.module:factory"),
        ("py:a b:c", "expected py:package.module:factory"),
    ],
)
def test_bad_source_strings(text, message):
    with pytest.raises(SourceError, match=message):
        parse_source(text)


@pytest.mark.usefixtures("allow_fixture_models")
@pytest.mark.parametrize(
    ("source", "overrides", "message"),
    [
        ("gpt", {"nlayer": 2}, "gpt has no parameter 'nlayer'; valid: d_ff, d_model"),
        ("gpt", {"d_model": 30, "n_head": 4}, "not divisible by n_head"),
        ("gpt", {"d_model": "NaN"}, "positive integers"),
        ("gpt", {"size": "3b"}, "gpt has no size '3b'; sizes: toy, 1m, 125m, 7b, 70b"),
        ("cnn", {"channels": [6]}, "not positive multiples of groups=4"),
        ("mlp", {"size": "7b"}, "mlp has no size '7b'"),
        ("hf:nosuchmodel", {}, "has no model_type 'nosuchmodel'"),
        ("hf:gpt2", {"n_layers": 2}, "GPT2Config has no parameter 'n_layers'"),
        ("py:no_such_package.mod:f", {}, r"would import 'no_such_package\.mod'.*--allow-py no_such"),
        ("py:tests.fixtures.models:missing", {}, "has no callable 'missing'"),
        ("py:tests.fixtures.models:not_a_module", {}, "returned int, not nn.Module"),
        ("py:tests.fixtures.models:no_inputs", {}, "needs a method example_inputs"),
        ("py:tests.fixtures.models:branchy", {"depth": 3}, "unexpected keyword argument 'depth'"),
    ],
)
def test_bad_models_give_clear_errors(source, overrides, message):
    with pytest.raises(SourceError, match=message):
        build_model(parse_source(source, overrides))


def test_hf_model_is_built_without_download_and_without_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built = build_model(parse_source("hf:gpt2", {"n_layer": 1, "n_embd": 32, "n_head": 2, "seq_len": 16}))
    assert built.module.config.use_cache is False
    assert built.args[0].shape == (1, 16)
    assert built.args[0].device.type == "meta"
    assert built.kwargs == {"use_cache": False}


TINY_GPT2 = {"n_layer": 1, "n_embd": 32, "n_head": 2}
TINY_LLAMA = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.mark.parametrize(
    ("source", "overrides", "tokens"),
    [
        ("hf:gpt2", TINY_GPT2, 1024),  # its n_positions
        ("hf:gpt2", {**TINY_GPT2, "n_positions": 4096}, 4096),
        ("hf:llama", {**TINY_LLAMA, "max_position_embeddings": 8192}, 8192),
        ("hf:llama", {**TINY_LLAMA, "seq_len": 64}, 64),  # unless seq_len says otherwise
    ],
)
def test_a_hugging_face_model_is_planned_at_its_context_length(source, overrides, tokens):
    from tests.runs import zoo_plan

    built = build_model(parse_source(source, overrides))
    assert built.args[0].shape == (1, tokens) and built.config["seq_len"] == tokens
    plan = zoo_plan(source, overrides, ranks=1, strategy="dp", global_batch=1)
    assert plan.model.seq_len == tokens and plan.model.input_shapes == [[1, tokens]]


def test_a_py_source_imports_nothing_without_consent(tmp_path, monkeypatch):
    """The module's code would run at import: without consent it is never imported."""
    marker = tmp_path / "imported"
    (tmp_path / "payload_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "")
    for source in ("py:payload_mod:f", "py:os:system", "py:subprocess:run"):
        with pytest.raises(SourceError, match="nobody allowed it"):
            build_model(parse_source(source, {"command": f"touch {marker}"}))
    assert not marker.exists()
    allow_py("payload_mod")  # what --allow-py payload_mod does
    with pytest.raises(SourceError, match=r"returned NoneType, not nn\.Module"):
        build_model(parse_source("py:payload_mod:f"))
    assert marker.exists()


def test_an_allowed_module_that_does_not_exist_is_named(monkeypatch):
    monkeypatch.setenv("STAGECRAFT_ALLOWED_PY", "no_such_package.mod")
    with pytest.raises(SourceError, match=r"cannot import 'no_such_package\.mod'"):
        build_model(parse_source("py:no_such_package.mod:f"))


def test_a_build_that_registers_too_many_modules_is_stopped():
    with pytest.raises(SourceError, match="more than 50,000 modules"):
        build_model(parse_source("gpt", {"n_layer": 1_000_000}))
