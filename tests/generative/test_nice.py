import math

import torch

from lmforge.generative.nice import NICE, NICEConfig, logistic_log_prob


def _model():
    torch.manual_seed(0)
    m = NICE(NICEConfig(shape=[1, 2, 3], num_couplings=4, hidden=16, hidden_layers=2))
    with torch.no_grad():
        m.log_scale.normal_(0, 0.3)
    return m.double()


def test_inverse_and_brute_force_log_det():
    m = _model()
    x = torch.randn(3, 1, 2, 3, dtype=torch.float64)
    h, logdet = m(x)
    torch.testing.assert_close(m.inverse(h), x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda v: m(v.view(1, 1, 2, 3))[0][0], x[i].flatten()
        )
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1])


def test_logistic_prior_and_log_prob():
    h = torch.tensor([[0.0, 1.0, -2.0]], dtype=torch.float64)
    sig = torch.sigmoid(h)
    torch.testing.assert_close(logistic_log_prob(h), torch.log(sig * (1 - sig)).sum(1))
    m = _model()
    x = torch.randn(2, 1, 2, 3, dtype=torch.float64)
    h, _ = m(x)
    torch.testing.assert_close(m.log_prob(x), logistic_log_prob(h) + m.log_scale.sum())
    assert m.sample(4, torch.Generator().manual_seed(0)).shape == (4, 1, 2, 3)
    assert math.isfinite(m.log_prob(x).sum().item())
