"""`AsyncEngine`: many asyncio consumers over one engine thread, with aborts on early exit."""

from __future__ import annotations

import asyncio
import time

import pytest

from lmforge.infer.engine import Engine
from lmforge.infer.params import SamplingParams
from lmforge.serve.async_engine import AsyncEngine, GenerationError


@pytest.fixture(scope="module")
def loaded(model_dir):
    from lmforge.models.hf import load_model
    from lmforge.tokenizer import load_tokenizer

    return load_model(model_dir).eval(), load_tokenizer(model_dir)


@pytest.fixture
def engine(loaded):
    model, tok = loaded
    eng = AsyncEngine(Engine(model, tok))
    eng.start()
    yield eng
    eng.shutdown()


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def collect(eng, jobs):
    texts = [""] * len(jobs)
    finals = [None] * len(jobs)
    async for i, out in eng.generate(jobs):
        texts[i] += out.new_text
        finals[i] = out if out.finished else finals[i]
    return texts, finals


def test_concurrent_calls_match_the_engine_alone(engine, loaded):
    model, tok = loaded
    prompts = [tok.encode(t, add_special_tokens=True) for t in ("a b", "hello there", "1 + 2 =")]
    greedy = SamplingParams(max_tokens=10, temperature=0)
    sampled = [SamplingParams(max_tokens=8, seed=s) for s in range(3)]
    reference = Engine(model, tok).generate(prompts * 2, [greedy] * 3 + sampled)

    async def main():
        calls = [collect(engine, [(p, greedy)]) for p in prompts]
        calls.append(collect(engine, list(zip(prompts, sampled))))  # one call, three jobs
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    texts = [r[0][0] for r in results[:3]] + results[3][0]
    finals = [r[1][0] for r in results[:3]] + results[3][1]
    assert texts == [r.text for r in reference]  # streamed deltas add up to the final text
    assert [f.token_ids for f in finals] == [r.token_ids for r in reference]
    assert all(f.finished for f in finals)


def test_leaving_early_aborts(engine, loaded):
    _, tok = loaded
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)

    async def main():
        agen = engine.generate([(tok.encode("x"), params), (tok.encode("y"), params)])
        seen = 0
        async for _ in agen:
            seen += 1
            if seen == 3:
                break
        await agen.aclose()

    asyncio.run(main())
    wait_until(lambda: not engine.engine.has_unfinished())
    assert engine.engine.requests == {} and engine.engine.num_generated < 2 * 200


def test_cancelled_task_aborts(engine, loaded):
    _, tok = loaded
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)

    async def main():
        task = asyncio.ensure_future(collect(engine, [(tok.encode("z"), params)]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_until(lambda: not engine.engine.has_unfinished())
    assert engine.engine.requests == {}


def test_bad_request_raises_and_the_engine_lives_on(engine, loaded):
    _, tok = loaded

    async def main():
        with pytest.raises(ValueError, match="outside"):
            await collect(engine, [([10**6], SamplingParams())])
        return await collect(engine, [(tok.encode("ok"), SamplingParams(max_tokens=3))])

    texts, finals = asyncio.run(main())
    assert finals[0].finish_reason in ("stop", "length") and engine.is_running


class _FailingEngine:
    """An engine whose steps raise until ``healthy`` is set."""

    def __init__(self):
        self.live, self.healthy, self.aborted = set(), False, []

    def add_request(self, prompt, params, request_id):
        self.live.add(request_id)

    def abort(self, request_id):
        self.live.discard(request_id)
        self.aborted.append(request_id)

    def has_unfinished(self):
        return bool(self.live)

    def step(self):
        if not self.healthy:
            raise RuntimeError("boom")
        from lmforge.infer.request import RequestOutput

        rid = self.live.pop()
        return [RequestOutput(rid, [1], [2], [2], "x", "x", None, True, "length")]


def test_step_failure_fails_its_requests_only():
    fake = _FailingEngine()
    eng = AsyncEngine(fake)
    eng.start()
    try:

        async def main():
            with pytest.raises(GenerationError, match="boom"):
                await collect(eng, [([1], None), ([2], None)])
            fake.healthy = True
            return await collect(eng, [([1], None)])

        texts, _ = asyncio.run(main())
        assert texts == ["x"] and len(fake.aborted) == 2 and eng.is_running
    finally:
        eng.shutdown()
