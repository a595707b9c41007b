"""The OpenAI-compatible server, end to end: a real `lmforge serve` process driven by the
official `openai` client (and raw HTTP for malformed requests)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import jsonschema
import openai
import pytest

API_KEY = "test-key"
MODEL = "tiny-chat"
MAX_TOKENS_LIMIT = 200
MAX_CHOICES = 64  # n × prompts per request (the default is 16)
PROMPTS = ["hi", "Tell me a story.", "What is 2 + 3?", "Name three colours.",
           "abc", "The cat sat on", "Count to five.", "Why is the sky blue?"]  # fmt: skip


@pytest.fixture(scope="module")
def server(model_dir, start_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("server-log") / "serve.log"
    flags = ["--api-key", API_KEY, "--max-tokens-limit", str(MAX_TOKENS_LIMIT)]
    flags += ["--max-request-bytes", "100000", "--max-choices", str(MAX_CHOICES)]
    with start_server(model_dir, log, *flags) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def greedy_chat(client, text: str, max_tokens: int = 12, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=user(text), max_tokens=max_tokens, temperature=0, **kw
    )


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_chat_plain(client):
    r = greedy_chat(client, "hi", max_tokens=10)
    assert r.object == "chat.completion" and r.model == MODEL
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens <= 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert greedy_chat(client, "hi", max_tokens=10).choices[0].message.content == (
        choice.message.content
    )  # greedy is deterministic
    outs = {greedy_chat(client, p).choices[0].message.content for p in PROMPTS[:4]}
    assert len(outs) > 1, "the tiny model should answer different prompts differently"


def test_completions_text_and_token_prompts(client, model_dir):
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    kw = dict(model=MODEL, max_tokens=6, temperature=0)
    by_text = client.completions.create(prompt="The cat sat on", **kw)
    ids = [tok.bos_token_id, *tok.encode("The cat sat on")]
    by_ids = client.completions.create(prompt=ids, **kw)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.usage.prompt_tokens == len(ids)
    two = client.completions.create(prompt=["abc", "The cat sat on"], **kw)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[1].text == by_text.choices[0].text
    echo = client.completions.create(prompt="The cat sat on", echo=True, **kw)
    assert echo.choices[0].text == tok.decode(ids) + by_text.choices[0].text


def test_chat_streaming_matches_non_streaming(client):
    full = greedy_chat(client, "Tell me a story.", max_tokens=16)
    stream = client.chat.completions.create(
        model=MODEL, messages=user("Tell me a story."), max_tokens=16, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        full.usage.completion_tokens
    )


def test_completions_streaming(client):
    kw = dict(model=MODEL, prompt="Count to five.", max_tokens=12, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason is not None


SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "size": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["colour", "ok", "size"],
}


def test_json_schema_output_validates(client):
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True},
    }
    r = client.chat.completions.create(
        model=MODEL, messages=user("Describe a thing as JSON."), max_tokens=60, n=4, seed=1,
        response_format=fmt,
    )  # fmt: skip
    assert len(r.choices) == 4
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    anything = client.chat.completions.create(
        model=MODEL, messages=user("JSON please"), max_tokens=60, seed=3,
        response_format={"type": "json_object"},
    )  # fmt: skip
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a prefix of an object
        assert anything.choices[0].message.content.startswith("{")


def test_logprobs(client):
    r = greedy_chat(client, "hi", max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert t.logprob == pytest.approx(tops[0])  # greedy picks the most likely token
    c = client.completions.create(
        model=MODEL, prompt="abc", max_tokens=4, temperature=0, logprobs=2
    )
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert lp.text_offset[0] == 0 and all(len(d) == 2 for d in lp.top_logprobs)


def test_n_seed_and_stop(client):
    kw = dict(model=MODEL, messages=user("Tell me a story."), max_tokens=12, temperature=1.0)
    a = client.chat.completions.create(n=3, seed=7, **kw)
    b = client.chat.completions.create(n=3, seed=7, **kw)
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]  # reproducible
    assert len(set(texts)) > 1  # the choices differ
    full = greedy_chat(client, "Why is the sky blue?", max_tokens=16).choices[0].message.content
    stop = full[3:5]
    assert stop.strip(), full
    cut = greedy_chat(client, "Why is the sky blue?", max_tokens=16, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[: full.index(stop)]


def test_32_concurrent_streams(server):
    expected = {}
    sync = openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)
    for p in PROMPTS:
        expected[p] = greedy_chat(sync, p, max_tokens=16).choices[0].message.content

    async def one(client, prompt):
        stream = await client.chat.completions.create(
            model=MODEL, messages=user(prompt), max_tokens=16, temperature=0, stream=True
        )
        parts, reasons = [], []
        async for chunk in stream:
            for c in chunk.choices:
                parts.append(c.delta.content or "")
                reasons += [c.finish_reason] if c.finish_reason else []
        return "".join(parts), reasons

    async def main():
        client = openai.AsyncOpenAI(
            base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120
        )
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(32)]
        return prompts, await asyncio.gather(*(one(client, p) for p in prompts))

    prompts, results = asyncio.run(main())
    for prompt, (text, reasons) in zip(prompts, results):
        assert text == expected[prompt], prompt
        assert len(reasons) == 1


# ---------------------------------------------------------------------- bad requests
def expect_error(status: int, call, param=None, code=None):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    err = info.value
    assert err.status_code == status, err
    body = err.body  # the client unwraps {"error": {...}}
    assert set(body) == {"message", "type", "param", "code"}, body
    assert body["param"] == param and (code is None or body["code"] == code), body
    return body


def test_bad_requests_get_openai_errors(client, server):
    chat = client.chat.completions.create
    expect_error(404, lambda: chat(model="gpt-9", messages=user("x")), "model", "model_not_found")
    expect_error(400, lambda: chat(model=MODEL, messages=user("x"), max_tokens=-3), "max_tokens")
    big = MAX_TOKENS_LIMIT + 1
    expect_error(400, lambda: chat(model=MODEL, messages=user("x"), max_tokens=big), "max_tokens")
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
    expect_error(
        400, lambda: chat(model=MODEL, messages=user("x"), response_format=bad_schema),
        "response_format",
    )  # fmt: skip
    long = user("word " * 400)
    expect_error(
        400, lambda: chat(model=MODEL, messages=long), "messages", "context_length_exceeded"
    )
    too_long = client.completions.create
    expect_error(
        400, lambda: too_long(model=MODEL, prompt=list(range(5, 250)), max_tokens=50),
        "max_tokens", "context_length_exceeded",
    )  # fmt: skip
    expect_error(400, lambda: chat(model=MODEL, messages=user("x"), temperature=5), "temperature")
    expect_error(400, lambda: chat(model=MODEL, messages=[]), "messages")
    expect_error(400, lambda: chat(model=MODEL, messages=user("x"), n=MAX_CHOICES + 1), "n")
    wrong = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    body = expect_error(401, lambda: wrong.models.list(), None, "invalid_api_key")
    assert "API key" in body["message"]
    # The server is still fine afterwards.
    assert greedy_chat(client, "hi", max_tokens=2).choices[0].finish_reason == "length"


def test_malformed_http_gets_openai_errors(server, http_json):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    url = server + "/v1/chat/completions"
    cases = [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (json.dumps({"model": MODEL}).encode(), 400),  # no messages
        (json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400),
        (b"x" * 100_001, 413),
    ]
    for body, status in cases:
        got, payload = http_json("POST", url, body, auth)
        assert got == status, (body[:40], payload)
        assert set(payload["error"]) == {"message", "type", "param", "code"}
    got, payload = http_json("GET", server + "/v1/nothing", None, auth)
    assert got == 404 and payload["error"]["message"]
    got, payload = http_json("GET", url, None, auth)
    assert got == 405 and payload["error"]["code"] == "method_not_allowed"
    got, payload = http_json("GET", server + "/v1/models")  # no key at all
    assert got == 401 and payload["error"]["code"] == "invalid_api_key"


def _wait_idle(server, http_json, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, health = http_json("GET", server + "/health")
        if health["running_requests"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_client_disconnect_aborts_generation(server, http_json):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    host, port = server.removeprefix("http://").split(":")
    for stream in (True, False):
        # 64 sampled choices of 200 tokens: seconds of work, far longer than the 0.3 s wait
        # (16 choices took < 0.3 s on a quiet machine once decode attention got faster).
        body = {"model": MODEL, "messages": user("go on"), "max_tokens": MAX_TOKENS_LIMIT,
                "ignore_eos": True, "n": MAX_CHOICES, "stream": stream}  # fmt: skip
        before = _wait_idle(server, http_json)["generated_tokens"]
        conn = http.client.HTTPConnection(host, int(port), timeout=0.3)
        conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        if stream:
            response = conn.getresponse()
            assert response.status == 200 and response.readline().startswith(b"data: ")
        else:
            with pytest.raises(TimeoutError):
                conn.getresponse()
        conn.close()
        after = _wait_idle(server, http_json)
        assert after["running_requests"] == 0
        generated = after["generated_tokens"] - before
        # stopped early: how early depends on the machine's speed (a quiet CI box generates
        # about half before the non-streamed disconnect is noticed), so only "not all of it"
        assert generated < MAX_CHOICES * MAX_TOKENS_LIMIT, (stream, generated)


def test_lora_adapters_are_served_by_model_name(lora_server, lora_model_dir, http_json):
    """``--lora alpha=… beta=…``: each name is a model; its answers are that adapter's (the
    adapter merged into the base and served alone), even with the others in the batch."""
    from lmforge.infer.params import SamplingParams
    from lmforge.serve.loading import load_engine

    folder, adapters = lora_model_dir
    status, listed = http_json("GET", lora_server + "/v1/models")
    assert [m["id"] for m in listed["data"]] == ["tiny-long", "alpha", "beta"]

    async def ask_all() -> dict[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=lora_server + "/v1", api_key="x", max_retries=0)
        kw = dict(prompt=["The cat sat on", "abc"], max_tokens=8, temperature=0)
        outs = await asyncio.gather(
            *(client.completions.create(model=m, **kw) for m in ("tiny-long", "alpha", "beta"))
        )
        return {
            m: [c.text for c in o.choices] for m, o in zip(("tiny-long", "alpha", "beta"), outs)
        }

    got = asyncio.run(ask_all())
    chat = {"model": "beta", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status, out = http_json("POST", lora_server + "/v1/chat/completions", chat)
    assert status == 200 and out["model"] == "beta"
    assert len({tuple(v) for v in got.values()}) == 3, got
    params = SamplingParams(max_tokens=8, temperature=0)
    for name, adapter in [("tiny-long", None), *adapters.items()]:
        engine, tok, _, _ = load_engine(folder, adapter=adapter, device="cpu")
        prompts = [tok.encode(p, add_special_tokens=True) for p in ("The cat sat on", "abc")]
        assert [o.text for o in engine.generate(prompts, params)] == got[name], name
    status, err = http_json("POST", lora_server + "/v1/completions",
                            {"model": "gamma", "prompt": "x"})  # fmt: skip
    assert status == 404 and "`alpha`" in err["error"]["message"]


def test_chat_template_and_tokenizer_run_off_the_event_loop(model_dir):
    """A prompt that is slow to render / tokenize (here: a tokenizer that takes 1.5 s) must
    not hold up ``/health`` or other requests: the handler awaits it in a worker thread."""
    import httpx

    from lmforge.serve import AsyncEngine, ServerLimits, create_app
    from lmforge.serve.loading import load_engine

    engine, tok, _, _ = load_engine(model_dir, device="cpu", max_num_seqs=2)

    class SlowTokenizer:
        def __getattr__(self, name):
            return getattr(tok, name)

        def apply_chat_template(self, *args, **kwargs):
            time.sleep(1.5)
            return tok.apply_chat_template(*args, **kwargs)

    async def scenario() -> None:
        front = AsyncEngine(engine)
        app = create_app(front, SlowTokenizer(), MODEL, ServerLimits(256, 16))
        front.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                body = {"model": MODEL, "messages": user("hi"), "max_tokens": 2}
                slow = asyncio.create_task(c.post("/v1/chat/completions", json=body))
                await asyncio.sleep(0.2)
                t0 = time.perf_counter()
                health = await c.get("/health")
                waited = time.perf_counter() - t0
                assert health.status_code == 200 and waited < 0.5, waited
                assert not slow.done()
                assert (await slow).status_code == 200
        finally:
            front.shutdown()

    asyncio.run(scenario())


def test_chat_completion_from_a_deepseek_folder(model_dir, tmp_path):
    """A deepseek-tiny checkpoint (MLA + MoE, the chat tokenizer) is served: the greedy
    reply is the model's own greedy continuation of the templated prompt (full forward, no
    cache), decoded."""
    import httpx
    import torch

    from lmforge.models.hf import save_model
    from lmforge.models.presets import preset_config
    from lmforge.models.transformer import CausalLM
    from lmforge.serve import AsyncEngine, ServerLimits, create_app
    from lmforge.serve.loading import load_engine
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CausalLM(preset_config("deepseek-tiny", vocab_size=tok.vocab_size, **ids))
        with torch.no_grad():  # sharp, prompt-dependent logits
            for name, p in model.named_parameters():
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    folder = tmp_path / "tiny-deepseek"
    save_model(model, folder, tokenizer=tok)
    engine, tok, _, _ = load_engine(folder, device="cpu", max_num_seqs=4)
    assert engine.cache.key_only  # the latent alone is cached

    ref = tok.encode(tok.apply_chat_template(user("hi"), add_generation_prompt=True))
    prompt_len = len(ref)
    with torch.no_grad():
        while len(ref) < prompt_len + 8:
            ref.append(int(model(torch.tensor([ref])).logits[0, -1].argmax()))
            if ref[-1] == tok.eos_token_id:
                ref.pop()
                break
    want = tok.decode(ref[prompt_len:], skip_special_tokens=True)
    assert want.strip()

    async def scenario() -> dict:
        front = AsyncEngine(engine)
        app = create_app(front, tok, "tiny-deepseek", ServerLimits(256, 16))
        front.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                body = {"model": "tiny-deepseek", "messages": user("hi"), "max_tokens": 8,
                        "temperature": 0}  # fmt: skip
                r = await c.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                return r.json()
        finally:
            front.shutdown()

    reply = asyncio.run(scenario())
    assert reply["model"] == "tiny-deepseek"
    assert reply["usage"]["completion_tokens"] == len(ref) - prompt_len
    assert reply["choices"][0]["message"]["content"] == want
