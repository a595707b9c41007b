"""Classifier-free guidance: the combination against the hand formula, and `guided_output`
against two separate network calls."""

from __future__ import annotations

import torch

from lmforge.diffusion.sampling import cfg_combine, guided_output


def test_cfg_combination_is_the_hand_formula():
    cond, uncond = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.0, 0.5])
    w = 4.0
    want = torch.tensor([0.5 + 4 * 0.5, 1.0 + 4 * (-3.0), 0.5])
    torch.testing.assert_close(cfg_combine(cond, uncond, w), want)
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)


class Toy(torch.nn.Module):
    null_class = 3

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(4, 1)

    def forward(self, x, t, labels):
        return x * 0.5 + t.view(-1, 1) * 0.01 + self.emb(labels)


def test_guided_output_equals_separate_calls():
    torch.manual_seed(0)
    model, x = Toy(), torch.randn(2, 1)
    t, labels = torch.tensor(7), torch.tensor([0, 2])
    tt = t.expand(2)
    cond = model(x, tt, labels)
    uncond = model(x, tt, torch.full_like(labels, 3))
    got = guided_output(model, x, t, labels, 2.5)
    torch.testing.assert_close(got, uncond + 2.5 * (cond - uncond))
    torch.testing.assert_close(guided_output(model, x, t, labels, 1.0), cond)
