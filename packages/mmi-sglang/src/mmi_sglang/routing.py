"""Once per extend batch: which requests run MMInference sparse prefill and which stay dense, and why.

Pure Python over SGLang's per-request lists (no sglang import), so it is tested on its own and reused by the backend's
``init_forward_metadata``. A request's new tokens are rows ``[q_start, q_start + n_q)`` of the batch's q/k/v; its
keys are the first ``prefix + n_q`` entries of its ``req_to_token`` row (the cached prefix lives in the KV pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmi_core import LayoutError, ModalityLayout
from mmi_sglang.batch_layout import request_layout, visual_tokens
from mmi_sglang.config import MMIServeConfig

__all__ = ["SPARSE", "BatchRoutes", "RequestRoute", "route_batch"]

#: the route of a request that runs sparse; every other value of `RequestRoute.reason` names a dense fallback
SPARSE = "sparse"
#: dense reasons, in the order they are checked (documented in the README table)
DENSE_REASONS = (
    "disabled",  # MMI_ENABLED=0
    "no_sparse_impl",  # CUDA without mmi-kernels' wrapper and MMI_SPARSE_IMPL=auto
    "text_only",  # no image/video token in prefix + chunk
    "short_chunk",  # fewer than min_chunk_tokens new tokens (decode-like extends, mixed-mode decodes)
    "short_sequence",  # prefix + chunk shorter than min_seq_len
    "few_visual_tokens",  # fewer than min_visual_tokens image/video tokens
    "layout_error",  # mm_inputs that do not describe a consistent layout (message logged once)
)


@dataclass(frozen=True)
class RequestRoute:
    """One request of an extend batch.

    index: position in the batch; q_start/n_q: its rows in q/k/v; prefix: cached tokens before them;
    layout: over ``prefix + n_q`` tokens (None when it could not be built or there is no visual token);
    reason: `SPARSE` or a dense reason from `DENSE_REASONS`; error: the `LayoutError` text for ``layout_error``.
    """

    index: int
    q_start: int
    n_q: int
    prefix: int
    layout: ModalityLayout | None
    reason: str
    error: str | None = None

    @property
    def sparse(self) -> bool:
        return self.reason == SPARSE

    @property
    def n_k(self) -> int:
        return self.prefix + self.n_q


@dataclass(frozen=True)
class BatchRoutes:
    """Routes of every request of one extend batch, in batch order."""

    requests: tuple[RequestRoute, ...]

    @property
    def sparse(self) -> tuple[RequestRoute, ...]:
        return tuple(r for r in self.requests if r.sparse)

    @property
    def any_sparse(self) -> bool:
        return any(r.sparse for r in self.requests)

    def counts(self) -> dict[str, int]:
        """requests per reason (``sparse`` included)."""
        out: dict[str, int] = {}
        for r in self.requests:
            out[r.reason] = out.get(r.reason, 0) + 1
        return out


def _route(cfg: MMIServeConfig, layout: ModalityLayout, n_q: int) -> str:
    if visual_tokens(layout) == 0:
        return "text_only"
    if n_q < cfg.min_chunk_tokens:
        return "short_chunk"
    if layout.num_tokens < cfg.min_seq_len:
        return "short_sequence"
    if visual_tokens(layout) < cfg.min_visual_tokens:
        return "few_visual_tokens"
    return SPARSE


def route_batch(
    cfg: MMIServeConfig,
    prefix_lens: Sequence[int],
    extend_lens: Sequence[int],
    mm_inputs: Sequence[Any] | None,
    merge: int | None,
    sparse_available: bool = True,
) -> BatchRoutes:
    """Route every request of an extend batch (see `DENSE_REASONS` for the order of the checks).

    prefix_lens/extend_lens: SGLang's ``extend_prefix_lens_cpu`` / ``extend_seq_lens_cpu``; mm_inputs: the batch's
    ``mm_inputs`` (None or a list with None for text-only requests); merge: vision spatial merge size.
    """
    if len(prefix_lens) != len(extend_lens):
        raise ValueError(f"{len(prefix_lens)} prefix lengths for {len(extend_lens)} extend lengths")
    if mm_inputs is not None and len(mm_inputs) != len(extend_lens):
        raise ValueError(f"{len(mm_inputs)} mm_inputs for a batch of {len(extend_lens)} requests")
    routes, q_start = [], 0
    for i, (p, n) in enumerate(zip(prefix_lens, extend_lens, strict=True)):
        p, n = int(p), int(n)
        mm = mm_inputs[i] if mm_inputs is not None else None
        layout, error = None, None
        if not cfg.enabled:
            reason = "disabled"
        elif mm is None or not getattr(mm, "mm_items", None):
            reason = "text_only"
        else:
            try:
                layout = request_layout(mm, p + n, merge)
                reason = _route(cfg, layout, n)
            except LayoutError as e:
                reason, error = "layout_error", str(e)
            if reason == SPARSE and not sparse_available:
                reason = "no_sparse_impl"
        routes.append(RequestRoute(i, q_start, n, p, layout, reason, error))
        q_start += n
    return BatchRoutes(tuple(routes))
