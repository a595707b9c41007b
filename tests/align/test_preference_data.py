"""Preference pairs: chat-template tokenization with completion-only labels, packed / padded
batches, deterministic shuffling, rank sharding, accumulation equivalence, exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.align.preference_data import (
    PreferenceLoader,
    load_preference_pairs,
    synthetic_preferences,
    tokenize_preference,
    write_preference_jsonl,
)
from lmforge.data.formats import tokenize_conversation
from lmforge.data.sources import DataError, PreferenceRecord
from lmforge.models.loss import IGNORE_INDEX
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    from lmforge.data.tasks.chat import synthetic_chats

    texts = [m["content"] for c in synthetic_chats(200, 0) for m in c]
    return Tokenizer.train(texts, vocab_size=300)


@pytest.fixture(scope="module")
def pairs(tok, tmp_path_factory):
    path = write_preference_jsonl(tmp_path_factory.mktemp("p") / "p.jsonl", 40, seed=1)
    pairs, report = load_preference_pairs([path], tok, max_len=128)
    assert report.kept == 40 and len(pairs) == 40
    return pairs


def _targets(example):
    return [t for t, lab in zip(example.input_ids, example.labels) if lab != IGNORE_INDEX]


def test_messages_pair_scores_only_the_completion(tok):
    prompt = ({"role": "user", "content": "What is 2 + 3?"},)
    chosen = ({"role": "assistant", "content": "2 + 3 = 5."},)
    rejected = ({"role": "assistant", "content": "2 + 3 = 6."},)
    pair = tokenize_preference(PreferenceRecord(prompt, chosen, rejected, "f:1"), tok)
    want = tokenize_conversation([*prompt, *chosen], tok, train_from=1)
    assert pair.chosen.input_ids == want.input_ids and pair.chosen.labels == want.labels
    head = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
    for ex, text in ((pair.chosen, "2 + 3 = 5."), (pair.rejected, "2 + 3 = 6.")):
        assert ex.input_ids[: len(head)] == head  # the shared prompt
        assert all(lab == IGNORE_INDEX for lab in ex.labels[: len(head)])
        assert text in tok.decode(_targets(ex))
    assert pair.where == "f:1"
    # a string prompt / completions inside a chat template are one user and one assistant turn
    same = tokenize_preference(PreferenceRecord("What is 2 + 3?", "2 + 3 = 5.", rejected), tok)
    assert same.chosen.input_ids == pair.chosen.input_ids


def test_string_pair_renders_like_sft_unless_raw(tok):
    """What trains is what serves: string records go through the chat template as SFT's
    prompt/completion records do; ``data.format=raw`` keeps ``<bos> prompt completion <eos>``."""
    record = PreferenceRecord("Q: hi", " yes", " no")
    pair = tokenize_preference(record, tok)
    sft = tokenize_conversation(
        [{"role": "user", "content": "Q: hi"}, {"role": "assistant", "content": " yes"}],
        tok,
        train_from=1,
    )
    assert pair.chosen.input_ids == sft.input_ids and pair.chosen.labels == sft.labels
    raw = tokenize_preference(record, tok, raw=True)
    head = tok.encode("Q: hi", add_special_tokens=True)
    assert raw.chosen.input_ids == head + tok.encode(" yes") + [tok.eos_token_id]
    assert _targets(raw.rejected) == tok.encode(" no") + [tok.eos_token_id]


def test_implicit_prompt_is_the_shared_leading_messages(tok):
    user = {"role": "user", "content": "What day comes after Monday?"}
    good = {"role": "assistant", "content": "After Monday comes Tuesday."}
    bad = {"role": "assistant", "content": "After Monday comes Friday."}
    pair = tokenize_preference(PreferenceRecord(None, (user, good), (user, bad)), tok)
    explicit = tokenize_preference(PreferenceRecord((user,), (good,), (bad,)), tok)
    assert pair.chosen == explicit.chosen and pair.rejected == explicit.rejected


def test_bad_records_name_file_and_line(tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "a", "chosen": "b", "rejected": "c"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*rejected"):
        load_preference_pairs([path], tok)
    pairs, report = load_preference_pairs([path], tok, skip_bad=True)
    assert len(pairs) == 1 and report.num_skipped == 1


def test_too_long_pairs_truncate_drop_or_error(tok, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "x", "chosen": "a " * 40, "rejected": "b"}) + "\n")
    (pair,), report = load_preference_pairs([path], tok, max_len=12, format="raw")
    assert len(pair.chosen) == 12 and report.counts["truncated to max_len"] == 1
    pairs, report = load_preference_pairs([path], tok, max_len=12, too_long="drop", format="raw")
    assert pairs == [] and report.counts["dropped: longer than max_len"] == 1
    with pytest.raises(DataError, match="long.jsonl:1: .* > max_len=12"):
        load_preference_pairs([path], tok, max_len=12, too_long="error", format="raw")


def test_synthetic_preferences_are_seeded_and_differ():
    a, b = synthetic_preferences(30, seed=3), synthetic_preferences(30, seed=3)
    assert a == b and a != synthetic_preferences(30, seed=4)
    for r in a:
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
        assert r["prompt"][-1]["role"] == "user"


def _unpack(batch):
    """{sequence index: (tokens, labels)} of a batch, whatever its layout."""
    out = {}
    for row_ids, row_labels, row_seq in zip(
        batch["input_ids"], batch["labels"], batch["sequence_ids"], strict=True
    ):
        for s in row_seq.unique().tolist():
            if s >= 0:
                at = row_seq == s
                out[s] = (row_ids[at].tolist(), row_labels[at].tolist())
    return out


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_batches_hold_chosen_then_rejected_of_each_pair(pairs, layout):
    loader = PreferenceLoader(pairs, 5, 128, seed=0, layout=layout)
    batch = next(iter(loader))
    seqs = _unpack(batch)
    assert sorted(seqs) == list(range(10))
    for k, i in enumerate(batch["pair_ids"].tolist()):
        assert seqs[2 * k] == (pairs[i].chosen.input_ids, pairs[i].chosen.labels)
        assert seqs[2 * k + 1] == (pairs[i].rejected.input_ids, pairs[i].rejected.labels)
    if layout == "packed":  # no cross-sequence attention, positions restart per sequence
        assert batch["input_ids"].shape[0] < 10
        for row in range(batch["input_ids"].shape[0]):
            seq, pos, doc = (
                batch[k][row] for k in ("sequence_ids", "position_ids", "document_ids")
            )
            for s in seq.unique().tolist():
                at = seq == s
                if s >= 0:
                    assert pos[at].tolist() == list(range(int(at.sum())))
                assert doc[at].unique().numel() == 1 and not (doc[~at] == doc[at][0]).any()
    else:
        assert batch["input_ids"].shape[0] == 10
        assert batch["attention_mask"].sum().item() == sum(len(s[0]) for s in seqs.values())


def _stream(loader, n):
    it = iter(loader)
    return [next(it)["pair_ids"].tolist() for _ in range(n)]


def test_epochs_reshuffle_deterministically_and_cover_every_pair(pairs):
    a = _stream(PreferenceLoader(pairs, 8, 128, seed=1), 10)  # 80 pairs = 2 epochs
    assert a == _stream(PreferenceLoader(pairs, 8, 128, seed=1), 10)
    assert a != _stream(PreferenceLoader(pairs, 8, 128, seed=2), 10)
    flat = [i for b in a for i in b]
    assert sorted(flat[:40]) == list(range(40)) and sorted(flat[40:]) == list(range(40))
    assert flat[:40] != flat[40:]


def test_ranks_split_the_global_batch_and_accumulation_sees_the_same_pairs(pairs):
    whole = _stream(PreferenceLoader(pairs, 6, 128, seed=0), 7)
    ranks = [_stream(PreferenceLoader(pairs, 2, 128, seed=0, rank=r, world_size=3), 7)
             for r in range(3)]  # fmt: skip
    for step in range(7):
        assert sum((ranks[r][step] for r in range(3)), []) == whole[step]
    micro = _stream(PreferenceLoader(pairs, 2, 128, seed=0), 21)
    assert [sum(micro[3 * s : 3 * s + 3], []) for s in range(7)] == whole


def test_resume_yields_exactly_the_next_batch(pairs):
    loader = PreferenceLoader(pairs, 7, 128, seed=0)
    it = iter(loader)
    for _ in range(6):  # past an epoch boundary
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    want = [next(it) for _ in range(3)]
    fresh = PreferenceLoader(pairs, 7, 128, seed=0)
    fresh.load_state_dict(state)
    it2 = iter(fresh)
    for w in want:
        got = next(it2)
        assert got.keys() == w.keys() and all(torch.equal(got[k], w[k]) for k in w)
    with pytest.raises(ValueError, match="num_pairs"):
        PreferenceLoader(pairs[:-1], 7, 128, seed=0).load_state_dict(state)


def test_precomputed_reference_rides_along_in_sequence_order(pairs):
    table = torch.arange(2 * len(pairs), dtype=torch.float32).view(-1, 2)
    batch = PreferenceLoader(pairs, 4, 128, reference_logps=table).collate([3, 1])
    assert batch["ref_logps"].tolist() == [6.0, 7.0, 2.0, 3.0]
