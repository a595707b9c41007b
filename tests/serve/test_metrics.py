"""``/metrics``: parsed with prometheus-client's own text parser, values checked against what
the requests did."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels or sample.labels.get("le") == "+Inf"
    }


def test_metrics_parse_and_count(lora_server, http_json):
    before = scrape(lora_server)
    for name in ("requests_running", "requests_waiting", "generation_tokens_per_second",
                 "kv_cache_usage_ratio", "prefix_cache_hit_rate"):  # fmt: skip
        assert "lmforge_" + name in before, name
    prompt = "The cat sat on the mat and looked at the dog for a long while. " * 3
    body = {"model": "tiny-long", "prompt": prompt, "max_tokens": 5, "ignore_eos": True,
            "temperature": 0}  # fmt: skip
    for _ in range(2):  # the second run finds the prompt's full blocks in the prefix cache
        status, out = http_json("POST", lora_server + "/v1/completions", body)
        assert status == 200, out
    after = scrape(lora_server)
    assert (
        after["lmforge_generation_tokens_total"] - before["lmforge_generation_tokens_total"] == 10
    )
    ttft = "lmforge_time_to_first_token_seconds"
    assert after[ttft + "_count"] - before.get(ttft + "_count", 0) == 2
    assert 0 < after[ttft + "_sum"] - before.get(ttft + "_sum", 0) < 60
    assert after["lmforge_prompt_tokens_total"] - before["lmforge_prompt_tokens_total"] == (
        2 * out["usage"]["prompt_tokens"]
    )
    assert after["lmforge_generation_tokens_per_second"] > 0
    assert after["lmforge_prefix_cache_hit_rate"] > 0
    # the engine's step that retires a finished request may land just after the response
    deadline = time.monotonic() + 10
    while after["lmforge_requests_running"] + after["lmforge_requests_waiting"] > 0:
        assert time.monotonic() < deadline, "requests still running 10 s after their answers"
        time.sleep(0.05)
        after = scrape(lora_server)
    assert after["lmforge_requests_running"] == 0 and after["lmforge_requests_waiting"] == 0
    assert 0 <= after["lmforge_kv_cache_usage_ratio"] <= 1
