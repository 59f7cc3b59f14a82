"""Online estimation of one layer on the GPU: (q, k, layout, HeadConfigs, layer) -> one `SlotKeep` per head slot.

It follows `mmi_core.layer.estimate_layer_selections` rule for rule (the specification; the tests compare the two
through the index for exact equality) and reuses mmi_core's scoring and ranking primitives, but never builds an
O(n_q·n_k) tensor: last-query statistics are accumulated over key chunks, and keep sets come from
`mmi_kernels.keep_planner`.

Head slots are fixed per layer from the configs alone (`layer_slots`), so that one index layout serves every
request of a batch: a KV head whose group executes together is one slot (a dense member makes it a dense slot) unless
the group mixes Grid heads with identity-order patterns, which cannot share a permutation, or holds a boundary head;
then each query head is a slot, as in mmi_core, and a boundary head is three (its parts: TEXT, IMAGE, VIDEO rows,
each in its own orders; a modality without rows in a request leaves its slot empty).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Dense,
    Grid,
    HeadConfigs,
    HeadSpec,
    Modality,
    PatternConfig,
    VerticalSlash,
    to_device,
)
from mmi_core.estimation import (
    estimate_block_sparse,
    estimate_grid,
    grid_key_scores,
    last_query_scores,
    stable_top,
    vertical_slash_scores,
)
from mmi_kernels.boundary_planner import boundary_keeps
from mmi_kernels.dispatch import triton_runs
from mmi_kernels.index import SlotKeep, pattern_capacity
from mmi_kernels.keep_planner import (
    LayoutTensors,
    ashape_keep,
    block_sparse_keep,
    dense_keep,
    grid_keeps,
    union_keeps,
    vertical_slash_keeps,
)
from mmi_kernels.last_query import last_query_stats_triton

__all__ = ["estimate_layer_keeps", "last_query_stats", "layer_block", "layer_slots"]

STATS_CHUNK = 32768
"""Keys per chunk of the last-query statistics. Up to this many keys the exact mmi_core functions are called (same
arithmetic, so selections match bit for bit); beyond it a two-pass chunked softmax bounds memory to
O(Hq · last_q · STATS_CHUNK)."""


def layer_block(head_configs: HeadConfigs, layer: int) -> int | None:
    """The layer's block size (one per layer, validated by HeadConfigs), or None when every head is dense."""
    blocks = {h.block for h in head_configs.layers[layer].heads} - {None}
    return blocks.pop() if blocks else None


def _is_boundary(spec: HeadSpec) -> bool:
    return spec.boundary in ("q", "2d")


def _is_dense(spec: HeadSpec) -> bool:
    """Dense head: a boundary head whose patterns are all dense, or any other head whose pattern is `Dense`."""
    return spec.is_dense if _is_boundary(spec) else isinstance(spec.pattern, Dense)


def layer_slots(head_configs: HeadConfigs, layer: int) -> list[tuple[int, int]]:
    """``(first_query_head, num_heads)`` of every head slot of ``layer``, in query-head order; a (non-dense)
    boundary head has three consecutive slots, one per query modality in `Modality` order."""
    lc = head_configs.layers[layer]
    g = head_configs.group_size
    slots: list[tuple[int, int]] = []
    for j, mode in enumerate(lc.gqa):
        specs = [lc.heads[h] for h in range(j * g, (j + 1) * g)]
        dense = any(_is_dense(s) for s in specs)
        # execution orders from the configs: Grid heads use grid orders, the rest identity; boundary heads run per
        # part in their own orders; a group executes together only when all its members share one kind (or one
        # member is dense)
        kinds = {"boundary" if _is_boundary(s) else "grid" if isinstance(s.pattern, Grid) else "id" for s in specs}
        if mode == "group" and (dense or (len(kinds) == 1 and "boundary" not in kinds)):
            slots.append((j * g, g))
        else:
            for h, s in zip(range(j * g, (j + 1) * g), specs, strict=True):
                slots += [(h, 1)] * (len(Modality) if _is_boundary(s) and not s.is_dense else 1)
    return slots


def last_query_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    last_q: int,
    *,
    scale: float | None = None,
    chunk: int = STATS_CHUNK,
    need_slash: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Statistics of the last-query softmax ``p [Hq, L, n_k]``: fp32 ``(vertical, slash, log_mean)``, each
    ``[Hq, n_k]``: column sums, diagonal sums (`vertical_slash_scores`; None unless ``need_slash``) and the per-key
    mean over rows of ``log(max(p, 1e-30))`` (`grid_key_scores`, the Grid fold's input).

    On CUDA (and on a CPU under ``TRITON_INTERPRET=1``) two Triton launches for all heads
    (`mmi_kernels.last_query`). Otherwise PyTorch: exactly mmi_core's functions up to ``chunk`` keys; beyond, two
    passes over key chunks (row log-sum-exp, then the three sums), equal to fp32 rounding, in O(Hq · L · chunk) memory.
    """
    if triton_runs(q):
        st = last_query_stats_triton(q, k, last_q, scale=scale, need_slash=need_slash)
        return st.vertical, st.slash, st.log_mean
    n_q, hq, d = q.shape
    n_k, hkv, _ = k.shape
    if n_k <= chunk:
        probs = last_query_scores(q, k, last_q, scale=scale)
        vertical, slash = vertical_slash_scores(probs)
        return vertical, slash if need_slash else None, grid_key_scores(probs)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    n_last, g, dev = min(last_q, n_q), hq // hkv, q.device
    q_last = q[n_q - n_last :].float().reshape(n_last, hkv, g, d)
    rows = torch.arange(n_k - n_last, n_k, device=dev)
    log_floor = math.log(1e-30)

    def scores(a: int, b: int) -> torch.Tensor:  # [Hq, L, b - a], causal-masked
        s = torch.einsum("lhgd,nhd->hgln", q_last, k[a:b].float()).reshape(hq, n_last, b - a) * scale
        return s.masked_fill(torch.arange(a, b, device=dev)[None, :] > rows[:, None], float("-inf"))

    lse = torch.full((hq, n_last), float("-inf"), device=dev)
    for a in range(0, n_k, chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(scores(a, min(a + chunk, n_k)), dim=-1))
    vertical = torch.empty(hq, n_k, device=dev)
    log_mean = torch.empty(hq, n_k, device=dev)
    slash = torch.zeros(hq, n_k, device=dev)
    for a in range(0, n_k, chunk):
        b = min(a + chunk, n_k)
        logp = scores(a, b) - lse[..., None]
        p = torch.exp(logp)
        vertical[:, a:b] = p.sum(1)
        log_mean[:, a:b] = logp.clamp_min(log_floor).mean(1)
        if need_slash:
            offs = (rows[:, None] - torch.arange(a, b, device=dev)[None, :]).clamp(min=0)
            slash.scatter_add_(1, offs.reshape(1, -1).expand(hq, -1), p.reshape(hq, -1))
    return vertical, slash if need_slash else None, log_mean


def estimate_layer_keeps(
    q: torch.Tensor,
    k: torch.Tensor,
    lt: LayoutTensors,
    head_configs: HeadConfigs,
    layer: int,
    *,
    scale: float | None = None,
    chunk: int = STATS_CHUNK,
) -> list[SlotKeep]:
    """One request's keep sets, one per slot of `layer_slots`. ``q [n_q, Hq, D]`` (the request's queries, the last
    n_q of its keys), ``k [n_k, Hkv, D]`` on the layout tensors' device. Boundary kinds 'q'/'2d' are built by
    `mmi_kernels.boundary_planner.boundary_keeps` (mmi_core.boundary's parts in O(n + nqb·nkb) memory on the
    device), one `SlotKeep` per part."""
    n_q, hq = q.shape[0], q.shape[1]
    n_k, hkv = k.shape[0], k.shape[1]
    if lt.layout.num_tokens != n_k:
        raise ValueError(f"layout has {lt.layout.num_tokens} tokens but k has {n_k}")
    lc = head_configs.layers[layer]
    g = hq // hkv
    boundary = {h for h, spec in enumerate(lc.heads) if _is_boundary(spec)}
    # as in mmi_core.layer: boundary heads leave the pattern dispatch (Dense() placeholder) and are built below
    patterns: list[PatternConfig] = [Dense() if h in boundary else spec.pattern for h, spec in enumerate(lc.heads)]
    block = layer_block(head_configs, layer) or 64
    dev = q.device

    # last-query statistics per distinct last_q (heads use their own last rows); diagonal sums only for VS heads
    stats: dict[int, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
    for lq in sorted({p.last_q for p in patterns if isinstance(p, VerticalSlash | Grid)}):
        slash = any(isinstance(p, VerticalSlash) and p.last_q == lq for p in patterns)
        stats[lq] = last_query_stats(q, k, lq, scale=scale, chunk=chunk, need_slash=slash)

    keep: list[SlotKeep | None] = [None] * hq
    parts = boundary_keeps(q, k, lt, {h: lc.heads[h] for h in boundary}, scale=scale)  # head -> its three parts

    by_cfg: dict[PatternConfig, list[int]] = defaultdict(list)
    for h, p in enumerate(patterns):
        by_cfg[p].append(h)
    idx = torch.arange(n_k, device=dev)
    for cfg, heads in by_cfg.items():
        if isinstance(cfg, AShape):
            kp = ashape_keep(n_q, n_k, cfg, dev)
            for h in heads:
                keep[h] = kp
        elif isinstance(cfg, VerticalSlash):
            at = to_device(heads, dev)  # a list index would be a blocking copy
            vertical, slash = (t.index_select(0, at) for t in stats[cfg.last_q][:2])  # type: ignore[union-attr]
            forced_c = (idx < cfg.sink).expand(len(heads), n_k)
            forced_s = (idx < cfg.local).expand(len(heads), n_k)
            cols = stable_top(vertical, cfg.vertical, forced=forced_c, coverage=cfg.coverage)
            offs = stable_top(slash, cfg.slash, forced=forced_s, coverage=cfg.coverage)
            # the column budget bounds every head's list: no host read for its width
            width = pattern_capacity(cfg, n_k)[1]
            for h, kp in zip(heads, vertical_slash_keeps(n_q, n_k, cfg, cols, offs, width=width), strict=True):
                keep[h] = kp
        elif isinstance(cfg, BlockSparse):
            kv = k.index_select(1, to_device([h // g for h in heads], dev))
            top = estimate_block_sparse(q.index_select(1, to_device(heads, dev)), kv, cfg, scale=scale)
            for i, h in enumerate(heads):
                keep[h] = block_sparse_keep(n_q, n_k, cfg, top[i])

    # Grid: one unit per executing group (pooled) or per head, exactly as mmi_core.layer
    units: list[list[int]] = []
    for j in range(hkv):
        grid_heads = [h for h in range(j * g, (j + 1) * g) if isinstance(patterns[h], Grid)]
        if grid_heads:
            units += [grid_heads] if lc.gqa[j] == "group" else [[h] for h in grid_heads]
    if units:
        # mmi_core scores every VS/Grid head over the layer's longest last_q: the fold excludes keys near its first row
        longest = max(p.last_q for p in patterns if isinstance(p, VerticalSlash | Grid))
        first_row = n_k - min(longest, n_q)
        by_cfg_grid: dict[Grid, list[int]] = defaultdict(list)  # units whose first head has this config
        for u, heads in enumerate(units):
            cfg0 = patterns[heads[0]]
            assert isinstance(cfg0, Grid)
            by_cfg_grid[cfg0].append(u)
        fold = lt.grid_fold(first_row)
        for cfg0, us in by_cfg_grid.items():
            lqs = {patterns[h].last_q for u in us for h in units[u]}  # type: ignore[union-attr]
            if all(len(units[u]) == 1 for u in us) and len(lqs) == 1:  # one head per unit: one gather, no means
                log_mean = stats[lqs.pop()][2]
                unit_scores = log_mean[to_device([units[u][0] for u in us], log_mean.device)]
            else:
                unit_scores = torch.stack(
                    [torch.stack([stats[patterns[h].last_q][2][h] for h in units[u]]).mean(0) for u in us]  # type: ignore[union-attr]
                )
            # stride and residues stay on the device: the planner computes the permutation from them in closed form
            stride, residues = estimate_grid(unit_scores, lt.layout, cfg0, first_row, masks=fold)
            # heads of one unit with one config share one keep set; the units of each config are built together
            needs: dict[Grid, list[int]] = defaultdict(list)  # config -> the units (positions in `us`) using it
            for i, u in enumerate(us):
                for cfg_h in dict.fromkeys(patterns[h] for h in units[u]):
                    needs[cfg_h].append(i)  # type: ignore[index]
            for cfg_h, at in needs.items():
                sel = to_device(at, stride.device)
                built = dict(zip(at, grid_keeps(lt, n_q, cfg_h, stride[sel], residues[sel]), strict=True))
                for i in at:
                    for h in units[us[i]]:
                        if patterns[h] == cfg_h:
                            keep[h] = built[i]

    out: list[SlotKeep] = []
    slots = layer_slots(head_configs, layer)
    for i, (first, count) in enumerate(slots):
        heads = range(first, first + count)
        if any(_is_dense(lc.heads[h]) for h in heads):
            out.append(dense_keep(n_q, n_k, block, dev))
        elif first in boundary:  # one of its three consecutive slots
            part = i - slots.index((first, 1))
            if first in parts:
                out.append(parts[first][part])
            else:  # nothing to compute (n_q == 0): the first part takes every row
                out.append(dense_keep(n_q, n_k, block, dev) if part == 0 else _no_rows(n_q, n_k, block, dev))
        else:
            out.append(union_keeps([keep[h] for h in heads]))  # type: ignore[misc]
    return out


def _no_rows(n_q: int, n_k: int, block: int, dev: torch.device) -> SlotKeep:
    kp = dense_keep(n_q, n_k, block, dev)
    return SlotKeep(kp.q_order, kp.k_order, torch.zeros_like(kp.blocks), None, 0)
