"""lmforge's own C++ CPU ops (``torch.ops.lmforge_ext.*``), built on first use.

The sources in ``lmforge/nn/kernels/`` are compiled together into one library with
``torch.utils.cpp_extension`` (the system's C++ compiler and ninja) into ``$LMFORGE_EXT_DIR``
(default ``~/.cache/lmforge/ext``), one folder per torch version; later processes load the
built library (it is rebuilt when a source changes). A build never raises:
`cpp_ops_available` is then false and `cpp_ops_unavailable_reason` says why (not an x86-64
CPU, no compiler, a build error, or ``LMFORGE_CPP_OPS=0``), and every caller keeps its PyTorch
path. Each op has a fake (meta) implementation registered here, so ``torch.compile`` can trace
calls to it.

Ops: ``int8_gemv`` (`lmforge.nn.int8_gemv`: one-row int8 products of `lmforge.nn.quant`'s
`Int8Linear` and of the compiled decode step), ``dense_gemv`` (`lmforge.nn.dense_gemv`),
``panel_gemm`` (`lmforge.nn.panel_gemm`: multi-row fp32 products), ``decode_pre`` /
``decode_post`` (`lmforge.nn.decode_layer`: a layer's one-token work around its attention),
``paged_decode_attention``
(`lmforge.infer.paged_attention`), ``argmax_rows`` (`lmforge.infer.sampling.greedy_tokens`). They live below the engine so that a quantised layer and
the engine's fused runner call the same kernel (bit-equal logits). First build ≈ 10 s (g++ -O3 with ninja); later processes
load it in ≈ 0.4 s.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

__all__ = ["KERNEL_SOURCES", "cpp_ops_available", "cpp_ops_unavailable_reason"]

KERNEL_SOURCES = (
    "gemv.cpp",
    "paged_attention.cpp",
    "panel_gemm.cpp",
    "decode_layer.cpp",
    "argmax.cpp",
)
_KERNELS = Path(__file__).parent / "kernels"
_LOCK = threading.Lock()
_STATE: dict[str, str | None] = {}
log = logging.getLogger("lmforge.nn")


def _build_dir() -> Path:
    root = os.environ.get("LMFORGE_EXT_DIR") or Path.home() / ".cache" / "lmforge" / "ext"
    return Path(root) / f"torch-{torch.__version__.replace('+', '_')}"


def _register_fakes() -> None:
    @torch.library.register_fake("lmforge_ext::int8_gemv")
    def _int8_gemv(x, q, s, portable=False):
        n = sum(w.shape[0] for w in q)
        return x.new_empty((n,) if x.dim() == 1 else (1, n), dtype=torch.float32)

    @torch.library.register_fake("lmforge_ext::int8_gemv_q8")
    def _int8_gemv_q8(x, q, s):
        return _int8_gemv(x, q, s)

    @torch.library.register_fake("lmforge_ext::dense_gemv")
    def _dense_gemv(x, w, portable=False):
        n = sum(m.shape[0] for m in w)
        return x.new_empty((n,) if x.dim() == 1 else (1, n), dtype=torch.float32)

    @torch.library.register_fake("lmforge_ext::panel_gemm")
    def _panel_gemm(x, panels, n, portable=False):
        return x.new_empty((x.shape[0], n), dtype=torch.float32)

    @torch.library.register_fake("lmforge_ext::argmax_rows")
    def _argmax_rows(x, portable=False):
        return x.new_empty((x.shape[0],), dtype=torch.int64)

    @torch.library.register_fake("lmforge_ext::paged_decode_attention")
    def _(q, keys, values, tables, lengths, block_size, scale, window):
        return torch.empty_like(q)


def _load() -> str | None:
    """Build and load the library once per process; the reason it is unavailable, or None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    sources = [_KERNELS / name for name in KERNEL_SOURCES]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        return f"kernel sources missing: {', '.join(missing)}"
    try:
        from torch.utils import cpp_extension

        build = _build_dir()
        build.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        # -fopenmp: `at::parallel_for` is inline OpenMP in ATen's headers (torch's CPU
        # backend); without it every op ran on one thread whatever torch.set_num_threads
        # said. The library then needs libgomp.so.1: the one torch loaded already.
        # (Linux: elsewhere, e.g. Apple's clang, -fopenmp would fail the build; the ops then
        # run on one thread as before)
        linux = sys.platform.startswith("linux")
        openmp = ["-fopenmp"] if linux and torch.backends.openmp.is_available() else []
        cpp_extension.load(
            name="lmforge_ext",
            sources=[str(s) for s in sources],
            build_directory=str(build),
            extra_cflags=["-O3", "-fopenmp-simd", *openmp],
            extra_ldflags=openmp,
            is_python_module=False,
            verbose=False,
        )
        ops = ("int8_gemv", "int8_gemv_q8", "dense_gemv", "panel_gemm", "panel_gemm_isa",
               "decode_pre", "decode_post", "paged_decode_attention", "argmax_rows")  # fmt: skip
        for op in ops:
            getattr(torch.ops.lmforge_ext, op)  # raises if the library did not register it
    except Exception as e:  # noqa: BLE001 - no compiler, a build error, …: never fatal
        return f"the C++ ops did not build or load: {type(e).__name__}: {str(e).strip()[:500]}"
    _register_fakes()
    log.info("lmforge's C++ ops ready (%s) in %.1f s", build, time.perf_counter() - start)
    return None


def cpp_ops_unavailable_reason() -> str | None:
    """Why lmforge's C++ ops cannot run here (building them on the first call), or None."""
    if os.environ.get("LMFORGE_CPP_OPS", "1") == "0":
        return "turned off by LMFORGE_CPP_OPS=0"
    if "reason" not in _STATE:
        with _LOCK:
            if "reason" not in _STATE:
                _STATE["reason"] = _load()
    return _STATE["reason"]


def cpp_ops_available() -> bool:
    """Whether ``torch.ops.lmforge_ext`` can run (builds it on the first call; never raises)."""
    return cpp_ops_unavailable_reason() is None
