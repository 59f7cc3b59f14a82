"""Counting what the backend did: sparse vs dense requests and tokens per reason, a periodic log line, optional
Prometheus counters (only when SGLang runs with ``--enable-metrics``), and per-batch timing when ``MMI_TIMING=1``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from mmi_sglang.routing import BatchRoutes

__all__ = ["RouteStats"]

logger = logging.getLogger("mmi_sglang")


class _Prometheus:
    """Two counters labelled by route reason; created lazily in the scheduler process (SGLang's multiprocess
    registry picks them up like its own)."""

    def __init__(self) -> None:
        from prometheus_client import Counter as PCounter

        self.requests = PCounter(
            "mmi_extend_requests", "Extend requests by mmi route (sparse or dense reason)", ["route"]
        )
        self.tokens = PCounter("mmi_extend_tokens", "Extend (query) tokens by mmi route", ["route"])

    def add(self, reason: str, requests: int, tokens: int) -> None:
        self.requests.labels(route=reason).inc(requests)
        self.tokens.labels(route=reason).inc(tokens)


_PROM: list[_Prometheus] = []  # one set of counters per process (several backends may exist, e.g. two-batch overlap)


def _prometheus() -> _Prometheus | None:
    if not _PROM:
        try:
            _PROM.append(_Prometheus())
        except Exception as e:  # metrics are best effort; the log line stays
            logger.warning("mmi: Prometheus counters unavailable (%s: %s)", type(e).__name__, e)
            return None
    return _PROM[0]


class RouteStats:
    """Accumulates `BatchRoutes` of every extend batch; logs the totals every ``log_interval_s`` seconds.

    ``requests`` / ``tokens``: Counter reason -> count since start (``sparse`` is the sparse route).
    """

    def __init__(self, log_interval_s: float, enable_metrics: bool = False) -> None:
        self.log_interval_s = log_interval_s
        self.requests: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.batches = 0
        self._last_log = 0.0
        self._seen_sparse = False
        self._errors_logged: set[str] = set()
        self._prom: _Prometheus | None = None
        if enable_metrics:
            self._prom = _prometheus()

    def add(self, routes: BatchRoutes) -> None:
        self.batches += 1
        for r in routes.requests:
            self.requests[r.reason] += 1
            self.tokens[r.reason] += r.n_q
            if self._prom is not None:
                self._prom.add(r.reason, 1, r.n_q)
            if r.error and r.error not in self._errors_logged and len(self._errors_logged) < 32:
                self._errors_logged.add(r.error)
                logger.warning("mmi: request routed dense (layout_error): %s", r.error)
        now = time.monotonic()
        first_sparse = routes.any_sparse and not self._seen_sparse
        self._seen_sparse = self._seen_sparse or routes.any_sparse
        if first_sparse or now - self._last_log >= self.log_interval_s:
            self._last_log = now
            logger.info("mmi: %s", self.summary())

    def summary(self) -> str:
        """One line: batches, requests and tokens per route."""
        parts = [f"{k}={self.requests[k]} req/{self.tokens[k]} tok" for k in sorted(self.requests)]
        return f"{self.batches} extend batches; " + ", ".join(parts)

    def log_timing(self, info: dict[str, Any]) -> None:
        logger.info("mmi timing: %s", " ".join(f"{k}={v}" for k, v in info.items()))
