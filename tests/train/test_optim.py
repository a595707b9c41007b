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


def test_lr_scales_give_a_named_part_its_own_groups_and_the_trainer_scales_their_lr(make_model):
    model = make_model()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1, {"layers.1.": 10.0})
    plain = [g for g in groups if "lr_scale" not in g]
    scaled = [g for g in groups if g.get("lr_scale") == 10.0]
    assert plain and scaled and len(groups) == len(plain) + len(scaled)
    assert all("layers.1." in names[id(p)] for g in scaled for p in g["params"])
    assert not any("layers.1." in names[id(p)] for g in plain for p in g["params"])
    # without scales: the two groups as before (optimizer state of earlier runs still maps)
    assert [len(g["params"]) for g in param_groups(model, 0.1)] == [
        len(plain[0]["params"]) + len(scaled[0]["params"]),
        len(plain[1]["params"]) + len(scaled[1]["params"]),
    ]
    # AdamW's first step moves every parameter by ≈ lr: the scaled ones 10× as far
    opt = build_adamw(model, 1e-3, weight_decay=0.0, lr_scales={"layers.1.": 10.0})
    for g in opt.param_groups:  # as the Trainer sets it each step
        g["lr"] = 1e-3 * g.get("lr_scale", 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 64, (2, 8))
    model(x, labels=x).loss.backward()
    opt.step()
    moved = {True: 0, False: 0}
    for n, p in model.named_parameters():
        step = float((p.detach() - before[n]).abs().max())
        want = 1e-2 if "layers.1." in n else 1e-3
        assert step == 0.0 or abs(step - want) < 0.2 * want, (n, step)
        moved["layers.1." in n] += step > 0
    assert moved[True] and moved[False]  # both groups took their step
