"""UNet ↔ diffusers UNet2DModel: same names, same outputs, both ways."""

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import UNet2DModel  # noqa: E402

from lmforge.config import ConfigError  # noqa: E402
from lmforge.diffusion.unet import UNet, UNetConfig  # noqa: E402
from lmforge.diffusion.unet_diffusers import (  # noqa: E402
    export_unet,
    from_diffusers_config,
    import_unet,
)

CONFIGS = [
    UNetConfig(
        block_out_channels=[8, 16],
        attention_levels=[False, True],
        norm_num_groups=4,
        attention_head_dim=4,
        num_classes=3,
        sample_size=8,
    ),
    UNetConfig(
        in_channels=3,
        out_channels=3,
        block_out_channels=[8, 8, 16],
        attention_levels=[True, False, True],
        layers_per_block=2,
        norm_num_groups=4,
        attention_head_dim=8,
        sample_size=8,
        mid_attention=False,
        freq_shift=1,
        flip_sin_to_cos=False,
    ),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_lmforge_to_diffusers_and_back(config, tmp_path):
    torch.manual_seed(0)
    ours = UNet(config).eval()
    for p in ours.parameters():  # non-trivial values everywhere (zero-init would hide errors)
        p.data.normal_(0, 0.2)
    export_unet(ours, tmp_path / "unet")
    theirs = UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    x = torch.randn(2, config.in_channels, 8, 8)
    t = torch.tensor([3, 870])
    labels = torch.tensor([0, 2]) if config.num_classes else None
    with torch.no_grad():
        want = theirs(x, t, class_labels=labels).sample
        got = ours(x, t, labels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # diffusers → lmforge: modify their weights, save, import
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.01)
    theirs.save_pretrained(tmp_path / "back")
    back = import_unet(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            back(x, t, labels), theirs(x, t, class_labels=labels).sample, rtol=1e-4, atol=1e-5
        )


def test_unmappable_configs_are_refused():
    with pytest.raises(ConfigError, match="time_embedding_type"):
        from_diffusers_config({"time_embedding_type": "fourier", "block_out_channels": [8]})
    with pytest.raises(ConfigError, match="SkipDownBlock2D"):
        from_diffusers_config({"down_block_types": ["SkipDownBlock2D"], "block_out_channels": [8]})
