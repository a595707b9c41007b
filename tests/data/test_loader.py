"""Loaders: every token / example once per epoch, determinism, per-epoch reshuffles, exact
resume (mid-epoch and across epochs), and rank shards that are disjoint and together equal
the single-process global batch."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from lmforge.data.formats import Example
from lmforge.data.loader import PretrainLoader, SFTLoader
from lmforge.data.tokens import TokenFile, build_token_file
from lmforge.models.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer

KEYS = ("input_ids", "labels", "position_ids", "document_ids")


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(60)]
    tok = Tokenizer.train(texts, vocab_size=280)
    folder = tmp_path_factory.mktemp("tokens")
    (folder / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    build_token_file([folder / "c.jsonl"], tok, folder / "out", num_workers=0)
    return folder / "out"


def sft_examples(n=30, seed=0, max_len=20):
    """Example i's ids all encode i (ids 1000·i + position), so rows can be traced back."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(2, max_len + 1))
        ids = [1000 * i + t for t in range(length)]
        labels = [IGNORE_INDEX if t < length // 2 else x for t, x in enumerate(ids)]
        out.append(Example(ids, labels))
    return out


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def same(a, b):
    return all(
        torch.equal(x[k], y[k])
        for x, y in zip(a, b, strict=True)
        for k in (*KEYS, "num_loss_tokens")
    )


def check_contract(batch, batch_size, seq_len):
    for key in KEYS:
        assert batch[key].shape == (batch_size, seq_len) and batch[key].dtype == torch.int64
    assert batch["num_loss_tokens"].shape == () and batch["num_loss_tokens"].dtype == torch.int64
    assert int(batch["num_loss_tokens"]) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    starts = torch.ones_like(batch["document_ids"], dtype=torch.bool)
    starts[:, 1:] = batch["document_ids"][:, 1:] != batch["document_ids"][:, :-1]
    assert (batch["labels"][starts] == IGNORE_INDEX).all()
    assert (batch["position_ids"][starts] == 0).all()
    assert (
        batch["position_ids"][:, 1:][~starts[:, 1:]]
        == batch["position_ids"][:, :-1][~starts[:, 1:]] + 1
    ).all()


def test_pretrain_epoch_covers_every_token_once(token_dir):
    data = TokenFile(token_dir)
    loader = PretrainLoader(token_dir, seq_len=16, batch_size=1, pad_id=-1)
    assert loader.rows_per_epoch == -(-data.num_tokens // 16)
    batches = take(loader, loader.rows_per_epoch)
    assert loader.epoch == 1
    for b in batches:
        check_contract(b, 1, 16)
    # Each row is one 16-token window of the file; together they tile it exactly.
    tokens = np.asarray(data.tokens).astype(np.int64)
    windows = [tuple(tokens[s : s + 16]) for s in range(0, data.num_tokens, 16)]
    rows = [tuple(t for t in b["input_ids"][0].tolist() if t != -1) for b in batches]
    assert sorted(rows) == sorted(windows) and len(set(windows)) == len(windows)
    # Labels are the tokens, except at document (and row) starts and on filler.
    for b in batches:
        inner = (b["position_ids"][0] > 0) & (b["input_ids"][0] != -1)
        assert torch.equal(b["labels"][0][inner], b["input_ids"][0][inner])
        assert (b["labels"][0][~inner] == IGNORE_INDEX).all()
    # Document ids change exactly at the file's document boundaries.
    doc_of = np.searchsorted(data.doc_offsets, np.arange(data.num_tokens), side="right") - 1
    for b in batches:
        row = tuple(t for t in b["input_ids"][0].tolist() if t != -1)
        start = 16 * windows.index(row)
        docs = doc_of[start : start + len(row)]
        changes = np.flatnonzero(np.diff(docs)) + 1
        got = torch.nonzero(b["document_ids"][0][: len(row)].diff()).flatten() + 1
        assert got.tolist() == changes.tolist()
    assert loader.report.efficiency == data.num_tokens / (loader.rows_per_epoch * 16)


@pytest.mark.parametrize("make", ["pretrain", "sft"])
def test_determinism_and_per_epoch_reshuffle(make, token_dir):
    def loader(seed=0, batch_size=2):
        if make == "pretrain":
            return PretrainLoader(token_dir, 16, batch_size, seed=seed)
        return SFTLoader(sft_examples(), 24, batch_size, seed=seed)

    a, b = take(loader(), 12), take(loader(), 12)
    assert same(a, b)
    assert not same(a, take(loader(seed=1), 12))
    rows = loader().rows_per_epoch
    two_epochs = take(loader(batch_size=1), 2 * rows)
    first, second = two_epochs[:rows], two_epochs[rows:]
    assert not same(first, second)  # reshuffled (and, for SFT, repacked)
    if make == "pretrain":  # the same rows in a new order

        def key(b):
            return b["input_ids"][0].tolist()

        assert sorted(map(key, first)) == sorted(map(key, second))


@pytest.mark.parametrize("make", ["pretrain", "sft"])
@pytest.mark.parametrize("stop", [1, 5, 17])  # mid-epoch, and past one or more epoch ends
def test_resume_continues_with_exactly_the_next_batch(make, stop, token_dir):
    def loader(batch_size=3, **kw):
        if make == "pretrain":
            return PretrainLoader(token_dir, 16, batch_size, seed=7, **kw)
        return SFTLoader(sft_examples(), 24, batch_size, seed=7, **kw)

    straight = take(loader(), stop + 6)
    first = loader()
    it = iter(first)
    for _ in range(stop):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.epoch == first.epoch
    assert same(take(resumed, 6), straight[stop:])
    # A different world size with the same global batch resumes the same stream too.
    halves = [loader(1, rank=r, world_size=3) for r in range(3)]
    for h in halves:
        h.load_state_dict(state)
    parts = [take(h, 2) for h in halves]
    for step in range(2):
        for key in KEYS:
            joined = torch.cat([p[step][key] for p in parts])
            assert torch.equal(joined, straight[stop + step][key])


@pytest.mark.parametrize("make", ["pretrain", "sft"])
def test_ranks_are_disjoint_and_together_the_global_batch(make, token_dir):
    world, per_rank = 3, 2

    def loader(batch_size, **kw):
        if make == "pretrain":
            return PretrainLoader(token_dir, 16, batch_size, seed=3, **kw)
        return SFTLoader(sft_examples(), 24, batch_size, seed=3, **kw)

    single = take(loader(world * per_rank), 10)
    shards = [take(loader(per_rank, rank=r, world_size=world), 10) for r in range(world)]
    for step in range(10):
        for key in KEYS:
            joined = torch.cat([s[step][key] for s in shards])
            assert torch.equal(joined, single[step][key])
        assert sum(int(s[step]["num_loss_tokens"]) for s in shards) == int(
            single[step]["num_loss_tokens"]
        )
        rows = [tuple(r.tolist()) for s in shards for r in s[step]["input_ids"]]
        assert len(set(rows)) == len(rows)  # disjoint
    # Accumulation: k consecutive batches hold the same rows as one batch k times larger.
    small = take(loader(2), 3)
    assert torch.equal(torch.cat([b["input_ids"] for b in small]), single[0]["input_ids"])


def test_sft_epoch_holds_every_example_once_unsplit():
    examples = sft_examples(40, max_len=30)
    loader = SFTLoader(examples, 32, 1, pad_id=-1)
    batches = take(loader, loader.rows_per_epoch)
    seen = []
    for b in batches:
        check_contract(b, 1, 32)
        ids, docs, labels = b["input_ids"][0], b["document_ids"][0], b["labels"][0]
        for d in docs.unique():
            part = ids[docs == d]
            if (part == -1).all():
                continue  # filler
            i = int(part[0]) // 1000
            assert part.tolist() == examples[i].input_ids  # whole, unsplit
            expected = torch.tensor(examples[i].labels)
            expected[0] = IGNORE_INDEX
            assert torch.equal(labels[docs == d], expected)
            seen.append(i)
    assert sorted(seen) == list(range(40))
    assert 0.5 < loader.report.efficiency <= 1.0
    assert loader.report.efficiency == sum(map(len, examples)) / (32 * loader.rows_per_epoch)


def test_sft_too_long_policies_and_split():
    examples = [Example(list(range(1, 11)), list(range(1, 11))), Example([1, 2, 3], [1, 2, 3])]
    with pytest.raises(ValueError, match="example 0 has 10 tokens > seq_len=8"):
        SFTLoader(examples, 8, 1)
    loader = SFTLoader(examples, 8, 1, too_long="truncate")
    assert loader.report.truncated == 1 and loader.report.real_tokens == 11
    loader = SFTLoader(examples, 8, 1, too_long="drop")
    assert loader.report.dropped == 1 and loader.rows_per_epoch == 1
    loader = SFTLoader(examples, 8, 1, split_long=True, pad_id=0)
    rows = torch.cat([b["input_ids"] for b in take(loader, loader.rows_per_epoch)])
    assert sorted(t for t in rows.flatten().tolist() if t) == sorted(list(range(1, 11)) + [1, 2, 3])


def test_bad_arguments_and_mismatched_state(token_dir):
    with pytest.raises(ValueError, match="rank=2 must be in"):
        PretrainLoader(token_dir, 16, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="strategy='first'"):
        SFTLoader(sft_examples(), 24, 2, strategy="first")
    state = PretrainLoader(token_dir, 16, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        PretrainLoader(token_dir, 16, 2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="kind: saved 'pretrain', now 'sft'"):
        SFTLoader(sft_examples(), 16, 2, too_long="truncate").load_state_dict(state)


def test_sft_batches_give_the_token_weighted_mean_of_example_losses():
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    torch.manual_seed(0)
    model = CausalLM(preset_config("tiny", vocab_size=64, hidden_size=32, intermediate_size=64))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    rng = np.random.default_rng(1)
    examples = []
    for _ in range(12):
        ids = rng.integers(0, 64, size=int(rng.integers(3, 15))).tolist()
        cut = int(rng.integers(1, len(ids) - 1))
        examples.append(Example(ids, [IGNORE_INDEX] * cut + ids[cut:]))
    loader = SFTLoader(examples, 24, 4, seed=5)
    batch = next(iter(loader))
    inputs = {k: batch[k] for k in KEYS}
    with torch.no_grad():
        packed = model(**inputs).loss.item()
        total, count = 0.0, 0
        for b, row in enumerate(batch["input_ids"]):
            for d in batch["document_ids"][b].unique():
                mine = batch["document_ids"][b] == d
                labels = batch["labels"][b][mine]
                n = int((labels[1:] != IGNORE_INDEX).sum())
                if n:
                    ids = row[mine][None]
                    total += model(input_ids=ids, labels=labels[None]).loss.item() * n
                    count += n
    assert count == int(batch["num_loss_tokens"]) > 0
    assert abs(packed - total / count) <= 1e-5
