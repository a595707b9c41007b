"""AdamW parameter groups."""

from __future__ import annotations

import torch

from lmforge.train.optim import build_adamw, param_groups


def test_decay_groups_split_matrices_from_norms(make_model):
    model = make_model(qkv_bias=True)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"weight", "bias"}
    assert all("norm" in names[id(p)] or "bias" in names[id(p)] for p in no_decay["params"])
    # every parameter exactly once (the tied head is the embedding)
    total = len(decay["params"]) + len(no_decay["params"])
    assert total == len({id(p) for p in model.parameters()})


def test_fused_on_cpu_matches_reference(make_model):
    models = [make_model(), make_model()]
    opts = [build_adamw(models[0], 1e-2, fused=True), build_adamw(models[1], 1e-2, fused=False)]
    assert opts[0].defaults["fused"]
    x = torch.randint(0, 64, (2, 8))
    for model, opt in zip(models, opts):
        for _ in range(3):
            model(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_weight_decay_only_shrinks_matrices(make_model):
    model = make_model()
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    for p in norms:
        p.data.fill_(2.0)
    opt = build_adamw(model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    emb = model.model.embed_tokens.weight.detach().clone()
    opt.step()
    assert all(torch.equal(p, torch.full_like(p, 2.0)) for p in norms)
    torch.testing.assert_close(model.model.embed_tokens.weight, emb * (1 - 0.1 * 0.5))
