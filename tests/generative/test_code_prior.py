"""The code prior: raster order round trip, the token layout, the resumable loader with
label dropout, the engine's code constraint, guidance, greedy engine sampling against a
step-by-step argmax, and the saved prior loading in transformers."""

from __future__ import annotations

import torch

from lmforge.generative.code_prior import (
    CodeConstraint,
    CodeSequenceLoader,
    PriorLayout,
    guided_code_logits,
    prior_input_ids,
    raster_codes,
    sample_codes,
    unraster_codes,
    write_prior_info,
)
from lmforge.models.hf import save_model
from lmforge.models.presets import preset_config
from lmforge.models.transformer import CausalLM

LAYOUT = PriorLayout(num_codes=8, num_classes=3, grid=(2, 3))


def test_raster_order_round_trip():
    grid = torch.arange(2 * 2 * 3).view(2, 2, 3)
    seq = raster_codes(grid)
    assert seq.shape == (2, 6)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                assert seq[b, i * 3 + j] == grid[b, i, j]  # row by row
    assert torch.equal(unraster_codes(seq, (2, 3)), grid)


def test_token_layout_and_input_ids():
    assert LAYOUT.vocab_size == 12 and LAYOUT.null_token == 11 and LAYOUT.length == 6
    codes = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 0, 0, 0, 0, 1]])
    ids = prior_input_ids(codes, torch.tensor([2, 0]), LAYOUT, torch.tensor([False, True]))
    assert ids.tolist() == [[10, 1, 2, 3, 4, 5, 6], [11, 7, 0, 0, 0, 0, 1]]


def test_loader_is_resumable_and_drops_labels_at_the_rate():
    g = torch.Generator().manual_seed(0)
    codes, labels = (
        torch.randint(0, 8, (50, 6), generator=g),
        torch.randint(0, 3, (50,), generator=g),
    )
    a = CodeSequenceLoader(codes, labels, LAYOUT, 16, seed=3, p_uncond=0.3)
    for _ in range(5):
        a.next_batch()
    b = CodeSequenceLoader(codes, labels, LAYOUT, 16, seed=3, p_uncond=0.3)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(
            x["labels"], x["input_ids"]
        )
    prefixes = torch.cat([a.next_batch()["input_ids"][:, 0] for _ in range(60)])
    dropped = (prefixes == LAYOUT.null_token).float().mean().item()
    assert 0.22 < dropped < 0.38
    assert set(prefixes.tolist()) <= {8, 9, 10, 11}


def test_constraint_and_guidance():
    c = CodeConstraint(num_codes=4, length=2)
    row = torch.zeros(7)
    c.mask_logits(row)
    assert torch.isinf(row[4:]).all() and (row[:4] == 0).all()
    c.accept(3)
    assert not c.is_finished()
    c.accept(0)
    assert c.is_finished()
    cond, uncond = torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 1.0, 1.0, 5.0])
    guided = guided_code_logits(cond, uncond, 3.0, num_codes=3)
    assert torch.allclose(guided[:3], torch.tensor([3.0, 4.0, -2.0])) and guided[3] == float("-inf")


def tiny_prior() -> CausalLM:
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=LAYOUT.vocab_size, max_position_embeddings=7,
                           hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_key_value_heads=1, eos_token_id=None, bos_token_id=None)  # fmt: skip
    return CausalLM(config).eval()


def test_engine_greedy_sampling_is_the_stepwise_argmax_over_codes():
    model = tiny_prior()
    labels = torch.tensor([0, 2])
    codes = sample_codes(model, LAYOUT, labels, 2, temperature=0.0)
    assert codes.shape == (2, 2, 3)
    for b, label in enumerate(labels.tolist()):
        seq = [LAYOUT.num_codes + label]
        with torch.no_grad():
            for _ in range(LAYOUT.length):
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
                seq.append(int(logits[: LAYOUT.num_codes].argmax()))
        assert raster_codes(codes[b : b + 1])[0].tolist() == seq[1:]
    # sampling: only codes, reproducible by seed, also with guidance and top-k / top-p
    a = sample_codes(model, LAYOUT, labels, 2, top_k=3, seed=5)
    assert torch.equal(a, sample_codes(model, LAYOUT, labels, 2, top_k=3, seed=5))
    guided = sample_codes(model, LAYOUT, None, 3, cfg_scale=2.0, top_p=0.9, seed=1)
    assert guided.shape == (3, 2, 3) and int(guided.max()) < LAYOUT.num_codes


def test_saved_prior_is_an_hf_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_prior()
    folder = save_model(model, tmp_path / "prior")
    write_prior_info(folder, LAYOUT, str(tmp_path / "vq"), ["a", "b", "c"])
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[9, 1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(input_ids=ids).logits, atol=1e-5)
