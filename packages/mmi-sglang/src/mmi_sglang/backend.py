"""`MMIAttnBackend`: SGLang attention backend running MMInference sparse prefill for long multimodal extends.

It wraps a stock dense backend (``MMI_INNER_BACKEND``; triton on CUDA, torch_native elsewhere) and delegates to it
decode, metadata, CUDA-graph hooks and every extend it does not handle, so both ``--attention-backend mmi`` and
``--prefill-attention-backend mmi --decode-attention-backend <stock>`` work. Per extend batch
(``init_forward_metadata``) it routes each request (`mmi_sglang.routing`); per layer (``forward_extend``) it writes the
new K/V into the pool, runs sparse attention for the sparse requests over prefix + chunk read back through
``req_to_token``, and dense attention for the others. A batch with no sparse request, a layer whose head configs are
all Dense, and layers it does not support (cross attention, logit cap, sliding window, extra kwargs such as sinks) go
to the inner backend unchanged.

This module imports sglang; it is imported only when SGLang builds the backend (see `mmi_sglang.plugin`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

from mmi_core import ConfigError, HeadConfigs
from mmi_sglang.batch_layout import spatial_merge_size
from mmi_sglang.config import MMIServeConfig, load_config, resolve_head_configs
from mmi_sglang.routing import BatchRoutes, route_batch
from mmi_sglang.sparse_compute import (
    KernelSparsePrefill,
    dense_request,
    kernels_available,
    reference_available,
    reference_sparse_request,
)
from mmi_sglang.stats import RouteStats

__all__ = ["MMIAttnBackend"]

logger = logging.getLogger("mmi_sglang")

_ROUTED_MODES = ("EXTEND", "MIXED")


def _tp(runner: Any) -> tuple[int, int]:
    ps = getattr(runner, "ps", None)
    rank = getattr(ps, "tp_rank", getattr(runner, "tp_rank", 0))
    size = getattr(ps, "tp_size", getattr(runner, "tp_size", 1))
    return int(rank or 0), int(size or 1)


def _plain_mha_pool(pool: Any) -> bool:
    """Only the plain per-token MHA pool is read back directly (SWA/unified/quantised pools translate slots)."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    return type(pool) is MHATokenToKVPool and not getattr(pool, "is_quantized_kv_cache", False)


class MMIAttnBackend(AttentionBackend):
    """The ``mmi`` attention backend (see the module docstring).

    Built by SGLang as ``MMIAttnBackend(model_runner)``; reads its settings from `mmi_sglang.config.load_config` and
    its head configs from ``MMI_HEAD_CONFIGS`` or the model family's default, sliced for this tensor-parallel rank.
    Raises `mmi_core.ConfigError` at construction for bad settings, missing/mismatched head configs, or an unknown
    inner backend.

    After each extend batch, ``last_routes`` holds that batch's `BatchRoutes`; ``stats`` the running counts.
    """

    def __init__(self, model_runner: Any, config: MMIServeConfig | None = None) -> None:
        super().__init__()
        self.cfg = config if config is not None else load_config()
        self.model_runner = model_runner
        self.device = str(getattr(model_runner, "device", "cpu"))
        self.inner_name = self.cfg.inner_backend or ("triton" if self.device.startswith("cuda") else "torch_native")
        if self.inner_name not in ATTENTION_BACKENDS or self.inner_name == "mmi":
            raise ConfigError(
                f"MMI_INNER_BACKEND={self.inner_name!r} is not a registered SGLang attention backend "
                f"(known: {sorted(k for k in ATTENTION_BACKENDS if k != 'mmi')})"
            )
        self.inner = ATTENTION_BACKENDS[self.inner_name](model_runner)
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.token_to_kv_pool = model_runner.token_to_kv_pool

        mc = getattr(model_runner, "model_config", None)
        if mc is None:
            raise ConfigError("the model runner has no model_config: cannot check head configs against the model")
        hf = getattr(mc, "hf_config", None)
        self.tp_rank, self.tp_size = _tp(model_runner)
        self.head_configs: HeadConfigs = resolve_head_configs(
            self.cfg,
            hf,
            int(mc.num_hidden_layers),
            int(mc.num_attention_heads),
            int(mc.get_total_num_kv_heads()),
            self.tp_rank,
            self.tp_size,
        )
        self.num_layers = self.head_configs.num_layers
        self.merge = spatial_merge_size(hf)
        self.impl, why = self._choose_impl()
        self.sparse_available = self.impl is not None and _plain_mha_pool(self.token_to_kv_pool)
        if self.impl is not None and not self.sparse_available:
            why = f"KV pool {type(self.token_to_kv_pool).__name__} is not a plain MHATokenToKVPool"
        self._kernel = (
            KernelSparsePrefill(self.head_configs, self.device)
            if self.sparse_available and self.impl == "kernels"
            else None
        )
        server_args = getattr(model_runner, "server_args", None)
        self.stats = RouteStats(self.cfg.log_interval_s, bool(getattr(server_args, "enable_metrics", False)))
        self.last_routes: BatchRoutes | None = None
        self._routes: BatchRoutes | None = None
        self._req_pool: list[int] = []
        self._layer_ok: dict[int, bool] = {}
        self._timing: dict[str, Any] | None = None
        logger.info(
            "mmi backend: inner=%s sparse_impl=%s%s tp=%d/%d heads/rank q=%d kv=%d layers=%d merge=%s thresholds "
            "seq>=%d visual>=%d chunk>=%d",
            self.inner_name,
            self.impl if self.sparse_available else "none",
            f" ({why})" if why else "",
            self.tp_rank,
            self.tp_size,
            self.head_configs.num_q_heads,
            self.head_configs.num_kv_heads,
            self.num_layers,
            self.merge,
            self.cfg.min_seq_len,
            self.cfg.min_visual_tokens,
            self.cfg.min_chunk_tokens,
        )
        if not self.sparse_available and self.cfg.enabled:
            logger.warning("mmi: no sparse implementation here (%s); long multimodal extends run dense", why)

    def _choose_impl(self) -> tuple[str | None, str]:
        want = self.cfg.sparse_impl
        on_cuda = self.device.startswith("cuda")
        if want == "kernels" or (want == "auto" and on_cuda):
            if kernels_available():
                return "kernels", ""
            if want == "kernels":
                raise ConfigError("MMI_SPARSE_IMPL=kernels but this mmi-kernels has no SparsePrefillWrapper")
            return None, "mmi_kernels.SparsePrefillWrapper not available"
        if reference_available():
            return "reference", ""
        if want == "reference":
            raise ConfigError("MMI_SPARSE_IMPL=reference but this mmi-core has no mmi_attention_reference")
        return None, "mmi_core.mmi_attention_reference not available"

    # -- metadata (once per batch) ------------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: Any) -> None:
        self.inner.init_forward_metadata(forward_batch)
        self._routes = self._plan(forward_batch)
        if self._routes is not None:
            self.last_routes = self._routes
            self.stats.add(self._routes)
            if self.cfg.timing:
                self._timing = {"t0": None, "events": [], "wall": []}

    def _plan(self, fb: Any) -> BatchRoutes | None:
        if getattr(fb.forward_mode, "name", "") not in _ROUTED_MODES or getattr(fb, "encoder_lens", None) is not None:
            return None
        prefix = fb.extend_prefix_lens_cpu
        ext = fb.extend_seq_lens_cpu
        if prefix is None or ext is None:
            prefix, ext = fb.extend_prefix_lens.tolist(), fb.extend_seq_lens.tolist()
        routes = route_batch(
            self.cfg, list(prefix), list(ext), fb.mm_inputs, self.merge, sparse_available=self.sparse_available
        )
        self._req_pool = fb.req_pool_indices.tolist() if routes.any_sparse else []
        if routes.any_sparse and self._kernel is not None:
            sparse = routes.sparse
            n_k = max(r.n_k for r in sparse)
            rows = torch.tensor([self._req_pool[r.index] for r in sparse], device=fb.req_pool_indices.device)
            page_table = self.req_to_token_pool.req_to_token[rows, :n_k].to(torch.int32)
            self._kernel.plan([r.layout for r in sparse], [r.n_q for r in sparse], page_table)
        return routes

    def init_forward_metadata_out_graph(self, forward_batch: Any, in_capture: bool = False) -> None:
        self._routes = None  # graph-captured batches (decode, verify) always take the inner backend
        self.inner.init_forward_metadata_out_graph(forward_batch, in_capture=in_capture)

    def init_forward_metadata_in_graph(self, forward_batch: Any) -> None:
        self.inner.init_forward_metadata_in_graph(forward_batch)

    # -- delegated hooks ----------------------------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        self.inner.init_cuda_graph_state(max_bs, max_num_tokens)

    def get_cuda_graph_seq_len_fill_value(self) -> Any:
        return self.inner.get_cuda_graph_seq_len_fill_value()

    def init_forward_metadata_for_breakable_cuda_graph_capture(self, forward_batch: Any) -> Any:
        self._routes = None
        return self.inner.init_forward_metadata_for_breakable_cuda_graph_capture(forward_batch)

    def prepare_forward_metadata_for_breakable_cuda_graph_replay(self, capture_metadata: Any, forward_batch: Any, **kw):
        self._routes = None
        return self.inner.prepare_forward_metadata_for_breakable_cuda_graph_replay(
            capture_metadata, forward_batch, **kw
        )

    def prepare_full_cuda_graph_chunked_prefix(self, forward_batch: Any, *, in_capture: bool) -> None:
        self.inner.prepare_full_cuda_graph_chunked_prefix(forward_batch, in_capture=in_capture)

    def on_after_cuda_graph_warmup(self) -> None:
        self.inner.on_after_cuda_graph_warmup()

    def update_verify_buffers_to_fill_after_draft(self, spec_info: Any, cuda_graph_bs: Any) -> None:
        self.inner.update_verify_buffers_to_fill_after_draft(spec_info, cuda_graph_bs)

    def get_indexer_metadata(self, layer_id: int, forward_batch: Any) -> Any:
        return self.inner.get_indexer_metadata(layer_id, forward_batch)

    def support_triton(self) -> bool:
        return self.inner.support_triton()

    @property
    def verify_mask(self) -> Any:
        return self.inner.verify_mask

    @property
    def supports_ragged_verify_graph(self) -> bool:  # type: ignore[override]
        return self.inner.supports_ragged_verify_graph

    @property
    def needs_cpu_seq_lens(self) -> bool:  # type: ignore[override]
        return self.inner.needs_cpu_seq_lens

    @property
    def use_captured_forward_metadata_for_breakable_cuda_graph(self) -> bool:  # type: ignore[override]
        return self.inner.use_captured_forward_metadata_for_breakable_cuda_graph

    @property
    def supports_full_cuda_graph_chunked_prefix(self) -> bool:  # type: ignore[override]
        return self.inner.supports_full_cuda_graph_chunked_prefix

    def __getattr__(self, name: str) -> Any:
        # Backend-specific attributes some callers read (forward_metadata, kv_indptr, ...) come from the inner one.
        if name.startswith("__") or name in ("inner", "cfg"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- forward ------------------------------------------------------------------------------------------------
    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        return self.inner.forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)

    def _layer_supported(self, layer: Any) -> bool:
        lid = layer.layer_id
        ok = self._layer_ok.get(lid)
        if ok is None:
            if not 0 <= lid < self.num_layers:
                raise ConfigError(f"layer {lid} is outside the head configs' {self.num_layers} layers")
            hc = self.head_configs
            if (layer.tp_q_head_num, layer.tp_k_head_num) != (hc.num_q_heads, hc.num_kv_heads):
                raise ConfigError(
                    f"layer {lid} has (q, kv) heads per rank {(layer.tp_q_head_num, layer.tp_k_head_num)}, the head "
                    f"configs for tp rank {self.tp_rank}/{self.tp_size} have {(hc.num_q_heads, hc.num_kv_heads)}"
                )
            unsupported = [
                name
                for name, bad in (
                    ("cross attention", getattr(layer, "is_cross_attention", False)),
                    ("logit cap", (getattr(layer, "logit_cap", 0) or 0) > 0),
                    ("sliding window", (getattr(layer, "sliding_window_size", -1) or -1) > -1),
                    ("qk/v head dims differ", layer.qk_head_dim != layer.v_head_dim),
                )
                if bad
            ]
            dense = all(h.is_dense for h in hc.layers[lid].heads)
            ok = not unsupported and not dense
            if unsupported:
                logger.warning(
                    "mmi: layer %d runs on %s (unsupported: %s)", lid, self.inner_name, ", ".join(unsupported)
                )
            self._layer_ok[lid] = ok
        return ok

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        routes = self._routes
        extra = any(x is not None for x in kwargs.values())
        if routes is None or not routes.any_sparse or extra or not self._layer_supported(layer):
            return self._timed(
                layer, lambda: self.inner.forward_extend(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
            )
        return self._timed(layer, lambda: self._forward_routed(q, k, v, layer, forward_batch, save_kv_cache, routes))

    def _forward_routed(self, q, k, v, layer, fb, save_kv_cache: bool, routes: BatchRoutes) -> torch.Tensor:
        hq, d = layer.tp_q_head_num, layer.qk_head_dim
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, fb.out_cache_loc, k, v)
        q3 = q.view(-1, hq, d)
        o = q.new_empty(q3.shape[0], hq * layer.v_head_dim)
        o3 = o.view(-1, hq, layer.v_head_dim)
        k_buf = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
        v_buf = self.token_to_kv_pool.get_value_buffer(layer.layer_id)
        r2t = self.req_to_token_pool.req_to_token
        sparse_rows = None
        if self._kernel is not None:
            sparse = routes.sparse
            sparse_rows = torch.cat([torch.arange(r.q_start, r.q_start + r.n_q) for r in sparse]).to(q.device)
            o3[sparse_rows] = self._kernel.run(q3[sparse_rows], layer.layer_id, k_buf, v_buf, layer.scaling).to(o.dtype)
        for r in routes.requests:
            if r.n_q == 0 or (r.sparse and sparse_rows is not None):
                continue
            locs = r2t[self._req_pool[r.index], : r.n_k].to(torch.int64)
            kk, vv = k_buf[locs].to(q.dtype), v_buf[locs].to(q.dtype)
            rows = slice(r.q_start, r.q_start + r.n_q)
            if r.sparse:
                out = reference_sparse_request(
                    q3[rows], kk, vv, r.layout, self.head_configs, layer.layer_id, layer.scaling
                )
            else:
                out = dense_request(q3[rows], kk, vv, layer.scaling)
            o3[rows] = out.to(o.dtype)
        return o

    # -- timing (MMI_TIMING=1) ----------------------------------------------------------------------------------
    def _timed(self, layer: Any, fn):
        t = self._timing
        if t is None:
            return fn()
        cuda = self.device.startswith("cuda")
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            t["events"].append((start, end))
        else:
            w0 = time.perf_counter()
            out = fn()
            t["wall"].append((w0, time.perf_counter()))
        if layer.layer_id == self.num_layers - 1:
            self._report_timing(cuda)
        return out

    def _report_timing(self, cuda: bool) -> None:
        t, self._timing = self._timing, None
        routes = self.last_routes
        if cuda:
            t["events"][-1][1].synchronize()
            attn = sum(s.elapsed_time(e) for s, e in t["events"])
            span = t["events"][0][0].elapsed_time(t["events"][-1][1])
        else:
            attn = sum(b - a for a, b in t["wall"]) * 1e3
            span = (t["wall"][-1][1] - t["wall"][0][0]) * 1e3
        counts = routes.counts() if routes is not None else {}
        self.stats.log_timing(
            {
                "tokens": sum(r.n_q for r in routes.requests) if routes else 0,
                "requests": len(routes.requests) if routes else 0,
                "routes": ",".join(f"{k}:{v}" for k, v in sorted(counts.items())),
                "layers": len(t["events"]) or len(t["wall"]),
                "attention_ms": f"{attn:.2f}",
                "first_to_last_layer_ms": f"{span:.2f}",
            }
        )
