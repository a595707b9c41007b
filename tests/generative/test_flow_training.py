import math

import pytest
import torch

from lmforge.generative.flow_training import BIN_WIDTH, FlowNLLObjective, flow_bits_per_dim


class _Uniform(torch.nn.Module):
    """The uniform density on [-1, 1 + w]^D (D = 4): log p = −D log(2 + w)."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def log_prob(self, x):
        return torch.full((x.shape[0],), -4 * math.log(2 + BIN_WIDTH)) + 0 * self.p


def test_objective_and_bits_per_dim_closed_form():
    images = torch.zeros(5, 1, 2, 2)
    out = FlowNLLObjective()(_Uniform(), {"images": images})
    assert out.count == 5
    assert abs(out.loss_sum.item() - 5 * 4 * math.log(2 + BIN_WIDTH)) < 1e-4
    # −log p − D log w over D ln 2 = log2((2 + w) / w) = log2(256) = 8 bits exactly
    assert (
        abs(flow_bits_per_dim(_Uniform(), images) - math.log2((2 + BIN_WIDTH) / BIN_WIDTH)) < 1e-6
    )
    assert abs(math.log2((2 + BIN_WIDTH) / BIN_WIDTH) - 8) < 1e-9


@pytest.mark.slow  # ~5 s on a shared 2-core CPU
def test_realnvp_trains_through_the_trainer():
    from lmforge.generative.realnvp import RealNVP, RealNVPConfig
    from lmforge.train.config import RunConfig, load_config
    from lmforge.train.loop import Trainer
    from lmforge.vision.datasets import load_image_dataset
    from lmforge.vision.loader import ImageLoader

    data = load_image_dataset("shapes", size=8, num=64, seed=0)
    torch.manual_seed(0)
    model = RealNVP(RealNVPConfig(shape=[3, 8, 8], hidden=8, couplings_per_stage=2))
    before = flow_bits_per_dim(model, data.images)
    config = load_config(None, ["train.max_steps=10", "train.batch_size=16", "optim.lr=1e-2",
                                "optim.warmup_steps=0", "log.progress=false",
                                "train.eval_every=0", "train.save_every=0"], RunConfig)  # fmt: skip
    Trainer(model, ImageLoader(data, 16), config, objective=FlowNLLObjective()).fit()
    assert flow_bits_per_dim(model, data.images) < before - 0.5
