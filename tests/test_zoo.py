"""The zoo: weights from (seed, FQN) only, no BatchNorm or dropout, named sizes."""

import torch
from torch import nn

from planner.capture.source import build_model, parse_source
from planner.zoo import ZOO


def _state(source, overrides=None, seed=0):
    model = build_model(parse_source(source, overrides), device="cpu", seed=seed).module
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_weights_depend_only_on_seed_and_fqn():
    a = _state("gpt", {"n_layer": 2})
    torch.manual_seed(1234)
    torch.randn(1000)  # a different global RNG state must not matter
    b = _state("gpt", {"n_layer": 3})  # more blocks built: the shared FQNs keep their values
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0)
    c = _state("gpt", {"n_layer": 2}, seed=1)
    assert not torch.equal(c["blocks.0.attn.q.weight"], a["blocks.0.attn.q.weight"])


def test_init_is_what_the_layers_expect():
    s = _state("cnn")
    assert torch.equal(s["blocks.0.norm.weight"], torch.ones(16))
    assert torch.equal(s["blocks.0.conv.bias"], torch.zeros(16))
    bound = 1 / (1 * 3 * 3) ** 0.5
    assert s["blocks.0.conv.weight"].abs().max() <= bound
    g = _state("gpt")
    assert 0.015 < g["tok_emb.weight"].std() < 0.025


def test_zoo_models_have_no_batchnorm_and_no_active_dropout():
    for name in ZOO:
        model = build_model(parse_source(name), device="meta").module
        for module in model.modules():
            assert not isinstance(module, nn.modules.batchnorm._BatchNorm), name
            if isinstance(module, nn.Dropout):
                assert module.p == 0, name


def test_named_sizes_reach_the_advertised_parameter_counts():
    def count(size):
        model = build_model(parse_source("gpt", {"size": size})).module
        return sum(p.numel() for p in model.parameters())

    assert 0.8e6 < count("1m") < 1.5e6
    assert 120e6 < count("125m") < 170e6
    assert 6.5e9 < count("7b") < 7.5e9
    assert 60e9 < count("70b") < 75e9


def test_tied_gpt_shares_one_tensor():
    model = build_model(parse_source("gpt", {"tie_embeddings": True}), device="cpu").module
    assert model.head.weight is model.tok_emb.weight
