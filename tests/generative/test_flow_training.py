import math

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
