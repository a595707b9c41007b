"""The code prior: raster order round trip, the token layout (class and caption prefixes),
the resumable loader with label dropout, the engine's code constraint, guidance through the
engine (scale 1 = conditional, scale 0 = unconditional, greedy guided = the step-by-step
argmax of the guided logits), greedy engine sampling against a step-by-step argmax, and the
saved prior loading in transformers."""

from __future__ import annotations

import pytest
import torch

from lmforge.diffusion.text_encoder import CaptionTokenizer
from lmforge.generative.code_prior import (
    CodeConstraint,
    CodeSequenceLoader,
    GuidedCodeConstraint,
    PriorLayout,
    caption_conditions,
    guided_code_logits,
    load_prior,
    prior_input_ids,
    raster_codes,
    sample_codes,
    unraster_codes,
    write_prior_info,
)
from lmforge.generative.vqgan import VQGAN, VQGANConfig, save_vqgan
from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
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
        assert torch.equal(x["input_ids"], y["input_ids"])
        assert torch.equal(x["labels"][:, 1:], x["input_ids"][:, 1:])
        assert (x["labels"][:, 0] == -100).all()  # the prefix is never a target
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


def tiny_prior(layout: PriorLayout = LAYOUT) -> CausalLM:
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=layout.vocab_size,
                           max_position_embeddings=layout.prefix_length + layout.length,
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


CAPTIONS = ["a red circle", "a big blue square", "a circle"]
TOKENIZER = CaptionTokenizer.from_captions(CAPTIONS)  # vocab 9, max_length 5
CAPTION_LAYOUT = PriorLayout(8, 3, (2, 3), TOKENIZER.vocab_size, TOKENIZER.max_length)


def test_caption_layout_prefix_and_labels():
    lay = CAPTION_LAYOUT
    assert lay.captioned and lay.prefix_length == 5 and lay.vocab_size == 8 + 9
    ids, _ = TOKENIZER.encode(CAPTIONS[:2])
    empty, _ = TOKENIZER.encode([""])
    assert lay.null_prefix == (8 + empty[0]).tolist()  # the empty caption, <bos> alone
    codes = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 0, 0, 0, 0, 1]])
    x = prior_input_ids(codes, ids, lay, torch.tensor([False, True]))
    assert x[0].tolist() == (8 + ids[0]).tolist() + [1, 2, 3, 4, 5, 6]
    assert x[1].tolist() == lay.null_prefix + [7, 0, 0, 0, 0, 1]
    loader = CodeSequenceLoader(codes, ids, lay, 2, seed=0)
    batch = loader.next_batch()
    assert (batch["labels"][:, :5] == -100).all()
    assert torch.equal(batch["labels"][:, 5:], batch["input_ids"][:, 5:])
    assert sorted(batch["input_ids"][:, 5:].tolist()) == sorted(codes.tolist())


def brute_guided_argmax(model, prefix, null, layout, scale):
    """Greedy guided decoding by full forwards of both streams (no engine, no cache)."""
    cond, uncond, out = list(prefix), list(null), []
    with torch.no_grad():
        for _ in range(layout.length):
            lc = model(input_ids=torch.tensor([cond])).logits[0, -1]
            lu = model(input_ids=torch.tensor([uncond])).logits[0, -1]
            nxt = int(guided_code_logits(lc, lu, scale, layout.num_codes).argmax())
            cond, uncond, out = cond + [nxt], uncond + [nxt], out + [nxt]
    return out


def test_guidance_through_the_engine_class_and_caption_prefixes():
    for layout, conditions in (
        (LAYOUT, torch.tensor([0, 2, 1])),
        (CAPTION_LAYOUT, TOKENIZER.encode(CAPTIONS)[0]),
    ):
        model = tiny_prior(layout)
        # scale 1 is plain conditional sampling, exactly (same seeds, same tokens)
        plain = sample_codes(model, layout, conditions, 3, top_k=5, seed=7)
        engine = Engine(model, max_num_seqs=3)
        prefixes = [
            (layout.num_codes + c).tolist() if layout.captioned else [layout.num_codes + int(c)]
            for c in conditions
        ]
        params = [
            SamplingParams(max_tokens=layout.length, top_k=5, seed=7 + i, ignore_eos=True,
                           constraint=GuidedCodeConstraint(model, layout.null_prefix,
                                                           layout.num_codes, layout.length, 1.0))
            for i in range(3)
        ]  # fmt: skip
        outs = engine.generate(prefixes, params)
        assert torch.tensor([o.token_ids for o in outs]).tolist() == raster_codes(plain).tolist()
        # scale 0 is unconditional sampling (same seeds)
        zero = sample_codes(model, layout, conditions, 3, cfg_scale=0.0, seed=11)
        uncond = sample_codes(model, layout, None, 3, seed=11)
        assert torch.equal(zero, uncond)
        # greedy at scale 3: the engine's guided draw is the brute-force guided argmax
        guided = sample_codes(model, layout, conditions, 3, cfg_scale=3.0, temperature=0.0)
        for b in range(3):
            want = brute_guided_argmax(model, prefixes[b], layout.null_prefix, layout, 3.0)
            assert raster_codes(guided[b : b + 1])[0].tolist() == want
        # the hook's logits: l_∅ + 3 (l_c − l_∅) with l_∅ from the null prefix + drawn codes
        hook = GuidedCodeConstraint(model, layout.null_prefix, layout.num_codes, layout.length, 3)
        for t in (3, 1):
            hook.accept(t)
        with torch.no_grad():
            lc = model(input_ids=torch.tensor([prefixes[0] + [3, 1]])).logits[0, -1]
            lu = model(input_ids=torch.tensor([layout.null_prefix + [3, 1]])).logits[0, -1]
        row = lc.clone()
        hook.mask_logits(row)
        want = lu + 3 * (lc - lu)
        assert torch.allclose(row[: layout.num_codes], want[: layout.num_codes], atol=1e-5)
        assert torch.isinf(row[layout.num_codes :]).all()
        assert not torch.allclose(row[: layout.num_codes], lc[: layout.num_codes], atol=1e-3)


def test_caption_prior_info_round_trip(tmp_path):
    vq = VQGAN(VQGANConfig(channels=1, image_size=8, hidden=[8, 8], num_codes=8, code_dim=2))
    save_vqgan(vq, tmp_path / "vq", {})
    folder = save_model(tiny_prior(CAPTION_LAYOUT), tmp_path / "prior")
    write_prior_info(folder, CAPTION_LAYOUT, str(tmp_path / "vq"), ["a", "b", "c"],
                     TOKENIZER.to_dict())  # fmt: skip
    _, _, layout, info = load_prior(folder)
    assert layout == CAPTION_LAYOUT
    assert CaptionTokenizer.from_dict(info["caption_tokenizer"]).vocab == TOKENIZER.vocab
    ids = caption_conditions(info, ["a blue circle", ""])
    assert torch.equal(ids, TOKENIZER.encode(["a blue circle", ""])[0])
    with pytest.raises(ValueError, match="never saw: green"):
        caption_conditions(info, ["a green circle"])
    with pytest.raises(ValueError, match="class-conditional"):
        caption_conditions({}, ["a circle"])
