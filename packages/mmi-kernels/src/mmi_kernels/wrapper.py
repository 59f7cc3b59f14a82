"""The flashinfer idiom for MMInference prefill: `SparsePrefillWrapper.plan(...)` once per forward batch,
`.run(q, k, v, layer)` once per layer; and `sparse_prefill(...)`, the one-shot functional form.

`plan` does everything that depends only on layouts and configs: which requests run sparse (the rest are dense,
with the reason counted), per-request layout tensors on the device, and the packing of queries and keys. `run`
estimates each sparse request's keep sets (`mmi_kernels.estimate`), builds one `SparseIndex` for all of them and
launches the sparse kernel once; dense heads ride in the same launch as full keep sets, dense requests go to PyTorch
SDPA (FlashAttention/cuDNN on a GPU).

Devices: on CUDA the Triton kernel runs; on a CPU the Triton kernel runs under ``TRITON_INTERPRET=1`` and otherwise
the index is executed by the PyTorch reference (`index_keep_mask` + softmax), small inputs only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmi_core import HeadConfigs, Modality, ModalityLayout
from mmi_kernels.dispatch import triton_runs
from mmi_kernels.estimate import estimate_layer_keeps, layer_block, layer_slots
from mmi_kernels.index import SparseIndex, index_from_keeps, index_keep_mask
from mmi_kernels.keep_planner import LayoutTensors
from mmi_kernels.sparse_attention import KernelConfig, sparse_attention

__all__ = ["PrefillPlan", "SparsePrefillWrapper", "sparse_prefill"]

DEFAULT_MIN_TOKENS = 4096
"""Requests with fewer keys than this run dense: below a few thousand tokens dense attention is already cheap and
estimation overhead would dominate."""


@dataclass(frozen=True)
class PrefillPlan:
    """What `SparsePrefillWrapper.plan` decided for one batch (host-side facts; tensors live in the wrapper)."""

    n_q: tuple[int, ...]
    n_k: tuple[int, ...]
    sparse: tuple[bool, ...]
    reasons: tuple[str, ...]  # "sparse" or why the request runs dense

    @property
    def prefix(self) -> tuple[int, ...]:
        return tuple(k - q for q, k in zip(self.n_q, self.n_k, strict=True))


class SparsePrefillWrapper:
    """Batched MMInference prefill for one model (one `HeadConfigs`, already sliced for tensor parallelism).

    Usage::

        w = SparsePrefillWrapper(head_configs)
        w.plan(layouts, q_lens=...)                # once per batch
        for layer in ...:
            o = w.run(q, k, v, layer)              # q [TQ, Hq, D], k/v [TK, Hkv, D] packed per request
            # or, keys in a KV pool: w.run(q, None, None, layer, k_cache=..., v_cache=...) with plan(page_table=...)

    ``counts`` accumulates, per reason, how many (request, layer) runs took which path, and the dense heads.
    """

    def __init__(
        self,
        head_configs: HeadConfigs,
        *,
        device: torch.device | str | None = None,
        min_tokens: int = DEFAULT_MIN_TOKENS,
        sparse_text_only: bool = False,
        kernel_config: KernelConfig | None = None,
    ) -> None:
        self.head_configs = head_configs
        self.device = torch.device(device) if device is not None else None
        self.min_tokens = min_tokens
        self.sparse_text_only = sparse_text_only
        self.kernel_config = kernel_config
        self.counts: Counter[str] = Counter()
        self._plan: PrefillPlan | None = None
        self._blocks: dict[int, int | None] = {}  # layer -> block size (None: every head dense), from the configs

    # -- per batch ----------------------------------------------------------------------------------------------
    def plan(
        self,
        layouts: Sequence[ModalityLayout],
        *,
        q_lens: Sequence[int] | None = None,
        page_table: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> PrefillPlan:
        """Plan a batch: ``layouts[r]`` covers request r's whole sequence (cached prefix included), ``q_lens[r]`` its
        new tokens (default: all). ``page_table`` int32 [R, >= max n_k] maps request positions to KV-pool slots when
        keys are read from a pool. Raises ValueError for inconsistent lengths."""
        if not layouts:
            raise ValueError("plan needs at least one request")
        n_k = tuple(lay.num_tokens for lay in layouts)
        n_q = tuple(q_lens) if q_lens is not None else n_k
        if len(n_q) != len(n_k):
            raise ValueError(f"{len(n_q)} q_lens for {len(n_k)} layouts")
        for r, (a, b) in enumerate(zip(n_q, n_k, strict=True)):
            if not 0 <= a <= b:
                raise ValueError(f"request {r}: q_len {a} must be within [0, {b}] (its layout's tokens)")
        dev = torch.device(device) if device is not None else (self.device or torch.device("cpu"))
        if page_table is not None:
            if page_table.dim() != 2 or page_table.shape[0] != len(n_k) or page_table.shape[1] < max(n_k):
                raise ValueError(f"page_table must be [{len(n_k)}, >= {max(n_k)}], got {tuple(page_table.shape)}")
            page_table = page_table.to(dev, torch.int32).contiguous()
        reasons = []
        for lay, a, b in zip(layouts, n_q, n_k, strict=True):
            if a == 0:
                reasons.append("no_queries")
            elif b < self.min_tokens:
                reasons.append("short")
            elif not self.sparse_text_only and lay.modalities() == (Modality.TEXT,):
                reasons.append("text_only")
            else:
                reasons.append("sparse")
        self._plan = PrefillPlan(n_q, n_k, tuple(r == "sparse" for r in reasons), tuple(reasons))
        self._layouts = list(layouts)
        self._lt = {r: LayoutTensors(layouts[r], dev) for r, s in enumerate(self._plan.sparse) if s}
        self._page_table = page_table
        self._dev = dev
        self._cu_q = [0, *torch.tensor(n_q).cumsum(0).tolist()]
        self._cu_k = [0, *torch.tensor(n_k).cumsum(0).tolist()]
        return self._plan

    # -- per layer ----------------------------------------------------------------------------------------------
    def run(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        layer: int,
        *,
        k_cache: torch.Tensor | None = None,
        v_cache: torch.Tensor | None = None,
        scale: float | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MMInference attention of ``layer`` for the planned batch. ``q [TQ, Hq, D]`` packed per request; keys
        either ``k, v [TK, Hkv, D]`` packed per request (all keys, prefix included) or the pool ``k_cache, v_cache
        [slots, Hkv, D]`` read through the planned page table. Returns ``[TQ, Hq, D]`` (``out`` if given)."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("SparsePrefillWrapper.run before plan")
        hc = self.head_configs
        if not 0 <= layer < hc.num_layers:
            raise ValueError(f"layer {layer} is outside [0, {hc.num_layers})")
        paged = self._page_table is not None
        if paged and (k_cache is None or v_cache is None):
            raise ValueError("the plan has a page_table: pass k_cache and v_cache")
        if not paged and (k is None or v is None):
            raise ValueError("pass k and v (or plan with a page_table and pass k_cache, v_cache)")
        if q.dim() != 3 or q.shape[0] != self._cu_q[-1] or q.shape[1] != hc.num_q_heads:
            raise ValueError(f"q must be [{self._cu_q[-1]}, {hc.num_q_heads}, D], got {tuple(q.shape)}")
        kk = k_cache if paged else k
        assert kk is not None
        if kk.shape[1] != hc.num_kv_heads:
            raise ValueError(f"keys have {kk.shape[1]} heads, the head configs {hc.num_kv_heads}")
        if not paged and kk.shape[0] != self._cu_k[-1]:
            raise ValueError(f"k must hold {self._cu_k[-1]} keys (all requests, prefix included), got {kk.shape[0]}")
        scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else scale
        if layer not in self._blocks:
            self._blocks[layer] = layer_block(hc, layer)
        block = self._blocks[layer]
        if out is None and len(plan.reasons) == 1 and (block is None or not plan.sparse[0]):
            # one dense request (short, text-only, or an all-dense layer): the SDPA call's own output, no copy
            reason = plan.reasons[0] if plan.sparse[0] is False else "all_heads_dense"
            self.counts["dense:" + reason] += 1
            if plan.n_q[0] == 0:
                return torch.empty_like(q)
            return dense_causal_attention(q, self._keys(k, k_cache, 0), self._keys(v, v_cache, 0), scale)
        out = torch.empty_like(q) if out is None else out

        sparse = [r for r, s in enumerate(plan.sparse) if s]
        for r, reason in enumerate(plan.reasons):
            if reason != "sparse" or block is None:
                self.counts["dense:" + (reason if reason != "sparse" else "all_heads_dense")] += 1
                self._dense(q, k, v, k_cache, v_cache, r, scale, out)
        if block is None or not sparse:
            return out
        slots = layer_slots(hc, layer)
        keeps = []
        for r in sparse:
            qr = q[self._cu_q[r] : self._cu_q[r + 1]]
            kr = self._keys(k, k_cache, r)
            keeps.append(estimate_layer_keeps(qr, kr, self._lt[r], hc, layer, scale=scale))
        index = index_from_keeps(
            keeps, block=block, num_q_heads=hc.num_q_heads, num_kv_heads=hc.num_kv_heads, slot_heads=slots,
            device=q.device,
        )  # fmt: skip
        dense_heads = sum(c for f, c in slots if hc.layers[layer].heads[f].is_dense)
        self.counts["sparse"] += len(sparse)
        self.counts["dense_heads_in_sparse_requests"] += dense_heads * len(sparse)
        all_sparse = len(sparse) == len(plan.sparse)
        q_s = q if all_sparse else torch.cat([q[self._cu_q[r] : self._cu_q[r + 1]] for r in sparse])
        o_s = out if all_sparse else None  # the kernel writes every row: no copy of a whole-batch output
        if paged:
            pt = self._page_table if all_sparse else self._page_table[sparse]  # type: ignore[index]
            o_s = self._attend(q_s, None, None, index, scale, o_s, k_cache=k_cache, v_cache=v_cache, page_table=pt)
        else:
            assert k is not None and v is not None
            if all_sparse:
                k_s, v_s = k, v
            else:
                k_s = torch.cat([k[self._cu_k[r] : self._cu_k[r + 1]] for r in sparse])
                v_s = torch.cat([v[self._cu_k[r] : self._cu_k[r + 1]] for r in sparse])
            o_s = self._attend(q_s, k_s, v_s, index, scale, o_s)
        if not all_sparse:
            at = 0
            for r in sparse:
                n = plan.n_q[r]
                out[self._cu_q[r] : self._cu_q[r + 1]] = o_s[at : at + n]
                at += n
        return out

    # -- helpers ------------------------------------------------------------------------------------------------
    def _keys(self, k: torch.Tensor | None, k_cache: torch.Tensor | None, r: int) -> torch.Tensor:
        """Request r's keys [n_k, Hkv, D] for estimation (a gather of K only when they live in a pool)."""
        if self._page_table is None:
            assert k is not None
            return k[self._cu_k[r] : self._cu_k[r + 1]]
        assert k_cache is not None
        return k_cache[self._page_table[r, : self._plan.n_k[r]].long()]  # type: ignore[union-attr]

    def _dense(self, q, k, v, k_cache, v_cache, r: int, scale: float, out: torch.Tensor) -> None:
        plan = self._plan
        assert plan is not None
        if plan.n_q[r] == 0:
            return
        qr = q[self._cu_q[r] : self._cu_q[r + 1]]
        kr = self._keys(k, k_cache, r)
        vr = self._keys(v, v_cache, r)
        out[self._cu_q[r] : self._cu_q[r + 1]] = dense_causal_attention(qr, kr, vr, scale)

    def _attend(self, q, k, v, index: SparseIndex, scale: float, out: torch.Tensor | None, **paged) -> torch.Tensor:
        if triton_runs(q):
            return sparse_attention(q, k, v, index, scale=scale, out=out, config=self.kernel_config, **paged)
        o = index_attention_reference(q, k, v, index, scale, **paged)
        return o if out is None else out.copy_(o)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of queries that are the last ``n_q`` of ``n_k`` keys, through PyTorch SDPA (flash/cuDNN on
    a GPU). q [n_q, Hq, D], k/v [n_k, Hkv, D] -> [n_q, Hq, D]."""
    n_q, hq, _ = q.shape
    n_k, hkv, _ = k.shape
    g = hq // hkv
    qt = q.transpose(0, 1)[None]
    kt = k.transpose(0, 1).repeat_interleave(g, 0)[None] if g > 1 else k.transpose(0, 1)[None]
    vt = v.transpose(0, 1).repeat_interleave(g, 0)[None] if g > 1 else v.transpose(0, 1)[None]
    if n_q == n_k:
        o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale)
    else:  # bottom-right aligned causal mask: query t sits at position n_k - n_q + t
        from torch.nn.attention.bias import causal_lower_right

        o = torch.nn.functional.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=causal_lower_right(n_q, n_k), scale=scale
        )
    return o[0].transpose(0, 1)


def index_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    index: SparseIndex,
    scale: float,
    *,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch execution of an index (fp32, O(n_q·n_k) per request and slot): the CPU path without Triton."""
    out = torch.empty_like(q)
    g = index.num_q_heads // index.num_kv_heads
    for r in range(index.num_requests):
        q0, q1 = int(index.cu_seqlens_q[r]), int(index.cu_seqlens_q[r + 1])
        n_k = index.seqlens_k[r]
        if page_table is not None:
            assert k_cache is not None and v_cache is not None
            rows = page_table[r, :n_k].long()
            kr, vr = k_cache[rows], v_cache[rows]
        else:
            assert k is not None and v is not None
            k0 = int(index.cu_seqlens_k[r])
            kr, vr = k[k0 : k0 + n_k], v[k0 : k0 + n_k]
        for s in range(index.num_slots):
            rows = index.q_order[s, q0:q1][: int(index.q_rows[s, r])].long()  # the rows this slot computes
            mask = index_keep_mask(index, r, s, rows)
            first, count = int(index.slot_q_head[s]), int(index.slot_num_heads[s])
            for h in range(first, first + count):
                sc = (q[q0 + rows, h].float() @ kr[:, h // g].float().T) * scale
                p = torch.softmax(sc.masked_fill(~mask, float("-inf")), dim=-1)
                out[q0 + rows, h] = (p @ vr[:, h // g].float()).to(q.dtype)
    return out


def sparse_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: ModalityLayout,
    head_configs: HeadConfigs,
    layer: int,
    *,
    scale: float | None = None,
    min_tokens: int = 0,
) -> torch.Tensor:
    """One request, one layer, no engine: ``q [n_q, Hq, D]`` (the last n_q of the keys), ``k, v [n_k, Hkv, D]``,
    ``layout`` over the n_k tokens. Text-only layouts run sparse too (the head patterns decide). Returns
    ``[n_q, Hq, D]``."""
    w = SparsePrefillWrapper(head_configs, min_tokens=min_tokens, sparse_text_only=True)
    w.plan([layout], q_lens=[q.shape[0]], device=q.device)
    return w.run(q, k, v, layer, scale=scale)
