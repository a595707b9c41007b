"""Drafter objectives: Medusa-1 (frozen backbone: no gradient reaches it) and Medusa-2
(L_LM + 0.2·Σ 0.8^k L_k) against the formulas computed here, EAGLE's objective against
`eagle_loss` on the target's own features, and the checkpoint hook saving trainables only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmforge import CausalLM, ModelConfig
from lmforge.models.eagle import EagleLayer, eagle_loss
from lmforge.models.medusa import MedusaHeads, medusa_head_losses
from lmforge.train.drafter_objectives import (
    EagleModel,
    EagleObjective,
    EagleSection,
    MedusaModel,
    MedusaObjective,
    MedusaSection,
)


def tiny() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=30, hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, max_position_embeddings=32))  # fmt: skip


def batch() -> dict:
    ids = torch.randint(0, 30, (2, 9), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids.clone()}


def test_medusa_objectives_by_hand(tmp_path):
    base = tiny()
    heads = MedusaHeads(16, 30, 2, lm_head=base.lm_head)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = batch()
    base.requires_grad_(False)
    model = MedusaModel(base, heads)
    out = MedusaObjective(MedusaSection(num_heads=2))(model, b)
    hidden = base.model(b["input_ids"])
    losses, count = medusa_head_losses(heads(hidden), b["labels"])
    expected = 0.8 * losses[0] + 0.64 * losses[1]
    assert math.isclose((out.loss_sum / out.count).item(), expected.item(), rel_tol=1e-5)
    out.loss_sum.backward()
    assert all(p.grad is None for p in base.parameters())
    assert heads.projections[0].weight.grad is not None

    base.requires_grad_(True)
    out2 = MedusaObjective(MedusaSection(num_heads=2, mode="medusa2"))(model, b)
    lm = F.cross_entropy(
        base(b["input_ids"]).logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten()
    )
    expected2 = lm + 0.2 * (0.8 * losses[0] + 0.64 * losses[1])
    assert math.isclose((out2.loss_sum / out2.count).item(), expected2.item(), rel_tol=1e-5)
    model.save_weights_folder(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "heads.projections.0.weight" in saved and "base.lm_head.weight" in saved
    base.requires_grad_(False)
    model.save_weights_folder(tmp_path)
    assert not any(k.startswith("base.") for k in load_file(str(tmp_path / "model.safetensors")))


def test_eagle_objective_matches_loss():
    base = tiny().requires_grad_(False)
    layer = EagleLayer.for_model(base.config)
    b = batch()
    out = EagleObjective(EagleSection())(EagleModel(base, layer), b)
    feats = base.model(b["input_ids"])
    pred, _ = layer(base.model.embed_tokens(b["input_ids"][:, 1:]), feats[:, :-1], torch.arange(8))
    valid = torch.ones(2, 8, dtype=torch.bool)
    loss, _, _ = eagle_loss(pred, feats[:, 1:], base.lm_head, valid)
    assert math.isclose((out.loss_sum / out.count).item(), loss.item(), rel_tol=1e-5)
    assert out.count == 16


def test_medusa_head_targets_stay_inside_their_document():
    """Head k at t is scored against token t + k + 1 only when it is in t's packed document
    (brute force over every (row, t, k)); the objective passes ``document_ids`` through."""
    base = tiny().requires_grad_(False)
    heads = MedusaHeads(16, 30, 3, lm_head=base.lm_head)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = batch()
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 1, 1, 1]])
    b["document_ids"] = docs
    hidden = base.model(b["input_ids"], document_ids=docs)
    head_logits = heads(hidden)
    losses, count = medusa_head_losses(head_logits, b["labels"], doc_ids=docs)
    for k in range(1, 4):
        terms = [
            F.cross_entropy(head_logits[k - 1, r, t][None], b["labels"][r, t + k + 1][None])
            for r in range(2)
            for t in range(9 - k - 1)
            if docs[r, t] == docs[r, t + k + 1]
        ]
        torch.testing.assert_close(losses[k - 1], torch.stack(terms).mean())
        if k == 1:
            assert count == len(terms) == 8
    ignoring = medusa_head_losses(head_logits, b["labels"])[0]
    assert not torch.allclose(ignoring[0], losses[0])  # the boundaries do change the loss
    out = MedusaObjective(MedusaSection(num_heads=3))(MedusaModel(base, heads), b)
    expected = sum(0.8 ** (k + 1) * loss for k, loss in enumerate(losses))
    torch.testing.assert_close(out.loss_sum / out.count, expected)


def _drafter_run(method: str, folder, data, out, max_steps: int, *extra):
    """``train_medusa`` / ``train_eagle`` on the tiny checkpoint into ``out``."""
    import io
    import json

    from rich.console import Console

    from lmforge.train.config import load_config
    from lmforge.train.drafter_objectives import DrafterConfig, train_eagle, train_medusa

    overrides = [f"model.init_from={json.dumps(str(folder))}", f"data.paths=[{json.dumps(str(data))}]",
                 f"out_dir={json.dumps(str(out))}", f"train.max_steps={max_steps}",
                 "train.batch_size=2", "data.seq_len=24", "train.save_every=2",
                 "train.eval_every=0", "train.max_time_s=0", "log.plot=false",
                 "log.progress=false", "data.num_workers=0", "optim.schedule_steps=4",
                 "optim.warmup_steps=1", *extra]  # fmt: skip
    config = load_config(None, overrides, DrafterConfig)
    train = train_medusa if method == "medusa" else train_eagle
    console = Console(file=io.StringIO(), width=200)
    train(config, console=console)
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(str(out / method / f"{method}.safetensors"))
    return [m["loss"] for m in losses if "loss" in m], weights, console.file.getvalue()


def test_drafter_runs_resume_exactly(tmp_path):
    """Train 2 steps, stop, run again to 4 == 4 steps straight (one 4-step schedule): the same
    per-step losses and bit-identical drafter weights (Medusa-2 also trains the backbone;
    EAGLE's is frozen and reloaded from ``model.init_from``)."""
    import json

    from lmforge.data.tasks import synthetic_corpus
    from lmforge.models.hf import save_model
    from lmforge.tokenizer import Tokenizer

    docs = synthetic_corpus(40, 1)
    tok = Tokenizer.train(docs, vocab_size=300)
    torch.manual_seed(0)
    target = CausalLM(ModelConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                  max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))  # fmt: skip
    folder = save_model(target, tmp_path / "target", tokenizer=tok)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    for method, extra in (("medusa", ["medusa.mode=medusa2", "medusa.num_heads=2"]), ("eagle", [])):
        straight = _drafter_run(method, folder, data, tmp_path / f"{method}-a", 4, *extra)
        _drafter_run(method, folder, data, tmp_path / f"{method}-b", 2, *extra)
        resumed = _drafter_run(method, folder, data, tmp_path / f"{method}-b", 4, *extra)
        assert "resumed from" in resumed[2] and "resumed from" not in straight[2]
        assert len(straight[0]) == 4 and resumed[0] == straight[0], method
        assert straight[1].keys() == resumed[1].keys()
        for name, weight in straight[1].items():
            torch.testing.assert_close(resumed[1][name], weight, rtol=0, atol=0)
        trained = _drafter_run(method, folder, data, tmp_path / f"{method}-c", 1, *extra)[1]
        assert any(not torch.equal(trained[n], w) for n, w in straight[1].items())
