"""Guided latent sampling against a hand computation (two network calls and the CFG formula
through one DDIM step), the empty caption as the null branch, and prompt accuracy."""

from __future__ import annotations

import torch

from lmforge.diffusion.schedulers import load_scheduler
from lmforge.diffusion.text2image_pipeline import Text2ImageModel, prompt_accuracy, sample_latents
from lmforge.diffusion.text_dit import TextDiT, TextDiTConfig
from lmforge.diffusion.text_encoder import CaptionTokenizer, TextEncoder, TextEncoderConfig
from lmforge.vision.datasets import ImageDataset


def tiny_model(tok: CaptionTokenizer) -> Text2ImageModel:
    torch.manual_seed(0)
    te = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, hidden_size=16,
                                       num_attention_heads=2, intermediate_size=32,
                                       max_length=tok.max_length))  # fmt: skip
    den = TextDiT(TextDiTConfig(sample_size=4, in_channels=2, out_channels=2, hidden_size=16,
                                depth=1, num_heads=2, context_dim=16))  # fmt: skip
    for p in den.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return Text2ImageModel(te, den)


def test_guided_step_is_the_cfg_formula_with_the_empty_caption():
    tok = CaptionTokenizer.from_captions(["a red circle", "a big blue square"])
    model = tiny_model(tok)
    ids, mask = tok.encode(["a red circle", "a big blue square"])
    sched = load_scheduler({"_class_name": "DDIMScheduler", "clip_sample": False})
    got = sample_latents(
        model, sched, 1, ids, mask, (2, 4, 4), 3.0, torch.Generator().manual_seed(5)
    )
    z = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(5))
    null_ids, null_mask = tok.encode(["", ""])
    t = torch.tensor([int(sched.timesteps[0])] * 2)
    with torch.no_grad():
        cond = model(z, t, ids, mask)
        uncond = model(z, t, null_ids, null_mask)
    eps = uncond + 3.0 * (cond - uncond)
    ref = load_scheduler({"_class_name": "DDIMScheduler", "clip_sample": False})
    ref.set_timesteps(1)
    torch.testing.assert_close(got, ref.step(eps, ref.timesteps[0], z), rtol=1e-5, atol=1e-5)
    plain = sample_latents(
        model, sched, 1, ids, mask, (2, 4, 4), 1.0, torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(plain, ref.step(cond, ref.timesteps[0], z), rtol=1e-5, atol=1e-5)


class FixedClassifier:
    def __init__(self, preds):
        self.preds = preds

    def predict(self, images):
        return self.preds


def test_prompt_accuracy_counts_each_attribute_and_the_joint():
    asked = ImageDataset(
        "shapes", torch.zeros(4, 3, 2, 2), torch.tensor([0, 1, 2, 3]), ["a", "b", "c", "d"],
        attributes={"colour": torch.tensor([0, 0, 1, 1]), "position": torch.tensor([5, 5, 5, 5]),
                    "size": torch.tensor([0, 1, 0, 1])},
    )  # fmt: skip
    preds = {"label": torch.tensor([0, 1, 2, 0]), "colour": torch.tensor([0, 1, 1, 1]),
             "position": torch.tensor([5, 5, 4, 5]), "size": torch.tensor([0, 1, 0, 1])}  # fmt: skip
    acc = prompt_accuracy(FixedClassifier(preds), asked.images, asked)
    assert acc == {"colour_acc": 0.75, "shape_acc": 0.75, "position_acc": 0.75, "size_acc": 1.0,
                   "joint_acc": 0.25}  # fmt: skip
