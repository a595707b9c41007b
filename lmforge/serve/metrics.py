"""``GET /metrics``: the server's state in the Prometheus text format (prometheus-client).

    lmforge_requests_running            requests in the engine's running batch
    lmforge_requests_waiting            requests queued for a free slot / KV blocks
    lmforge_generation_tokens_per_second  generated tokens per second, last 10 s
    lmforge_generation_tokens_total     tokens generated and delivered
    lmforge_prompt_tokens_total         prompt tokens of the requests admitted
    lmforge_time_to_first_token_seconds histogram: request arrival → first generated token
    lmforge_kv_cache_usage_ratio        KV blocks held by live sequences / all blocks
    lmforge_prefix_cache_hit_rate       prompt tokens found in the prefix cache / prompt tokens
    lmforge_preemptions_total           sequences preempted for lack of KV blocks

Gauges are read at scrape time from the snapshot the engine thread publishes after each step
(`AsyncEngine.stats`), so a scrape never touches the engine itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["TTFT_BUCKETS", "ServerMetrics"]

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _EngineCollector:
    """Gauges and counters computed from the engine's latest stats at each scrape."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = dict(self.engine.stats)
        blocks = stats.get("num_blocks", 0)
        used = blocks - stats.get("num_free_blocks", blocks)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"lmforge_{name}", doc, value=value)

        yield gauge(
            "requests_running", "requests in the running batch", stats.get("num_running", 0)
        )
        yield gauge(
            "requests_waiting", "requests waiting to be scheduled", stats.get("num_waiting", 0)
        )
        yield gauge(
            "generation_tokens_per_second",
            "generated tokens per second over the last 10 s",
            self.engine.tokens_per_second(),
        )
        yield gauge(
            "kv_cache_usage_ratio", "KV-cache blocks in use / all blocks", used / max(1, blocks)
        )
        yield gauge(
            "prefix_cache_hit_rate",
            "prompt tokens served from the prefix cache / prompt tokens",
            stats.get("prefix_cache_hit_rate", 0.0),
        )
        yield CounterMetricFamily(
            "lmforge_generation_tokens",
            "tokens generated and delivered",
            value=self.engine.num_generated_tokens,
        )
        yield CounterMetricFamily(
            "lmforge_preemptions",
            "sequences preempted for lack of KV blocks",
            value=stats.get("num_preemptions", 0),
        )


class ServerMetrics:
    """One registry per app (several apps in one process do not share counters)."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        self.ttft = Histogram(
            "lmforge_time_to_first_token_seconds",
            "request arrival to its first generated token",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "lmforge_prompt_tokens", "prompt tokens of admitted requests", registry=self.registry
        )

    def first_token(self, seconds: float, prompt_tokens: int) -> None:
        """A request produced its first token ``seconds`` after it arrived."""
        self.ttft.observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
