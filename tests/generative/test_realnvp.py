import math

import torch

from lmforge.generative.realnvp import RealNVP, RealNVPConfig, squeeze, unsqueeze


def _model():
    torch.manual_seed(0)
    m = RealNVP(RealNVPConfig(shape=[1, 4, 4], hidden=8, couplings_per_stage=2))
    with torch.no_grad():
        for p in m.parameters():  # leave the zero init: non-trivial s and t everywhere
            p.add_(0.2 * torch.randn_like(p))
    return m.double()


def test_squeeze_roundtrip_and_layout():
    x = torch.arange(2 * 4 * 4.0).view(1, 2, 4, 4)
    s = squeeze(x)
    assert s.shape == (1, 8, 2, 2)
    assert s[0, :4, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left 2×2 block
    assert torch.equal(unsqueeze(s), x)


def test_inverse_and_brute_force_log_det():
    m = _model()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    z, logdet = m(x)
    torch.testing.assert_close(m.inverse(z), x)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v: m(v.view(1, 1, 4, 4))[0].flatten(), x[i].flatten()
        )
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1])
    want = -0.5 * z.flatten(1).pow(2).sum(1) - 8 * math.log(2 * math.pi) + logdet
    torch.testing.assert_close(m.log_prob(x), want)
    assert m.sample(3, torch.Generator().manual_seed(1)).shape == (3, 1, 4, 4)
