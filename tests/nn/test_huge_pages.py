"""`lmforge.nn.huge_pages`: moving a model's large tensors into a huge-page mapping keeps their
values, their ``Parameter`` objects and ties, gives each its own storage (safetensors saves
and `load_model` loads them), skips small and already-moved tensors, backs the mapping by
huge pages where the OS offers them, and does nothing where turned off."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from lmforge.nn import huge_pages as hp


def model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 768), nn.Linear(768, 512, bias=False), nn.LayerNorm(512))
    m.register_buffer("codes", torch.randint(-127, 128, (1024, 600), dtype=torch.int8))
    return m


needs_thp = pytest.mark.skipif(
    not hp.huge_pages_supported(), reason="no transparent huge pages here"
)


@needs_thp
def test_values_objects_and_storages_are_kept_apart():
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    params = list(m.parameters())
    moved = hp.move_to_huge_pages(m, min_bytes=256 << 10)
    big = [m[0].weight, m[1].weight, m.codes]
    assert moved == sum(-(-t.numel() * t.element_size() // 64) * 64 for t in big)
    assert list(m.parameters()) == params and all(p is q for p, q in zip(m.parameters(), params))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    ptrs = [t.data_ptr() for t in big]
    assert all(p % 64 == 0 for p in ptrs)
    assert len({t.untyped_storage().data_ptr() for t in big}) == 3  # one storage each
    assert m[0].bias.untyped_storage().data_ptr() not in ptrs  # small: left alone
    assert hp.move_to_huge_pages(m) == 0  # moved already
    with torch.no_grad():  # in-place updates work on the new memory
        m[0].weight.add_(1)
    assert torch.equal(m[0].weight, before["0.weight"] + 1)
    assert hp.move_to_huge_pages(copy.deepcopy(m)) == moved  # a copy is not in the mapping


@needs_thp
def test_ties_survive_and_training_still_works():
    emb = nn.Embedding(2048, 512)
    head = nn.Linear(512, 2048, bias=False)
    head.weight = emb.weight
    m = nn.ModuleDict({"emb": emb, "head": head})
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    assert hp.move_to_huge_pages(m) == 2048 * 512 * 4  # the tied weight once
    assert m["head"].weight is m["emb"].weight
    loss = m["head"](m["emb"](torch.tensor([3, 5]))).square().mean()
    loss.backward()
    w = m["emb"].weight.detach().clone()
    opt.step()
    assert not torch.equal(m["emb"].weight, w)


@needs_thp
def test_a_moved_model_saves_and_loads(tmp_path: Path):
    from lmforge.models.hf import load_model, save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    cfg = preset_config("5m")
    lm = CausalLM(cfg)
    assert hp.move_to_huge_pages(lm) > 0
    save_model(lm, tmp_path / "m")
    back = load_model(tmp_path / "m")
    for (k, v), (k2, v2) in zip(lm.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@needs_thp
def test_the_mapping_gets_huge_pages():
    """The kernel counts huge pages of anonymous memory in ``AnonHugePages``: moving 16 MB
    into an advised mapping raises it (THP in ``madvise`` or ``always`` mode)."""

    def anon_huge_kb() -> int:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
        return 0

    before = anon_huge_kb()
    m = nn.Linear(2048, 2048, bias=False)
    assert hp.move_to_huge_pages(m) == 16 << 20
    after = anon_huge_kb()
    if after - before < 2048:  # the kernel may be short of free 2 MB frames: not our bug
        pytest.skip(f"no huge page was handed out (AnonHugePages {before} -> {after} kB)")
    assert after - before >= 2048


def test_turned_off_or_small_moves_nothing(monkeypatch):
    m = nn.Linear(4, 4)
    assert hp.move_to_huge_pages(m) == 0  # below one huge page in all
    monkeypatch.setenv("LMFORGE_HUGE_PAGES", "0")
    assert not hp.huge_pages_supported()
    big = model()
    ptr = big[0].weight.data_ptr()
    assert hp.move_to_huge_pages(big) == 0 and big[0].weight.data_ptr() == ptr


def test_the_engine_moves_cpu_weights_and_can_be_told_not_to():
    from lmforge.infer.engine import Engine
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM

    lm = CausalLM(preset_config("5m")).eval()
    ptr = lm.lm_head.weight.data_ptr()
    Engine(lm, max_num_seqs=1, huge_pages=False)
    assert lm.lm_head.weight.data_ptr() == ptr
    Engine(lm, max_num_seqs=1)
    assert (lm.lm_head.weight.data_ptr() != ptr) == hp.huge_pages_supported()


@needs_thp
def test_a_refused_mapping_moves_nothing(monkeypatch):
    """Where the kernel refuses the mapping or the advice (``OSError``), nothing moves and
    nothing raises: the engine still starts."""

    class Refusing:
        def __init__(self, *args, **kwargs):
            raise OSError(22, "Invalid argument")

    monkeypatch.setattr(hp.mmap, "mmap", Refusing)
    m = model()
    ptr = m[0].weight.data_ptr()
    assert hp.move_to_huge_pages(m) == 0 and m[0].weight.data_ptr() == ptr


@needs_thp
def test_views_of_a_shared_storage_stay_shared():
    """Two parameters viewing one storage (a fused weight split in two) are left alone:
    moving either would silently end the sharing."""
    fused = torch.randn(2048, 512)
    m = nn.Module()
    m.a = nn.Parameter(fused[:1024])
    m.b = nn.Parameter(fused[1024:])
    m.own = nn.Parameter(torch.randn(1024, 512))
    assert hp.move_to_huge_pages(m) == 1024 * 512 * 4  # `own` only
    assert m.a.data_ptr() == fused.data_ptr()
    with torch.no_grad():
        fused.add_(1)
    assert torch.equal(m.b, fused[1024:])


@needs_thp
def test_copy_to_huge_pages_returns_aligned_equal_copies_in_one_mapping():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(700, 513, generator=g), torch.randint(-9, 9, (3, 5), dtype=torch.int8),
               torch.randn(1024, 512, generator=g)]  # fmt: skip
    copies = hp.copy_to_huge_pages(tensors)
    assert copies is not None and len(copies) == 3
    for t, c in zip(tensors, copies):
        assert torch.equal(t, c) and c.dtype == t.dtype and c.data_ptr() != t.data_ptr()
        assert c.data_ptr() % 64 == 0 and c.is_contiguous()
        start, end = c._lmforge_huge_page
        assert start <= c.data_ptr() < end
    assert len({c._lmforge_huge_page for c in copies}) == 1  # one mapping
    assert hp.copy_to_huge_pages([torch.zeros(8)]) is None  # smaller than a huge page
    assert hp.copy_to_huge_pages([]) is None


def test_copy_to_huge_pages_turned_off(monkeypatch):
    monkeypatch.setenv("LMFORGE_HUGE_PAGES", "0")
    assert hp.copy_to_huge_pages([torch.zeros(1 << 20)]) is None


@needs_thp
def test_zeros_in_huge_pages_are_zero_aligned_and_apart():
    ts = hp.zeros_in_huge_pages(3, (3000, 4, 64), torch.float16)  # 4.6 MB
    assert ts is not None and len(ts) == 3
    for t in ts:
        assert t.shape == (3000, 4, 64) and t.dtype == torch.float16 and t.is_contiguous()
        assert t.data_ptr() % 64 == 0 and not t.any()
    assert ts[0].data_ptr() % hp.HUGE_PAGE == 0  # the first starts on a huge page
    ts[1].fill_(1.5)  # each on its own stretch: writing one leaves the others zero
    assert not ts[0].any() and not ts[2].any() and (ts[1] == 1.5).all()
    assert len({t._lmforge_huge_page for t in ts}) == 1
    assert hp.zeros_in_huge_pages(2, (8, 8), torch.float32) is None  # below one huge page
    assert hp.zeros_in_huge_pages(0, (1 << 20,), torch.float32) is None


def test_zeros_in_huge_pages_turned_off(monkeypatch):
    monkeypatch.setenv("LMFORGE_HUGE_PAGES", "0")
    assert hp.zeros_in_huge_pages(4, (1 << 20,), torch.float32) is None


def test_the_engine_keeps_its_kv_pool_in_huge_pages_unless_told_not_to():
    """The paged KV pool (every layer's K and V) lives in one huge-page mapping on a CPU;
    ``huge_pages=False`` (or no THP here) leaves it to torch's allocator."""
    from lmforge.infer.cache import PagedKVCache

    cache = PagedKVCache(2, 64, 16, 4, 64, dtype=torch.float16, spare_blocks=1)
    marks = {getattr(t, "_lmforge_huge_page", None) for t in (*cache.keys, *cache.values)}
    assert len(cache.keys) == len(cache.values) == 2
    assert (marks != {None} and len(marks) == 1) == hp.huge_pages_supported()
    assert not cache.keys[1][64 * 16 :].any()  # the spare block is zero
    plain = PagedKVCache(2, 64, 16, 4, 64, huge_pages=False)
    assert all(not hasattr(t, "_lmforge_huge_page") for t in (*plain.keys, *plain.values))
    mla = PagedKVCache(3, 64, 16, 1, 128, key_only=True)
    assert len(mla.keys) == 3 and mla.values == []
