"""`run_demo`: a few seconds of training end to end, with every artefact written."""

from __future__ import annotations

import io
import json

import torch
from rich.console import Console

from lmforge.demo import lr_at, pack_documents, run_demo
from lmforge.models.hf import load_model
from lmforge.models.transformer import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer, load_tokenizer


def test_run_demo_trains_saves_and_samples(tmp_path):
    console = Console(file=io.StringIO(), width=100)
    threads = torch.get_num_threads()
    summary = run_demo(tmp_path, seconds=3, console=console)
    assert torch.get_num_threads() == threads  # restored

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == summary["steps"] >= 2
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert {"loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= set(records[0])
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert summary["val_loss_after"] < summary["val_loss_before"]
    assert records[-1]["loss"] < records[0]["loss"]
    model, tok = load_model(tmp_path / "model"), load_tokenizer(tmp_path / "model")
    assert model.num_parameters() == summary["parameters"]
    assert tok.vocab_size <= model.config.vocab_size
    assert model.config.eos_token_id == tok.eos_token_id
    assert {s["mode"] for s in summary["samples"]} == {"greedy", "sampled"}
    output = console.file.getvalue()
    assert "validation loss" in output and "12 + 7 =" in output


def test_pack_documents_keeps_documents_apart():
    tok = Tokenizer.train(["a b c d e f g h"] * 20, vocab_size=300)
    docs = ["a b c", "d e f g h", "a c e g"] * 6
    rows = pack_documents(tok, docs, seq_len=8)
    ids, labels, doc_ids = rows["input_ids"], rows["labels"], rows["document_ids"]
    assert ids.shape == labels.shape == doc_ids.shape and ids.shape[1] == 8
    starts = doc_ids[:, 1:] != doc_ids[:, :-1]
    # A new document starts at <bos>, and its first token is never a prediction target.
    assert (ids[:, 1:][starts] == tok.bos_token_id).all()
    assert (labels[:, 1:][starts] == IGNORE_INDEX).all()
    assert (labels[:, 1:][~starts] == ids[:, 1:][~starts]).all()


def test_lr_schedule_warms_up_then_decays():
    assert lr_at(0, 0.0) < lr_at(10, 0.0) < lr_at(19, 0.0) == lr_at(100, 0.0)
    assert lr_at(100, 0.5) < lr_at(100, 0.1)
    assert abs(lr_at(100, 1.0) - 0.1 * lr_at(100, 0.0)) < 1e-12
