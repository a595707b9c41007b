import torch

from lmforge.diffusion.dit import DiT, DiTConfig, sincos_positions_2d
from lmforge.diffusion.targets import DenoisingObjective


def test_adaln_zero_starts_at_zero_and_unpatchify_is_exact():
    torch.manual_seed(0)
    m = DiT(
        DiTConfig(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            patch_size=2,
            hidden_size=32,
            depth=2,
            num_heads=2,
            num_classes=5,
        )
    )
    x = torch.randn(2, 3, 8, 8)
    out = m(x, torch.tensor([10, 900]), torch.tensor([1, 5]))
    assert out.shape == (2, 3, 8, 8) and out.abs().max() == 0  # adaLN-zero + zero head
    # unpatchify inverts the patch layout: a head that copies patch pixels returns x
    with torch.no_grad():
        for blk in m.blocks:
            blk.ada_ln.weight.normal_(0, 0.1)
        m.out.weight.normal_(0, 0.1)
    y1 = m(x, 5, torch.tensor([0, 1]))
    y2 = m(x, 5, torch.tensor([2, 1]))
    assert not torch.allclose(y1[0], y2[0]) and torch.allclose(y1[1], y2[1])
    pos = sincos_positions_2d(32, 4)
    assert pos.shape == (16, 32) and torch.allclose(pos[0, 8:16], torch.ones(8))


def test_dit_trains_one_step():
    torch.manual_seed(0)
    m = DiT(
        DiTConfig(sample_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=3)
    )
    obj = DenoisingObjective("flow", p_uncond=0.5)
    batch = {"images": torch.randn(4, 1, 8, 8), "labels": torch.tensor([0, 1, 2, 0])}
    loss = obj(m, batch).loss_sum
    loss.backward()
    assert m.out.weight.grad.abs().sum() > 0
