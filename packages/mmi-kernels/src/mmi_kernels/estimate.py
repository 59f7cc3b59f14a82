"""Online estimation of one layer on the GPU: (q, k, layout, HeadConfigs, layer) -> one `SlotKeep` per head slot.

It follows `mmi_core.layer.estimate_layer_selections` rule for rule (the specification; the tests compare the two
through the index for exact equality) and reuses mmi_core's scoring and ranking primitives, but never builds an
O(n_q·n_k) tensor: last-query statistics are accumulated over key chunks, and keep sets come from
`mmi_kernels.keep_planner`.

The unit of work is an `EstimationProblem` (keys ``[0, end)`` of the request and the queries ending there, one pattern
per head): the layer's chunk is one, and each boundary head's (query modality, pattern) sub-problem is another
(`mmi_kernels.boundary_planner`). `estimate_problems` takes all of a layer's problems at once, so the per-launch
work that does not depend on a problem's layout is done once: every problem's last-query statistics in one launch
set, every vertical-slash head of every problem in one ranking sort.

Head slots are fixed per layer from the configs alone (`layer_slots`), so that one index layout serves every
request of a batch: a KV head whose group executes together is one slot (a dense member makes it a dense slot) unless
the group mixes Grid heads with identity-order patterns, which cannot share a permutation, or holds a boundary head;
then each query head is a slot, as in mmi_core, and a boundary head is three (its parts: TEXT, IMAGE, VIDEO rows,
each in its own orders; a modality without rows in a request leaves its slot empty).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass

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
    GridFold,
    estimate_block_sparse,
    estimate_grid,
    grid_key_scores,
    grid_stride_candidates,
    last_query_scores,
    vertical_slash_scores,
)
from mmi_kernels.boundary_planner import boundary_keeps
from mmi_kernels.dispatch import triton_runs
from mmi_kernels.grid_phase import MAX_STRIDE, grid_phases
from mmi_kernels.index import SlotKeep, pattern_capacity
from mmi_kernels.keep_planner import (
    LayoutTensors,
    ashape_keep,
    block_sparse_keeps,
    dense_keep,
    grid_keeps,
    union_keeps,
    vertical_slash_keeps,
)
from mmi_kernels.last_query import LastQueryStats, last_query_stats_groups, last_query_stats_triton
from mmi_kernels.ranking import top_ids

__all__ = [
    "EstimationProblem",
    "estimate_layer_keeps",
    "estimate_problems",
    "last_query_stats",
    "layer_block",
    "layer_slots",
]

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


@dataclass(frozen=True)
class EstimationProblem:
    """One keep-set estimation on a request's queries and keys: keys ``[0, end)`` and the queries that end there (the
    request's whole chunk, or a boundary head's sub-problem), one pattern per query head (`Dense`: nothing to
    estimate) and the GQA mode of each KV head (`LayerConfig.gqa`: Grid heads of a "group" pool their statistics).
    ``lt``: the layout tensors of those ``end`` keys."""

    end: int
    lt: LayoutTensors
    patterns: tuple[PatternConfig, ...]
    gqa: tuple[str, ...]


def estimate_problems(
    q: torch.Tensor,
    k: torch.Tensor,
    problems: list[EstimationProblem],
    *,
    scale: float | None = None,
    chunk: int = STATS_CHUNK,
) -> list[list[SlotKeep | None]]:
    """Keep sets of every problem (`EstimationProblem`, keys ``[0, end)`` of ``k``, queries ``q[:end - prefix]``)
    per query head: None where the pattern is `Dense`. ``q [n_q, Hq, D]`` holds the request's last n_q keys' queries.

    Work that does not depend on a problem's layout is batched over all of them: the last-query statistics of every
    (end, last_q) in one set of launches (`last_query_stats_groups`), and the vertical-slash ranking of every head of
    every problem in one sort (`mmi_kernels.ranking.top_ids`); Grid, block-sparse and A-shape keep sets are built per
    problem (their layouts, or query rows, differ)."""
    n_q, hq = q.shape[0], q.shape[1]
    n_k, hkv = k.shape[0], k.shape[1]
    g, prefix, dev = hq // hkv, n_k - n_q, q.device
    for p in problems:
        if p.lt.layout.num_tokens != p.end or not prefix <= p.end <= n_k:
            raise ValueError(f"problem of {p.end} keys (layout {p.lt.layout.num_tokens}) with k {n_k}, q {n_q}")

    # last-query statistics: one group per distinct (end, last_q); per group and head what it needs: a Grid head
    # the log sums (1), a vertical-slash head also the diagonal sums (2), any other nothing (0)
    groups: dict[tuple[int, int], int] = {}
    needs: list[list[int]] = []
    for p in problems:
        for h, cfg in enumerate(p.patterns):
            if isinstance(cfg, VerticalSlash | Grid):
                gi = groups.setdefault((p.end, cfg.last_q), len(groups))
                if gi == len(needs):
                    needs.append([0] * hq)
                needs[gi][h] = max(needs[gi][h], 2 if isinstance(cfg, VerticalSlash) else 1)
    stats = _group_stats(q, k, list(groups), scale=scale, chunk=chunk, needs=needs) if groups else None

    keep: list[list[SlotKeep | None]] = [[None] * hq for _ in problems]
    vs: list[tuple[int, VerticalSlash, list[int]]] = []  # (problem, config, heads) ranked together below
    for i, p in enumerate(problems):
        n_q_p = p.end - prefix
        by_cfg: dict[PatternConfig, list[int]] = defaultdict(list)
        for h, cfg in enumerate(p.patterns):
            by_cfg[cfg].append(h)
        for cfg, heads in by_cfg.items():
            if isinstance(cfg, AShape):
                kp = ashape_keep(n_q_p, p.end, cfg, dev)
                for h in heads:
                    keep[i][h] = kp
            elif isinstance(cfg, VerticalSlash):
                vs.append((i, cfg, heads))
            elif isinstance(cfg, BlockSparse):
                kv = k[: p.end].index_select(1, to_device([h // g for h in heads], dev))
                top = estimate_block_sparse(q[:n_q_p].index_select(1, to_device(heads, dev)), kv, cfg, scale=scale)
                for h, kp in zip(heads, block_sparse_keeps(n_q_p, p.end, cfg, top), strict=True):
                    keep[i][h] = kp
    for cov in dict.fromkeys(cfg.coverage for _, cfg, _ in vs):
        entries = [e for e in vs if e[1].coverage == cov]
        _vertical_slash(problems, entries, stats, groups, prefix, keep)  # type: ignore[arg-type]
    if stats is not None:  # no statistics: no Grid head either
        _grids(problems, stats.log_mean, groups, prefix, g, keep)
    return keep


def _group_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    groups: list[tuple[int, int]],
    *,
    scale: float | None,
    chunk: int,
    needs: list[list[int]],
) -> LastQueryStats:
    """`last_query_stats` of every sub-problem ``(end, last_q)`` (keys ``[0, end)``, the queries ending there) as
    fp32 ``[G, Hq, n_k]`` tables (entries past a group's end, or of a (group, head) whose need is 0 or, for the
    diagonal sums, 1: unspecified). Where the kernels run, one set of launches for all groups
    (`last_query_stats_groups`, which skips what is not needed); otherwise `last_query_stats` per group."""
    need_slash = any(c == 2 for row in needs for c in row)
    if triton_runs(q):
        return last_query_stats_groups(q, k, groups, scale=scale, need_slash=need_slash, needs=needs)
    hq, n_k, prefix = q.shape[1], k.shape[0], k.shape[0] - q.shape[0]
    vertical = torch.zeros(len(groups), hq, n_k, device=q.device)
    log_mean, slash = torch.zeros_like(vertical), torch.zeros_like(vertical) if need_slash else None
    for i, (end, lq) in enumerate(groups):
        v, s, lm = last_query_stats(q[: end - prefix], k[:end], lq, scale=scale, chunk=chunk, need_slash=need_slash)
        vertical[i, :, :end], log_mean[i, :, :end] = v, lm
        if slash is not None:
            slash[i, :, :end] = s
    return LastQueryStats(vertical, slash, log_mean)


def _vertical_slash(
    problems: list[EstimationProblem],
    entries: list[tuple[int, VerticalSlash, list[int]]],
    stats: LastQueryStats,
    groups: dict[tuple[int, int], int],
    prefix: int,
    keep: list[list[SlotKeep | None]],
) -> None:
    """Vertical-slash keep sets of ``entries`` (problem, config, heads; one coverage): every head's columns and
    diagonals ranked in one `top_ids` call (rows: the heads' vertical sums, then their diagonal sums)."""
    hq, n_k = stats.vertical.shape[1], stats.vertical.shape[2]
    rows, budget, forced, length = [], [], [], []
    for i, cfg, heads in entries:
        end = problems[i].end
        rows += [groups[(end, cfg.last_q)] * hq + h for h in heads]
        budget += [cfg.vertical] * len(heads)
        forced += [cfg.sink] * len(heads)
        length += [end] * len(heads)
    for _, cfg, heads in entries:
        budget += [cfg.slash] * len(heads)
        forced += [cfg.local] * len(heads)
    r = len(rows)
    dev = stats.vertical.device
    table = to_device(rows + budget + forced + length * 2, dev)  # one host-to-device copy for every row's facts
    at, per_row = table[:r], table[r:].view(3, 2 * r)
    assert stats.slash is not None
    scores = torch.cat(
        [stats.vertical.view(-1, n_k).index_select(0, at), stats.slash.view(-1, n_k).index_select(0, at)]
    )
    width = max(max(c.vertical + c.sink, c.slash + c.local) for _, c, _ in entries)
    ids = top_ids(scores, per_row[0], per_row[1], per_row[2], width=width, max_forced=max(forced),
                  coverage=entries[0][1].coverage)  # fmt: skip
    parts, a = [], 0
    for i, cfg, heads in entries:  # every entry's keep sets from one prefix count and one diagonal-to-block launch
        end, b = problems[i].end, a + len(heads)
        cols = ids[a:b, : pattern_capacity(cfg, end)[1]]  # the budget bounds the list: no host read for its width
        parts.append((end - prefix, end, cfg, cols, ids[r + a : r + b]))
        a = b
    for (i, _, heads), kps in zip(entries, vertical_slash_keeps(parts), strict=True):
        for h, kp in zip(heads, kps, strict=True):
            keep[i][h] = kp


def _grids(
    problems: list[EstimationProblem],
    log_mean: torch.Tensor,
    groups: dict[tuple[int, int], int],
    prefix: int,
    g: int,
    keep: list[list[SlotKeep | None]],
) -> None:
    """Grid keep sets of every problem: one unit per executing group (pooled) or per head, exactly as mmi_core.layer.
    Where the kernels run, the phases of every unit whose stride is known (one candidate: ``"frame"`` or a fixed
    stride) come from one `grid_phases` launch over all problems (a boundary layer's sub-problems each cost ~17
    host ops in PyTorch); the others per (problem, config) through mmi_core's `estimate_grid`."""
    hq, width = log_mean.shape[1], log_mean.shape[2]
    jobs: list[tuple[int, Grid, list[list[int]], int]] = []  # (problem, estimating config, its units, first row)
    for i, p in enumerate(problems):
        units: list[list[int]] = []
        for j, mode in enumerate(p.gqa):
            grid_heads = [h for h in range(j * g, (j + 1) * g) if isinstance(p.patterns[h], Grid)]
            if grid_heads:
                units += [grid_heads] if mode == "group" else [[h] for h in grid_heads]
        if not units:
            continue
        # mmi_core scores every VS/Grid head over the layer's longest last_q: the fold excludes keys near its first row
        longest = max(c.last_q for c in p.patterns if isinstance(c, VerticalSlash | Grid))
        first_row = p.end - min(longest, p.end - prefix)
        by_cfg: dict[Grid, list[list[int]]] = defaultdict(list)  # units whose first head has this config
        for heads in units:
            by_cfg[p.patterns[heads[0]]].append(heads)  # type: ignore[index]
        jobs += [(i, cfg0, us, first_row) for cfg0, us in by_cfg.items()]

    def rows(i: int, heads: list[int]) -> list[int]:  # each head's log-mean row at its own last_q
        return [groups[(problems[i].end, problems[i].patterns[h].last_q)] * hq + h for h in heads]  # type: ignore[union-attr]

    estimates: dict[int, tuple[int | torch.Tensor, torch.Tensor]] = {}  # job -> (stride, residues [U, lines])
    fast = []  # (job, its one stride candidate)
    if triton_runs(log_mean):
        for jb, (i, cfg0, _, _) in enumerate(jobs):
            cands = grid_stride_candidates(problems[i].lt.layout, cfg0)
            if len(cands) == 1 and cands[0] <= MAX_STRIDE:
                fast.append((jb, cands[0]))
    if fast:
        masks: dict[tuple[int, int], int] = {}  # (problem, first row) -> its row of the mask tables
        units_all = []
        for jb, stride in fast:
            i, _, us, first_row = jobs[jb]
            row = masks.setdefault((i, first_row), len(masks))
            units_all += [(row, stride, rows(i, heads)) for heads in us]
        folds = tuple(problems[i].lt.grid_fold(first_row) for i, first_row in masks)
        fold, signal = _fold_tables(folds, width)
        ends = [problems[i].end for i, _ in masks]
        lines = max(jobs[jb][1].lines for jb, _ in fast)
        res = grid_phases(log_mean.view(-1, width), units_all, fold, signal, ends, lines)
        a = 0
        for jb, stride in fast:
            n_units = len(jobs[jb][2])
            estimates[jb] = (stride, res[a : a + n_units, : jobs[jb][1].lines])
            a += n_units
    for jb, (i, cfg0, us, first_row) in enumerate(jobs):
        p = problems[i]
        if jb not in estimates:
            if all(len(heads) == 1 for heads in us):  # one head per unit: one gather, no means
                at = to_device([r for heads in us for r in rows(i, heads)], log_mean.device)
                unit_scores = log_mean.view(-1, width).index_select(0, at)[:, : p.end]
            else:
                unit_scores = torch.stack(
                    [log_mean.view(-1, width)[rows(i, heads)][:, : p.end].mean(0) for heads in us]
                )
            # stride and residues stay on the device: the planner computes the permutation from them in closed form
            estimates[jb] = estimate_grid(unit_scores, p.lt.layout, cfg0, first_row, masks=p.lt.grid_fold(first_row))
        stride, residues = estimates[jb]
        # heads of one unit with one config share one keep set; the units of each config are built together
        needs: dict[Grid, list[int]] = defaultdict(list)  # config -> the units (positions in `us`) using it
        for u, heads in enumerate(us):
            for cfg_h in dict.fromkeys(p.patterns[h] for h in heads):
                needs[cfg_h].append(u)  # type: ignore[index]
        for cfg_h, at_u in needs.items():
            if len(at_u) == len(us):
                st, rs = stride, residues
            else:
                sel = to_device(at_u, residues.device)
                st, rs = (stride if isinstance(stride, int) else stride[sel]), residues[sel]
            built = dict(zip(at_u, grid_keeps(p.lt, p.end - prefix, cfg_h, st, rs), strict=True))  # type: ignore[arg-type]
            for u in at_u:
                for h in us[u]:
                    if p.patterns[h] == cfg_h:
                        keep[i][h] = built[u]


@functools.lru_cache(maxsize=4)
def _fold_tables(folds: tuple[GridFold, ...], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``[P, width]`` fold and signal masks of sub-problems (False past each one's keys), built once per batch:
    the folds are cached per (layout, first row), so every layer of a request asks with the same ones."""
    dev = folds[0].fold.device
    fold = torch.zeros(len(folds), width, dtype=torch.bool, device=dev)
    signal = torch.zeros_like(fold)
    for row, gf in enumerate(folds):
        fold[row, : gf.fold.numel()] = gf.fold
        signal[row, : gf.signal.numel()] = gf.signal
    return fold, signal


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
    device), one `SlotKeep` per part; every other head by `estimate_problems` on the whole chunk."""
    n_q, n_k = q.shape[0], k.shape[0]
    if lt.layout.num_tokens != n_k:
        raise ValueError(f"layout has {lt.layout.num_tokens} tokens but k has {n_k}")
    lc = head_configs.layers[layer]
    boundary = {h for h, spec in enumerate(lc.heads) if _is_boundary(spec)}
    # as in mmi_core.layer: boundary heads leave the pattern dispatch (Dense() placeholder) and are built below
    patterns = tuple(Dense() if h in boundary else spec.pattern for h, spec in enumerate(lc.heads))
    block = layer_block(head_configs, layer) or 64
    dev = q.device
    keep = estimate_problems(q, k, [EstimationProblem(n_k, lt, patterns, tuple(lc.gqa))], scale=scale, chunk=chunk)[0]
    parts = boundary_keeps(q, k, lt, {h: lc.heads[h] for h in boundary}, scale=scale)  # head -> its three parts

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
