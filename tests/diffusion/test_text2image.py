"""Caption dropout for classifier-free guidance and the latent ε objective (the whole run,
resume included, is tested through the command in tests/commands/test_text2image.py)."""

from __future__ import annotations

import torch

from lmforge.diffusion.text2image import LatentDenoisingObjective, drop_captions
from lmforge.diffusion.text_encoder import CaptionTokenizer


def test_drop_captions_uses_the_empty_caption_at_the_given_rate():
    tok = CaptionTokenizer.from_captions(["a big red circle at the top"])
    ids, mask = tok.encode(["a big red circle at the top"] * 4000)
    torch.manual_seed(0)
    new_ids, new_mask = drop_captions(ids, mask, 0.25)
    null_ids, null_mask = tok.encode([""])
    dropped = (new_ids == null_ids).all(1)
    assert torch.equal(new_mask[dropped], null_mask.expand(int(dropped.sum()), -1))
    assert torch.equal(new_ids[~dropped], ids[~dropped])
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert drop_captions(ids, mask, 0.0)[0] is ids


def test_latent_objective_is_the_epsilon_mse():
    ab = torch.linspace(0.99, 0.01, 10)

    class Oracle(torch.nn.Module):  # returns the true noise: recovered from z0 in the batch
        def forward(self, zt, t, ids, mask):
            a = ab[t].view(-1, 1, 1, 1)
            return (zt - a.sqrt() * z0) / (1 - a).sqrt()

    z0 = torch.randn(6, 2, 3, 3)
    tok = CaptionTokenizer.from_captions(["a b"])
    ids, mask = tok.encode(["a b"] * 6)
    out = LatentDenoisingObjective(ab, 0.5)(Oracle(), {"images": z0, "input_ids": ids,
                                                       "attention_mask": mask})  # fmt: skip
    assert out.count == 6 and out.loss_sum.item() < 1e-8
