"""Layer-level API: estimate every head's `Selection` of one layer, and the reference attention built on it.

Data flow: ``(q, k, layout, HeadConfigs, layer)`` → last-query / block scores (batched over heads) → per-pattern
parameters (`mmi_core.estimation`) → selection builders (`mmi_core.selection`) → GQA group union.

Rules:
- One entry per query head; ``None`` means dense causal attention.
- KV head ``j`` with ``gqa[j] == "group"`` executes its query heads together: one selection, the union of theirs
  (`union_selections`), repeated for each head of the group; Grid heads of the group share one stride, phase and
  lines estimated from the group's pooled last-query scores (the mean of their `grid_key_scores`; candidates and
  ``lines`` of the group's first Grid head). A dense head makes the whole group dense. A group mixing
  Grid heads with identity-order patterns (VS, A-shape, block-sparse) cannot share one permutation, so it runs per
  query head (each head keeps its own selection; Grid heads still share the pooled stride/phase).
- Heads with boundary ``"q"`` or ``"2d"`` get a `RowGroups` each from `mmi_core.boundary.boundary_selection`
  (per-modality / per-pair estimation, one part per query modality with its own orders; see that module). They
  never join a GQA union (each part is its own executing slot; `mmi_kernels.layer_slots`); an all-dense boundary
  head is dense like a `Dense` head.
- ``n_q == 0`` (nothing to compute): every entry is ``None``.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from mmi_core.boundary import boundary_selection
from mmi_core.estimation import (
    estimate_block_sparse,
    estimate_grid,
    estimate_vertical_slash,
    grid_key_scores,
    last_query_scores,
)
from mmi_core.head_configs import HeadConfigs
from mmi_core.layout import ModalityLayout
from mmi_core.patterns import AShape, BlockSparse, Dense, Grid, PatternConfig, VerticalSlash
from mmi_core.reference import check_qkv, sparse_attention_reference
from mmi_core.selection import (
    RowGroups,
    Selection,
    ashape_selection,
    block_sparse_selection,
    grid_selection,
    union_selections,
    vertical_slash_selection,
)

__all__ = ["estimate_layer_selections", "mmi_attention_reference"]


def _check(q: torch.Tensor, k: torch.Tensor, layout: ModalityLayout, hc: HeadConfigs, layer: int) -> None:
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(
            f"q and k must be 3-D token-major [tokens, heads, head_dim], got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    check_qkv(q, k, k)
    n_k, hq, hkv = k.shape[0], q.shape[1], k.shape[1]
    if layout.num_tokens != n_k:
        raise ValueError(f"layout has {layout.num_tokens} tokens but k has {n_k}")
    if (hc.num_q_heads, hc.num_kv_heads) != (hq, hkv):
        raise ValueError(
            f"head configs are for {hc.num_q_heads} q / {hc.num_kv_heads} kv heads, inputs have {hq}/{hkv}"
        )
    if not 0 <= layer < hc.num_layers:
        raise ValueError(f"layer {layer} is outside [0, {hc.num_layers})")


def estimate_layer_selections(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: ModalityLayout,
    head_configs: HeadConfigs,
    layer: int,
    *,
    scale: float | None = None,
) -> list[Selection | RowGroups | None]:
    """Online estimation of one layer: a `Selection` (or ``None`` = dense) per query head.

    ``q [n_q, Hq, D]``, ``k [n_k, Hkv, D]`` token-major, any float dtype and device (scores in fp32); ``layout``
    covers the ``n_k`` tokens and the queries are its last ``n_q``. Selections live on the CPU (their builders'
    convention; building them is where the host synchronises). Memory: ``O(S · last_q · n_k)`` fp32 scores for the
    ``S`` heads that need them (VS, Grid), ``O(Hq · (n_q / block) · (n_k / block))`` for block-sparse heads, plus the
    selection builders' own (`grid_selection` builds an ``n_q × n_k`` pair mask).
    Raises ValueError on inconsistent shapes, a layout of another length, head configs for another geometry, a layer
    out of range, or a Grid config whose stride candidates are empty on this layout.
    """
    _check(q, k, layout, head_configs, layer)
    n_q, hq = q.shape[0], q.shape[1]
    n_k, hkv = k.shape[0], k.shape[1]
    if n_q == 0:
        return [None] * hq
    lc = head_configs.layers[layer]
    g = hq // hkv
    boundary = {h for h, spec in enumerate(lc.heads) if spec.boundary in ("q", "2d")}
    # boundary heads are estimated below by mmi_core.boundary; Dense() here keeps them out of the pattern dispatch
    patterns: list[PatternConfig] = [Dense() if h in boundary else spec.pattern for h, spec in enumerate(lc.heads)]

    # last-query scores once for the layer, only for the heads that use them, with the longest last_q they ask for;
    # probs[row_of[h]] are head h's scores
    scored = [h for h, p in enumerate(patterns) if isinstance(p, VerticalSlash | Grid)]
    row_of = {h: i for i, h in enumerate(scored)}
    probs = None
    if scored:
        longest = max(patterns[h].last_q for h in scored)  # type: ignore[union-attr]
        idx = torch.tensor(scored, device=q.device)
        probs = last_query_scores(q.index_select(1, idx), _kv_for(k, scored, g), longest, scale=scale)

    def rows_of(cfg: VerticalSlash | Grid) -> slice:  # this head's own last_q rows of the shared scores
        assert probs is not None
        return slice(max(probs.shape[1] - cfg.last_q, 0), None)

    sel: list[Selection | RowGroups | None] = [None] * hq
    for h in sorted(boundary):
        sel[h] = boundary_selection(q[:, h : h + 1], k[:, h // g : h // g + 1], layout, lc.heads[h], scale=scale)

    # heads sharing one config are estimated in one batched call
    by_cfg: dict[PatternConfig, list[int]] = defaultdict(list)
    for h, p in enumerate(patterns):
        by_cfg[p].append(h)
    for cfg, heads in by_cfg.items():
        if isinstance(cfg, AShape):
            s = ashape_selection(n_q, n_k, cfg)
            for h in heads:
                sel[h] = s
        elif isinstance(cfg, VerticalSlash):
            assert probs is not None
            cols, offs = estimate_vertical_slash(probs[[row_of[h] for h in heads]][:, rows_of(cfg)], cfg)
            cols, offs = cols.cpu(), offs.cpu()
            for i, h in enumerate(heads):
                sel[h] = vertical_slash_selection(
                    n_q, n_k, cfg, torch.nonzero(cols[i]).flatten(), torch.nonzero(offs[i]).flatten()
                )
        elif isinstance(cfg, BlockSparse):
            head_idx = torch.tensor(heads, device=q.device)
            top = estimate_block_sparse(q.index_select(1, head_idx), _kv_for(k, heads, g), cfg, scale=scale).cpu()
            for i, h in enumerate(heads):
                sel[h] = block_sparse_selection(n_q, n_k, cfg, top[i])

    # Grid: one unit per executing group (pooled) or per head
    units: list[list[int]] = []
    for j in range(hkv):
        grid_heads = [h for h in range(j * g, (j + 1) * g) if isinstance(patterns[h], Grid)]
        if not grid_heads:
            continue
        units += [grid_heads] if lc.gqa[j] == "group" else [[h] for h in grid_heads]
    if units:
        assert probs is not None
        weights = torch.zeros(len(scored), probs.shape[1], device=q.device)  # each Grid head's own last_q rows
        for h in scored:
            p = patterns[h]
            if isinstance(p, Grid):
                weights[row_of[h], rows_of(p)] = 1.0
        head_scores = grid_key_scores(probs, weights)  # [len(scored), n_k]; rows of VS heads are unused
        by_cfg_grid: dict[Grid, list[int]] = defaultdict(list)  # units whose first head has this config
        for u, heads in enumerate(units):
            cfg0 = patterns[heads[0]]
            assert isinstance(cfg0, Grid)
            by_cfg_grid[cfg0].append(u)
        for cfg0, us in by_cfg_grid.items():
            unit_scores = torch.stack([head_scores[[row_of[h] for h in units[u]]].mean(0) for u in us])
            stride, residues = estimate_grid(unit_scores, layout, cfg0, n_k - probs.shape[1])
            stride, residues = stride.cpu(), residues.cpu()
            for i, u in enumerate(us):
                for h in units[u]:
                    cfg_h = patterns[h]
                    assert isinstance(cfg_h, Grid)
                    sel[h] = grid_selection(layout, n_q, cfg_h, int(stride[i]), residues[i])

    # GQA groups that execute together share the union of their selections
    for j in range(hkv):
        if lc.gqa[j] != "group":
            continue
        group = list(range(j * g, (j + 1) * g))
        if any(isinstance(patterns[h], Dense) and (h not in boundary or sel[h] is None) for h in group):
            for h in group:
                sel[h] = None
            continue
        members = [sel[h] for h in group]
        assert all(s is not None for s in members)
        # boundary heads run per part (their own orders), never in a union: decided from the configs alone, like
        # mmi_kernels.estimate.layer_slots
        if not any(h in boundary for h in group) and _same_orders(members):  # type: ignore[arg-type]
            u = union_selections(members)  # type: ignore[arg-type]
            for h in group:
                sel[h] = u
    return sel


def _kv_for(k: torch.Tensor, heads: list[int], g: int) -> torch.Tensor:
    """k [n_k, Hkv, D] -> [n_k, len(heads), D]: the KV head of each listed query head (so GQA becomes 1:1)."""
    return k.index_select(1, torch.tensor([h // g for h in heads], device=k.device))


def _same_orders(sels: list[Selection]) -> bool:
    first = sels[0]
    return all(
        s.block == first.block
        and torch.equal(s.q_perm.order, first.q_perm.order)
        and torch.equal(s.k_perm.order, first.k_perm.order)
        for s in sels[1:]
    )


def mmi_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: ModalityLayout,
    head_configs: HeadConfigs,
    layer: int,
    *,
    scale: float | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """MMInference attention of one layer in reference PyTorch: `estimate_layer_selections` then
    `sparse_attention_reference`. Returns ``[n_q or len(rows), Hq, D]`` in q's dtype. Raises like both."""
    check_qkv(q, k, v)
    selections = estimate_layer_selections(q, k, layout, head_configs, layer, scale=scale)
    return sparse_attention_reference(q, k, v, selections, scale=scale, rows=rows)
