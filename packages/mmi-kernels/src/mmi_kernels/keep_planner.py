"""Keep-set planners that run on the GPU: pattern parameters -> `SlotKeep`, in O(n + nqb·nkb) memory.

`mmi_core.selection`'s builders are the specification; they materialise (query, key) pair masks, O(n_q·n_k), which
is fine for tests and impossible at 1M tokens. These planners build the same key-block sets from per-row and
per-block quantities (positions, runs of a grid class in key-permuted order) with a handful of batched tensor ops
and no host synchronisation, on the device of their inputs. The tests check `index_from_keeps` of these against
`index_from_selections` of mmi_core's builders for exact equality.

The one idea that keeps Grid linear: a video key is sorted by ``(residue, position)`` inside its segment, so the
keys of a row's own (segment, residue) class that are causal for the row are exactly the run from the class's first
key-permuted index up to the row's own key — one interval per row, turned into blocks with a difference array.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch
import triton
import triton.language as tl

from mmi_core import AShape, BlockSparse, Grid, Modality, ModalityLayout, VerticalSlash, to_device
from mmi_core.estimation import GridFold, grid_key_mask
from mmi_kernels.dispatch import triton_runs
from mmi_kernels.index import SlotKeep

__all__ = [
    "LayoutTensors",
    "ashape_keep",
    "block_sparse_keeps",
    "dense_keep",
    "grid_blocks",
    "grid_inverse_reference",
    "grid_keeps",
    "grid_order",
    "grid_row_intervals",
    "grid_row_intervals_reference",
    "slash_blocks",
    "slash_blocks_reference",
    "union_keeps",
    "vertical_slash_keeps",
]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class LayoutTensors:
    """Per-token facts of one layout on a device, computed once per batch (plan time): video mask, segment bounds,
    and the Grid fold per estimation start (`grid_fold`, cached: every layer asks again)."""

    def __init__(self, layout: ModalityLayout, device: torch.device | str) -> None:
        self.layout = layout
        self.device = torch.device(device)
        n = layout.num_tokens
        seg_id = torch.zeros(n, dtype=torch.int64)
        is_video = torch.zeros(n, dtype=torch.bool)
        start = torch.zeros(n, dtype=torch.int64)
        end = torch.zeros(n, dtype=torch.int64)
        for i, s in enumerate(layout.segments):
            seg_id[s.start : s.end] = i
            start[s.start : s.end] = s.start
            end[s.start : s.end] = s.end
            if s.modality == Modality.VIDEO:
                is_video[s.start : s.end] = True
        # built on the host and copied once: per-segment slice writes on a GPU would be one launch per segment
        self.seg_id, self.is_video = to_device(seg_id, self.device), to_device(is_video, self.device)
        self.segment_start, self.segment_end = to_device(start, self.device), to_device(end, self.device)
        self.video_segments = [(s.start, s.end) for s in layout.segments_of(Modality.VIDEO)]
        self.modality = to_device(layout.token_modalities(), self.device)  # int [n] `Modality` codes
        self._folds: dict[int, GridFold] = {}
        self._truncated: dict[int, LayoutTensors] = {}
        self._modality_masks: dict[frozenset[int], torch.Tensor] = {}
        self._query_rows: dict[tuple[frozenset[Modality], int], torch.Tensor] = {}

    def truncated(self, layout: ModalityLayout) -> LayoutTensors:
        """The layout tensors of ``layout``, a prefix of this one (a boundary head's sub-problem), built once per
        batch: every layer asks again."""
        if layout.num_tokens not in self._truncated:
            self._truncated[layout.num_tokens] = LayoutTensors(layout, self.device)
        return self._truncated[layout.num_tokens]

    def modality_mask(self, modalities: frozenset[int]) -> torch.Tensor:
        """bool [n]: tokens whose `Modality` code is in ``modalities`` (a boundary group's keys), built once per
        batch: every layer asks again."""
        if modalities not in self._modality_masks:
            self._modality_masks[modalities] = torch.isin(self.modality, to_device(sorted(modalities), self.device))
        return self._modality_masks[modalities]

    def query_rows(self, modalities: frozenset[Modality], prefix: int) -> torch.Tensor:
        """int64 [rows]: query indices (token position - ``prefix``) of the tokens at or after ``prefix`` whose
        modality is in ``modalities``, ascending (a boundary part's rows of other modalities), built on the host
        once per batch: every layer asks again."""
        key = (modalities, prefix)
        if key not in self._query_rows:
            ranges = [torch.arange(a, b) for a, b in query_row_ranges(self.layout, modalities, prefix)]
            rows = torch.cat(ranges) if ranges else torch.zeros(0, dtype=torch.int64)
            self._query_rows[key] = to_device(rows, self.device)
        return self._query_rows[key]

    def grid_fold(self, first_row: int) -> GridFold:
        """`mmi_core.GridFold` of this layout for estimation rows starting at ``first_row``, on the device (the
        masks of `mmi_core.grid_key_mask` and the per-stride residue tables, kept across layers)."""
        if first_row not in self._folds:
            fold, neutral = grid_key_mask(self.layout, first_row)
            self._folds[first_row] = GridFold.from_masks(to_device(fold, self.device), to_device(neutral, self.device))
        return self._folds[first_row]


def query_row_ranges(layout: ModalityLayout, modalities: frozenset[Modality], prefix: int) -> list[tuple[int, int]]:
    """Query-index ranges (token position - ``prefix``) of the segments of ``modalities`` at or after ``prefix``,
    ascending."""
    return [
        (max(s.start, prefix) - prefix, s.end - prefix)
        for s in layout.segments
        if s.modality in modalities and s.end > prefix
    ]


def _identity(n_q: int, n_k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity query and key orders: one tensor for both without a cached prefix (the boundary planner then stacks
    and inverts one order, not two)."""
    ko = torch.arange(n_k, device=device)
    return (ko if n_q == n_k else torch.arange(n_q, device=device)), ko


def _own_blocks(n_q: int, n_k: int, block: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity orders: first / last key block holding the positions of each query block."""
    first = (n_k - n_q) + torch.arange(_cdiv(n_q, block), device=device) * block
    last = torch.clamp(first + block - 1, max=n_k - 1)
    return first, last


def dense_keep(n_q: int, n_k: int, block: int, device: torch.device | str) -> SlotKeep:
    """Every causal pair."""
    dev = torch.device(device)
    qo, ko = _identity(n_q, n_k, dev)
    return SlotKeep(qo, ko, torch.ones(_cdiv(n_q, block), _cdiv(n_k, block), dtype=torch.bool, device=dev))


def ashape_keep(n_q: int, n_k: int, cfg: AShape, device: torch.device | str) -> SlotKeep:
    """`mmi_core.ashape_selection` on ``device``."""
    dev, b = torch.device(device), cfg.block
    qo, ko = _identity(n_q, n_k, dev)
    first, last = _own_blocks(n_q, n_k, b, dev)
    kb = torch.arange(_cdiv(n_k, b), device=dev)
    blocks = (kb[None, :] * b < cfg.sink) | (
        (kb[None, :] >= (torch.clamp(first - cfg.local, min=0) // b)[:, None]) & (kb[None, :] <= (last // b)[:, None])
    )
    return SlotKeep(qo, ko, blocks)


def vertical_slash_keeps(
    parts: Sequence[tuple[int, int, VerticalSlash, torch.Tensor, torch.Tensor]],
) -> list[list[SlotKeep]]:
    """`mmi_core.vertical_slash_selection` of the heads of every part ``(n_q, n_k, cfg, column_ids, offset_ids)``:
    ``H`` heads sharing ``cfg``, each with its kept key positions ``column_ids [H, W]`` and diagonal offsets
    ``offset_ids [H, W']`` (int64, ascending, distinct, ``-1`` padding at the end; sinks and local diagonals
    included: `mmi_kernels.ranking.top_ids` lists them so). One keep per head, every part's heads built by the same
    few launches (a boundary layer's sub-problems are parts of one call), without a host read.

    Slashes: a diagonal at offset ``d`` crosses query block ``[first, last]`` on keys ``[first - d, last - d]`` (at
    most two key blocks), so key block ``kb`` is kept iff some kept offset lies in
    ``[max(first - kb·b - b + 1, 0), last - kb·b]``: a range count on the offsets' prefix counts (`slash_blocks`),
    which a binary search of every index in the sorted list gives.

    Columns: the lists as they are, one for every query block (a view). Raises ValueError on malformed lists."""
    for _, _, _, column_ids, offset_ids in parts:
        if column_ids.dim() != 2 or offset_ids.dim() != 2 or column_ids.shape[0] != offset_ids.shape[0]:
            raise ValueError(
                f"column_ids and offset_ids must be int [H, W], got {tuple(column_ids.shape)} and "
                f"{tuple(offset_ids.shape)}"
            )
    if not parts:
        return []
    dev = parts[0][3].device
    n_max = max(n_k for _, n_k, *_ in parts)
    offs = [o for *_, o in parts]
    wide = max(o.shape[1] for o in offs)
    offs = [torch.nn.functional.pad(o, (0, wide - o.shape[1]), value=-1) if o.shape[1] < wide else o for o in offs]
    offs = offs[0] if len(offs) == 1 else torch.cat(offs)
    sorted_offs = torch.where(offs < 0, n_max, offs)  # padding past every index of every part
    idx = torch.arange(n_max + 1, device=dev).repeat(offs.shape[0], 1)  # searchsorted copies a view anyway
    kept = torch.searchsorted(sorted_offs, idx, out_int32=True)  # kept[:, i] = kept offsets below i
    blocks = slash_blocks(kept, [(n_q, n_k, cfg.block, c.shape[0]) for n_q, n_k, cfg, c, _ in parts])
    ids = torch.arange(max(n_max, max(n_q for n_q, *_ in parts)), device=dev)  # identity orders: views of one
    out = []
    for (n_q, n_k, cfg, column_ids, _), bl in zip(parts, blocks, strict=True):
        # one unbind per table: per-head indexing cost ~4 host-side view ops per head (a q_same layer: ~230)
        cols = column_ids[:, None, :].expand(-1, _cdiv(n_q, cfg.block), -1).unbind(0)
        ko = ids[:n_k]
        qo = ko if n_q == n_k else ids[:n_q]  # one order for both without a cached prefix (as `_identity`)
        out.append([SlotKeep(qo, ko, b, c) for b, c in zip(bl.unbind(0), cols, strict=True)])
    return out


def slash_blocks(kept: torch.Tensor, parts: Sequence[tuple[int, int, int, int]]) -> list[torch.Tensor]:
    """bool ``[H, nqb, nkb]`` per part ``(n_q, n_k, block, H)``: key blocks crossed by a kept diagonal, from ``kept``
    int32 ``[R, n + 1]`` (kept offsets below each index: an exclusive prefix count; the parts' heads are its rows in
    order, ``n >= n_k``). Query block ``qb`` spans positions ``[first, last]`` (``first = n_k - n_q + qb·block``,
    ``last`` clipped to ``n_k - 1``); offset ``d`` meets key block ``kb`` iff ``first - kb·block - block + 1 <= d <=
    last - kb·block``. One Triton program per (query block, head) of all parts (a launch per block size) where the
    kernels run; `slash_blocks_reference` per part otherwise."""
    starts = list(accumulate((h for *_, h in parts), initial=0))
    if not triton_runs(kept):
        return [
            slash_blocks_reference(kept[r : r + h, : n_k + 1], n_q, b)
            for (n_q, n_k, b, h), r in zip(parts, starts, strict=False)
        ]
    sizes = [h * _cdiv(n_q, b) * _cdiv(n_k, b) for n_q, n_k, b, h in parts]
    flat = torch.empty(sum(sizes), dtype=torch.uint8, device=kept.device)
    at = list(accumulate(sizes, initial=0))
    kept = kept.contiguous()
    for block in dict.fromkeys(b for _, _, b, _ in parts):
        table, nqb_max = [], 0
        for (n_q, n_k, b, h), r, o in zip(parts, starts, at, strict=False):
            if b != block:
                continue
            nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
            nqb_max = max(nqb_max, nqb)
            table += [v for i in range(h) for v in (r + i, n_k, n_k - n_q, nqb, nkb, o + i * nqb * nkb)]
        if table and nqb_max:
            rows = len(table) // 6
            _slash_blocks_kernel[(nqb_max, rows)](kept, to_device(table, kept.device), flat, kept.shape[1], B=block,
                                                  BK=1024)  # fmt: skip
    return [
        flat[o : o + size].view(h, _cdiv(n_q, b), _cdiv(n_k, b)).view(torch.bool)
        for (n_q, n_k, b, h), o, size in zip(parts, at, sizes, strict=False)
    ]


def slash_blocks_reference(kept: torch.Tensor, n_q: int, block: int) -> torch.Tensor:
    """`slash_blocks` in PyTorch ops: every (query block, key block) range at once."""
    n_k = kept.shape[1] - 1
    first = n_k - n_q + torch.arange(_cdiv(n_q, block), device=kept.device)[:, None] * block
    last = torch.clamp(first + block - 1, max=n_k - 1)
    kb = torch.arange(_cdiv(n_k, block), device=kept.device)[None, :] * block
    lo, hi = torch.clamp(first - kb - block + 1, min=0), last - kb  # [nqb, nkb]; lo >= 0, so hi >= lo means hi >= 0
    ok = hi >= lo
    lo, hi = torch.where(ok, lo, 0).flatten(), torch.where(ok, hi + 1, 0).flatten()
    return ok & (kept[:, hi] > kept[:, lo]).view(kept.shape[0], *ok.shape)


@triton.jit
def _slash_blocks_kernel(KEPT, TABLE, OUT, kept_w, B: tl.constexpr, BK: tl.constexpr):
    qb = tl.program_id(0).to(tl.int64)
    meta = TABLE + tl.program_id(1).to(tl.int64) * 6  # [kept row, n_k, prefix, nqb, nkb, output offset]
    row, n_k, prefix = tl.load(meta), tl.load(meta + 1), tl.load(meta + 2)
    nqb, nkb, out = tl.load(meta + 3), tl.load(meta + 4), tl.load(meta + 5)
    if qb < nqb:  # the grid covers the part with the most query blocks
        first = prefix + qb * B
        last = tl.minimum(first + B - 1, n_k - 1)
        for c0 in range(0, nkb, BK):
            kb = c0 + tl.arange(0, BK)
            lo = tl.maximum(first - kb * B - B + 1, 0)
            hi = last - kb * B
            ok = (hi >= lo) & (kb < nkb)
            a = tl.load(KEPT + row * kept_w + lo, mask=ok, other=0)
            z = tl.load(KEPT + row * kept_w + hi + 1, mask=ok, other=0)
            tl.store(OUT + out + qb * nkb + kb, (ok & (z > a)).to(tl.uint8), mask=kb < nkb)


def block_sparse_keeps(n_q: int, n_k: int, cfg: BlockSparse, top_blocks: torch.Tensor) -> list[SlotKeep]:
    """`mmi_core.block_sparse_selection` of ``H`` heads sharing ``cfg``: ``top_blocks`` int ``[H, nqb, w]`` (-1
    padding; `mmi_core.estimate_block_sparse`) plus each query block's own block(s) and block 0. One keep per head,
    all from one ``[H, nqb, nkb]`` scatter: a 2D layer asks this of every head (28 per-head builds were ~420 host
    ops). Raises ValueError for another shape."""
    b = cfg.block
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    if top_blocks.dim() != 3 or top_blocks.shape[1] != nqb:
        raise ValueError(f"top_blocks must be int [H, {nqb}, w] ({n_q} rows), got {tuple(top_blocks.shape)}")
    dev, heads = top_blocks.device, top_blocks.shape[0]
    qo, ko = _identity(n_q, n_k, dev)
    first, last = _own_blocks(n_q, n_k, b, dev)
    kb = torch.arange(nkb, device=dev)
    base = ((kb[None, :] >= (first // b)[:, None]) & (kb[None, :] <= (last // b)[:, None])) | (kb == 0)[None, :]
    tb = top_blocks.to(torch.int64)
    slot = torch.where((tb >= 0) & (tb < nkb), tb, nkb)
    blocks = torch.zeros(heads, nqb, nkb + 1, dtype=torch.bool, device=dev).scatter_(2, slot, True)[:, :, :nkb]
    blocks |= base
    return [SlotKeep(qo, ko, bl) for bl in blocks.unbind(0)]


GRID_CHUNK_ELEMENTS = 2**28
"""Bound on one chunk of `grid_keeps`' per-unit difference arrays (int32 ``[units, nqb, nkb + 1]``: 1 GiB): at 1M
tokens (8,192 blocks of 128) four units at a time, at 128K every unit of a layer at once."""


def _column(x: int | torch.Tensor, units: int, dev: torch.device) -> torch.Tensor:
    """int64 ``[units, 1]`` from an int, a 0-dim tensor or a ``[units]`` tensor (kept on the device: no host read)."""
    if isinstance(x, int):  # a known stride: a cached device list, no copy
        return to_device([x] * units, dev).view(units, 1)
    t = to_device(x, dev, torch.int64)
    return t.reshape(-1, 1).expand(units, 1) if t.numel() == 1 else t.reshape(units, 1)


def grid_order(
    lt: LayoutTensors, stride: int | torch.Tensor, phase: int | torch.Tensor, start: int = 0
) -> torch.Tensor:
    """`mmi_core.grid_permutation(...).order` of tokens ``[start, n)`` on the layout's device (int64).

    ``stride``/``phase`` may be 0-dim device tensors (an online estimate): the order is computed in closed form,
    without a sort and without reading them on the host. Inside a video segment clipped to ``[a, b)``, the token at
    ``p`` has class ``c = (p - phase) mod stride``; its new index is ``a`` + (tokens of classes ``< c``) + (its rank
    in its class). A class ``c`` holds ``L // stride`` tokens plus one when ``(c - r0) mod stride < L mod stride``
    (``L = b - a``, ``r0`` the first token's class), so the count below ``c`` is ``c · (L // stride)`` plus the
    overlap of ``[0, c)`` with the cyclic run ``r0 … r0 + L mod stride - 1``."""
    return _grid_inverse(lt, _column(stride, 1, lt.device), _column(phase, 1, lt.device), start)[1][0]


def _grid_inverse(
    lt: LayoutTensors, stride: torch.Tensor, phase: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse, order) of the grid orders of tokens ``[start, n)`` for ``U`` units (``stride``, ``phase`` int64
    ``[U, 1]``), both int64 ``[U, n - start]``, indices relative to ``start``: ``order[u, inverse[u, i]] = i``.

    One Triton launch where the kernels run (`_grid_inverse_kernel`: each token's new index in closed form, stored
    and scattered in one pass); `grid_inverse_reference` otherwise (the tests' reference)."""
    if not triton_runs(stride):
        return grid_inverse_reference(lt, stride, phase, start)
    units, n_t = stride.shape[0], lt.layout.num_tokens - start
    inv = torch.empty(units, n_t, dtype=torch.int64, device=lt.device)
    order = torch.empty_like(inv)
    if units and n_t:
        tile = 1024
        _grid_inverse_kernel[(triton.cdiv(n_t, tile), units)](
            lt.segment_start, lt.segment_end, lt.is_video, stride.contiguous(), phase.contiguous(), inv, order,
            start, n_t, BLOCK=tile,
        )  # fmt: skip
    return inv, order


def grid_inverse_reference(
    lt: LayoutTensors, stride: torch.Tensor, phase: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_grid_inverse` in PyTorch ops. Inside a video segment clipped to ``[a, b)`` the token at ``p`` has class
    ``c = (p - phase) mod stride`` and goes to ``a + c · (L // stride) + extra + rank`` (`grid_order`)."""
    n = lt.layout.num_tokens
    p = torch.arange(start, n, device=lt.device)
    a = torch.clamp(lt.segment_start[start:], min=start)
    length = lt.segment_end[start:] - a
    c = torch.remainder(p - phase, stride)
    r0 = torch.remainder(a - phase, stride)
    rem = torch.remainder(length, stride)
    full = torch.div(length, stride, rounding_mode="floor")
    # classes below c holding one extra token: [0, c) against the cyclic run r0 ... r0 + rem - 1 (wrapping past s)
    extra = torch.clamp(torch.minimum(c, r0 + rem) - r0, min=0)
    extra = extra + torch.clamp(torch.minimum(c, r0 + rem - stride), min=0)
    rank = torch.div(p - a, stride, rounding_mode="floor")  # the class's tokens before p: one per stride step
    inv = torch.where(lt.is_video[start:], a + c * full + extra + rank, p) - start
    order = torch.empty_like(inv).scatter_(1, inv, (p - start).expand_as(inv))
    return inv, order


@triton.jit
def _grid_inverse_kernel(SEG_START, SEG_END, IS_VIDEO, STRIDE, PHASE, INV, ORDER, start, n_t, BLOCK: tl.constexpr):
    u = tl.program_id(1).to(tl.int64)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n_t
    p = start + i
    s = tl.load(STRIDE + u)
    ph = tl.load(PHASE + u)
    a = tl.maximum(tl.load(SEG_START + p, mask=ok, other=0), start)
    length = tl.load(SEG_END + p, mask=ok, other=0) - a
    # Triton's % truncates toward zero: shift into [0, s) as torch.remainder does
    c = ((p - ph) % s + s) % s
    r0 = ((a - ph) % s + s) % s
    rem = length % s  # length >= 0
    extra = tl.maximum(tl.minimum(c, r0 + rem) - r0, 0) + tl.maximum(tl.minimum(c, r0 + rem - s), 0)
    new = a + c * (length // s) + extra + (p - a) // s  # p >= a
    video = tl.load(IS_VIDEO + p, mask=ok, other=0) != 0
    inv = tl.where(video, new, p) - start
    tl.store(INV + u * n_t + i, inv, mask=ok)
    tl.store(ORDER + u * n_t + inv, i, mask=ok)


def grid_keeps(
    lt: LayoutTensors, n_q: int, cfg: Grid, stride: int | torch.Tensor, residues: torch.Tensor
) -> list[SlotKeep]:
    """`mmi_core.grid_selection` of ``U`` units (heads, or GQA groups pooled into one estimate) sharing ``cfg``: one
    keep per unit. ``stride``: an int, or int ``[U]`` on the device (an online estimate: never read on the host);
    ``residues`` int ``[U, lines]``, column 0 the phase. Units are built together, `GRID_CHUNK_ELEMENTS` at a time."""
    dev, b, n_k = lt.device, cfg.block, lt.layout.num_tokens
    res = residues.to(dev, torch.int64)
    if res.dim() != 2:
        raise ValueError(f"residues must be int [units, lines], got {tuple(res.shape)}")
    units = res.shape[0]
    strides = _column(stride, units, dev)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    step = max(1, GRID_CHUNK_ELEMENTS // (nqb * (nkb + 1)))
    return [
        kp for u in range(0, units, step) for kp in _grid_keeps(lt, n_q, cfg, strides[u : u + step], res[u : u + step])
    ]


def _grid_keeps(lt: LayoutTensors, n_q: int, cfg: Grid, stride: torch.Tensor, res: torch.Tensor) -> list[SlotKeep]:
    """`grid_keeps` of one chunk of units: ``stride`` int64 ``[U, 1]``, ``res`` int64 ``[U, lines]``."""
    b, n_k = cfg.block, lt.layout.num_tokens
    units = res.shape[0]
    prefix = n_k - n_q
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    kinv, ko = _grid_inverse(lt, stride, res[:, :1], 0)  # [U, n_k]
    qo = ko if prefix == 0 else _grid_inverse(lt, stride, res[:, :1], prefix)[1]  # [U, n_q]
    q_pos = qo + prefix if prefix else qo  # original position of each query-permuted row
    kmin, col_min, q_max, h_max = grid_block_bounds(lt, ko, q_pos, stride, res, cfg, b)
    diff = grid_row_intervals(lt, kinv, q_pos, stride, cfg.slash, cfg.local, b, nkb)
    blocks = grid_blocks(diff.view(units, nqb, nkb + 1), col_min, q_max, kmin, h_max)
    kos = ko.unbind(0)
    qos = kos if qo is ko else qo.unbind(0)  # one order object per unit for both: the boundary planner stacks one
    return [SlotKeep(*t) for t in zip(qos, kos, blocks.unbind(0), strict=True)]


def grid_block_bounds(
    lt: LayoutTensors,
    ko: torch.Tensor,
    q_pos: torch.Tensor,
    stride: torch.Tensor,
    res: torch.Tensor,
    cfg: Grid,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-block facts of ``U`` Grid units, the inputs of `grid_blocks`: ``(k_min, col_min)`` int64 ``[U, nkb]``
    (smallest key position of each key block of the key order ``ko [U, n_k]``, and smallest among its sink keys
    (``pos < cfg.sink``) and, with ``cfg.vline``, its line keys; ``n_k`` when none) and ``(q_max, h_max)`` int64
    ``[U, nqb]`` (largest row position of each query block of ``q_pos [U, n_q]``, and largest among its line rows
    with ``cfg.hline``; -1 when none). A token is on a line when it is video and its position is congruent to one
    of ``res [U, lines]`` modulo ``stride [U, 1]``. One Triton launch where the kernels run (was ~30 block reductions
    and masks per call); `grid_block_bounds_reference` otherwise."""
    if not triton_runs(ko):
        return grid_block_bounds_reference(lt, ko, q_pos, stride, res, cfg, block)
    (units, n_k), n_q = ko.shape, q_pos.shape[1]
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    dev = ko.device
    k_min = torch.empty(units, nkb, dtype=torch.int64, device=dev)
    col_min, q_max = torch.empty_like(k_min), torch.empty(units, nqb, dtype=torch.int64, device=dev)
    h_max = torch.empty_like(q_max)
    if units and max(nqb, nkb):
        _grid_bounds_kernel[(max(nqb, nkb), units)](
            ko.contiguous(), q_pos.contiguous(), stride.contiguous(), res.contiguous(), lt.is_video,
            k_min, col_min, q_max, h_max, n_k, n_q, nkb, nqb, res.shape[1], cfg.sink, block,
            VLINE=cfg.vline, HLINE=cfg.hline, B=triton.next_power_of_2(block),
        )  # fmt: skip
    return k_min, col_min, q_max, h_max


def grid_block_bounds_reference(
    lt: LayoutTensors,
    ko: torch.Tensor,
    q_pos: torch.Tensor,
    stride: torch.Tensor,
    res: torch.Tensor,
    cfg: Grid,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`grid_block_bounds` in PyTorch ops (padded block reductions)."""
    (units, n_k), n_q = ko.shape, q_pos.shape[1]
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    pos = torch.arange(n_k, device=ko.device)
    big = n_k  # "no such key" position
    line_res = torch.remainder(res, stride)  # [U, lines]
    on_line = lt.is_video & (torch.remainder(pos, stride)[:, :, None] == line_res[:, None, :]).any(2)  # [U, n_k]

    def block_reduce(x: torch.Tensor, nb: int, fill: int, op: str) -> torch.Tensor:  # [U, n] -> [U, nb] per block
        blocks = torch.nn.functional.pad(x, (0, nb * block - x.shape[1]), value=fill).view(units, nb, block)
        return blocks.amin(2) if op == "min" else blocks.amax(2)

    def min_where(mask_k: torch.Tensor) -> torch.Tensor:  # per key block: smallest position among keys in mask
        return block_reduce(torch.where(mask_k.gather(1, ko), ko, big), nkb, big, "min")

    k_min = block_reduce(ko, nkb, big, "min")
    col_min = torch.full((units, nkb), big, dtype=torch.int64, device=ko.device)
    if cfg.sink:
        col_min = torch.minimum(col_min, min_where((pos < cfg.sink).expand(units, n_k)))
    if cfg.vline:
        col_min = torch.minimum(col_min, min_where(on_line))
    q_max = block_reduce(q_pos, nqb, -1, "max")
    h_max = torch.full((units, nqb), -1, dtype=torch.int64, device=ko.device)
    if cfg.hline:
        h_max = block_reduce(torch.where(on_line.gather(1, q_pos), q_pos, -1), nqb, -1, "max")
    return k_min, col_min, q_max, h_max


@triton.jit
def _on_line(RES, IS_VIDEO, p, ok, s, u, lines):
    """Whether positions ``p`` are video tokens congruent to one of unit ``u``'s residues modulo ``s``."""
    r = ((p % s) + s) % s
    hit = r < 0  # all false
    for j in range(lines):
        lr = tl.load(RES + u * lines + j)
        hit = hit | (r == ((lr % s) + s) % s)  # Triton's % truncates toward zero: shift into [0, s)
    return hit & (tl.load(IS_VIDEO + p, mask=ok, other=0) != 0)


@triton.jit
def _grid_bounds_kernel(KO, Q_POS, STRIDE, RES, IS_VIDEO, K_MIN, COL_MIN, Q_MAX, H_MAX, n_k, n_q, nkb, nqb, lines,
                        sink, block, VLINE: tl.constexpr, HLINE: tl.constexpr, B: tl.constexpr):  # fmt: skip
    blk = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1).to(tl.int64)
    s = tl.load(STRIDE + u)
    lane = tl.arange(0, B)
    i = blk * block + lane
    inside = lane < block  # B is block rounded up to a power of two
    if blk < nkb:
        ok = inside & (i < n_k)
        kp = tl.load(KO + u * n_k + i, mask=ok, other=n_k)
        tl.store(K_MIN + u * nkb + blk, tl.min(kp, 0))
        col = ok & (kp < sink)
        if VLINE:
            col = col | (ok & _on_line(RES, IS_VIDEO, kp, ok, s, u, lines))
        tl.store(COL_MIN + u * nkb + blk, tl.min(tl.where(col, kp, n_k), 0))
    if blk < nqb:
        ok = inside & (i < n_q)
        qp = tl.load(Q_POS + u * n_q + i, mask=ok, other=-1)
        tl.store(Q_MAX + u * nqb + blk, tl.max(qp, 0))
        h = tl.full([B], -1, tl.int64)
        if HLINE:
            h = tl.where(ok & _on_line(RES, IS_VIDEO, qp, ok, s, u, lines), qp, -1)
        tl.store(H_MAX + u * nqb + blk, tl.max(h, 0))


def grid_row_intervals(
    lt: LayoutTensors,
    kinv: torch.Tensor,
    q_pos: torch.Tensor,
    stride: torch.Tensor,
    slash: bool,
    local: int,
    block: int,
    nkb: int,
) -> torch.Tensor:
    """int32 ``[U, nqb · (nkb + 1)]``: each query row's interval of key blocks in key-permuted order, as +1 at its
    first block and -1 after its last, summed per (unit, query block) — the input of `grid_blocks`. Row ``i`` of
    unit ``u`` (original position ``q_pos[u, i]``, its key index ``kinv[u, q_pos]``) keeps its own key's block
    ``own``; with ``slash`` a video row also its class's keys up to its own (the class's first key index: its key
    index minus its rank in the class); with ``local`` the ``local`` blocks before ``own``. One Triton launch
    (integer atomics: exact) where the kernels run; `grid_row_intervals_reference` otherwise."""
    if not triton_runs(q_pos):
        return grid_row_intervals_reference(lt, kinv, q_pos, stride, slash, local, block, nkb)
    units, n_q = q_pos.shape
    diff = torch.zeros(units, _cdiv(n_q, block) * (nkb + 1), dtype=torch.int32, device=q_pos.device)
    if units and n_q:
        tile = 1024
        _grid_rows_kernel[(triton.cdiv(n_q, tile), units)](
            kinv.contiguous(), q_pos.contiguous(), stride.contiguous(), lt.segment_start, lt.is_video, diff,
            kinv.shape[1], n_q, nkb, local, B=block, SLASH=slash, BLOCK=tile,
        )  # fmt: skip
    return diff


def grid_row_intervals_reference(
    lt: LayoutTensors,
    kinv: torch.Tensor,
    q_pos: torch.Tensor,
    stride: torch.Tensor,
    slash: bool,
    local: int,
    block: int,
    nkb: int,
) -> torch.Tensor:
    """`grid_row_intervals` in PyTorch ops (scatter-adds of the rows' interval ends)."""
    units, n_q = q_pos.shape
    q_key = kinv.gather(1, q_pos)  # key-permuted index of each row's own key
    own = q_key // block
    lo = own
    if slash:
        rank = torch.div(q_pos - lt.segment_start[q_pos], stride, rounding_mode="floor")  # the class's keys before it
        lo = torch.where(lt.is_video[q_pos], (q_key - rank) // block, own)
    if local:
        lo = torch.minimum(lo, torch.clamp(own - local, min=0))
    diff = torch.zeros(units, _cdiv(n_q, block) * (nkb + 1), dtype=torch.int32, device=q_pos.device)
    row = (torch.arange(n_q, device=q_pos.device) // block) * (nkb + 1)
    ones = torch.ones_like(lo, dtype=torch.int32)
    diff.scatter_add_(1, row + lo, ones)
    diff.scatter_add_(1, row + own + 1, -ones)
    return diff


@triton.jit
def _grid_rows_kernel(KINV, Q_POS, STRIDE, SEG_START, IS_VIDEO, DIFF, n_k, n_q, nkb, local,
                      B: tl.constexpr, SLASH: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    u = tl.program_id(1).to(tl.int64)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n_q
    p = tl.load(Q_POS + u * n_q + i, mask=ok, other=0)
    key = tl.load(KINV + u * n_k + p, mask=ok, other=0)
    own = key // B
    lo = own
    if SLASH:
        rank = (p - tl.load(SEG_START + p, mask=ok, other=0)) // tl.load(STRIDE + u)  # p >= its segment's start
        video = tl.load(IS_VIDEO + p, mask=ok, other=0) != 0
        lo = tl.where(video, (key - rank) // B, own)  # key - rank >= 0: the class's first key index
    lo = tl.minimum(lo, tl.maximum(own - local, 0))  # local = 0: own - 0 >= lo already
    row = (i // B) * (nkb + 1)
    base = DIFF + u * ((n_q + B - 1) // B) * (nkb + 1) + row
    tl.atomic_add(base + lo, tl.full([BLOCK], 1, tl.int32), mask=ok, sem="relaxed")
    tl.atomic_add(base + own + 1, tl.full([BLOCK], -1, tl.int32), mask=ok, sem="relaxed")


@triton.jit
def _grid_blocks_kernel(DIFF, COL_MIN, Q_MAX, K_MIN, H_MAX, OUT, nqb, nkb, BK: tl.constexpr):
    qb = tl.program_id(0).to(tl.int64)
    u = tl.program_id(1).to(tl.int64)
    q_max = tl.load(Q_MAX + u * nqb + qb)
    h_max = tl.load(H_MAX + u * nqb + qb)
    row = u * nqb + qb
    carry = tl.zeros([], tl.int32)
    for c0 in range(0, nkb, BK):
        kb = c0 + tl.arange(0, BK)
        m = kb < nkb
        d = tl.load(DIFF + row * (nkb + 1) + kb, mask=m, other=0)
        cover = tl.cumsum(d, 0) + carry
        carry += tl.sum(d, 0)
        keep = (cover > 0) | (tl.load(COL_MIN + u * nkb + kb, mask=m, other=0) <= q_max)
        keep = keep | (tl.load(K_MIN + u * nkb + kb, mask=m, other=0) <= h_max)
        tl.store(OUT + row * nkb + kb, keep.to(tl.uint8), mask=m)


def grid_blocks(
    diff: torch.Tensor, col_min: torch.Tensor, q_max: torch.Tensor, k_min: torch.Tensor, h_max: torch.Tensor
) -> torch.Tensor:
    """Grid key blocks bool ``[U, nqb, nkb]`` of ``U`` units from per-block facts: ``diff`` int32
    ``[U, nqb, nkb + 1]`` (+1 where a row's interval starts, -1 after it ends: covered where the running sum is
    positive), ``col_min`` / ``k_min`` int64 ``[U, nkb]`` (smallest sink-or-vline / any key position of each key
    block), ``q_max`` / ``h_max`` int64 ``[U, nqb]`` (largest row / line-row position of each query block). Kept:
    covered, or ``col_min <= q_max``, or ``k_min <= h_max``.

    One Triton program per (query block, unit) on CUDA or under the interpreter (a row's scan, three comparisons
    and the store in one pass over ``nkb``); the PyTorch expression otherwise (the reference of the tests)."""
    units, nqb, nkb = q_max.shape[0], q_max.shape[1], k_min.shape[1]
    if not triton_runs(diff):
        cover = diff.cumsum(2)[:, :, :nkb] > 0
        return cover | (col_min[:, None, :] <= q_max[:, :, None]) | (k_min[:, None, :] <= h_max[:, :, None])
    out = torch.empty(units, nqb, nkb, dtype=torch.uint8, device=diff.device)
    if units and nqb and nkb:
        _grid_blocks_kernel[(nqb, units)](
            diff.contiguous(),
            col_min.contiguous(),
            q_max.contiguous(),
            k_min.contiguous(),
            h_max.contiguous(),
            out,
            nqb,
            nkb,
            BK=1024,
        )
    return out.view(torch.bool)


def union_keeps(keeps: Sequence[SlotKeep]) -> SlotKeep:
    """Union of keep sets that share permutations (a GQA group executing together). The same keep object listed
    several times (a group whose heads share one estimate) is taken once, without comparing orders."""
    unique = list({id(kp): kp for kp in keeps}.values())
    first = unique[0]
    if len(unique) == 1:
        return first
    for kp in unique[1:]:
        if not (torch.equal(kp.q_order, first.q_order) and torch.equal(kp.k_order, first.k_order)):
            raise ValueError("keeps of one executing group must share their permutations")
    blocks = torch.stack([kp.blocks for kp in unique]).any(0)
    cols = [kp.column_ids for kp in unique if kp.column_ids is not None]
    column_ids = torch.cat(cols, dim=1) if cols else None  # duplicates are removed by the index builder
    return SlotKeep(first.q_order, first.k_order, blocks, column_ids)
