"""lmforge's C++ ops library (`lmforge.nn.cpp_ops`): its ops really run on torch's intra-op
threads. ATen's ``at::parallel_for`` is inline OpenMP in its headers, so a library built
without ``-fopenmp`` runs every op on one thread whatever ``torch.set_num_threads`` says —
as lmforge's ops did until session 12, unnoticed because the results are the same."""

import sys

import pytest
import torch

from lmforge.nn import cpp_ops

pytestmark = pytest.mark.skipif(
    not cpp_ops.cpp_ops_available(),
    reason=f"C++ ops unavailable: {cpp_ops.cpp_ops_unavailable_reason()}",
)


@pytest.mark.skipif(
    not (torch.backends.openmp.is_available() and sys.platform.startswith("linux")),
    reason="built with OpenMP on Linux only",
)
def test_ops_use_torchs_threads(torch_threads):
    torch_threads(2)
    assert torch.ops.lmforge_ext.parallel_threads(64) == 2
    torch_threads(1)
    assert torch.ops.lmforge_ext.parallel_threads(64) == 1
