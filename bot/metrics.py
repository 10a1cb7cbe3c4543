"""Prometheus instruments, one registry per running bot (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.answers = Counter("vision_bot_answers", "Answers by outcome and error kind",
                               ["outcome", "error_kind"], registry=self.registry)
        self.first_text_seconds = Histogram("vision_bot_first_text_seconds",
                                            "Question received to first visible text",
                                            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.final_seconds = Histogram("vision_bot_final_answer_seconds", "Question received to final answer sent",
                                       buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("vision_bot_tokens", "Provider tokens by kind", ["kind"], registry=self.registry)
        self.telegram_429 = Counter("vision_bot_telegram_flood_waits",
                                    "Telegram 'Too Many Requests' replies", registry=self.registry)
        self.active_streams = Gauge("vision_bot_active_streams", "Answers being streamed now",
                                    registry=self.registry)
        self.refused = Counter("vision_bot_refused_requests", "Requests refused before the provider",
                               ["reason"], registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
