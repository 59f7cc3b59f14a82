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

import torch
import triton
import triton.language as tl

from mmi_core import AShape, BlockSparse, Grid, Modality, ModalityLayout, VerticalSlash
from mmi_core.estimation import grid_key_mask
from mmi_kernels.dispatch import triton_runs
from mmi_kernels.index import SlotKeep

__all__ = [
    "LayoutTensors",
    "ashape_keep",
    "block_sparse_keep",
    "dense_keep",
    "grid_blocks",
    "grid_keep",
    "grid_order",
    "union_keeps",
    "vertical_slash_keep",
]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class LayoutTensors:
    """Per-token facts of one layout on a device, computed once per batch (plan time): video mask, segment bounds,
    and the Grid fold's key masks per estimation start (`grid_fold_masks`, cached: every layer asks again)."""

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
        self.seg_id, self.is_video = seg_id.to(self.device), is_video.to(self.device)
        self.segment_start, self.segment_end = start.to(self.device), end.to(self.device)
        self.video_segments = [(s.start, s.end) for s in layout.segments_of(Modality.VIDEO)]
        self.modality = layout.token_modalities().to(self.device)  # int [n] `Modality` codes
        self._fold_masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._truncated: dict[int, LayoutTensors] = {}

    def truncated(self, layout: ModalityLayout) -> LayoutTensors:
        """The layout tensors of ``layout``, a prefix of this one (a boundary head's sub-problem), built once per
        batch: every layer asks again."""
        if layout.num_tokens not in self._truncated:
            self._truncated[layout.num_tokens] = LayoutTensors(layout, self.device)
        return self._truncated[layout.num_tokens]

    def grid_fold_masks(self, first_row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`mmi_core.grid_key_mask` of this layout for estimation rows starting at ``first_row``, on the device."""
        if first_row not in self._fold_masks:
            fold, neutral = grid_key_mask(self.layout, first_row)
            self._fold_masks[first_row] = (fold.to(self.device), neutral.to(self.device))
        return self._fold_masks[first_row]


def _identity(n_q: int, n_k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n_q, device=device), torch.arange(n_k, device=device)


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


def vertical_slash_keep(
    n_q: int, n_k: int, cfg: VerticalSlash, columns: torch.Tensor, offsets: torch.Tensor
) -> SlotKeep:
    """`mmi_core.vertical_slash_selection` from bool masks ``columns [n_k]`` (key positions) and ``offsets [n_k]``
    (diagonal offsets), sinks and local diagonals added here. A diagonal spans ``block`` consecutive keys of a query
    block, so it touches at most two key blocks: ``(first - d) // block`` and ``(last - d) // block``."""
    dev, b = columns.device, cfg.block
    qo, ko = _identity(n_q, n_k, dev)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    idx = torch.arange(n_k, device=dev)
    offs = idx[offsets | (idx < cfg.local)]  # one host sync for the list length; see wrapper notes
    first, last = _own_blocks(n_q, n_k, b, dev)
    lo = torch.clamp(first[:, None] - offs[None, :], min=0) // b  # [nqb, n_off]
    hi = last[:, None] - offs[None, :]
    valid = hi >= 0
    hi = torch.clamp(hi, min=0) // b
    blocks = torch.zeros(nqb, nkb + 1, dtype=torch.bool, device=dev)  # column nkb swallows invalid diagonals
    sink = torch.full_like(lo, nkb)
    blocks.scatter_(1, torch.where(valid, lo, sink), True)
    blocks.scatter_(1, torch.where(valid, hi, sink), True)
    cols = idx[columns | (idx < cfg.sink)]
    return SlotKeep(qo, ko, blocks[:, :nkb], cols[None, :].expand(nqb, cols.numel()))


def block_sparse_keep(n_q: int, n_k: int, cfg: BlockSparse, top_blocks: torch.Tensor) -> SlotKeep:
    """`mmi_core.block_sparse_selection`: ``top_blocks`` int [nqb, w] (-1 padding) plus own block(s) and block 0."""
    dev, b = top_blocks.device, cfg.block
    qo, ko = _identity(n_q, n_k, dev)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    first, last = _own_blocks(n_q, n_k, b, dev)
    kb = torch.arange(nkb, device=dev)
    blocks = (kb[None, :] >= (first // b)[:, None]) & (kb[None, :] <= (last // b)[:, None])
    blocks[:, 0] = True
    tb = top_blocks.to(torch.int64)
    ok = (tb >= 0) & (tb < nkb)
    extra = torch.zeros(nqb, nkb + 1, dtype=torch.bool, device=dev)
    extra.scatter_(1, torch.where(ok, tb, nkb), True)
    return SlotKeep(qo, ko, blocks | extra[:, :nkb])


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
    return _grid_inverse(lt, stride, phase, start)[1]


def _grid_inverse(
    lt: LayoutTensors, stride: int | torch.Tensor, phase: int | torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse, order) of the grid order of tokens ``[start, n)``, both int64 ``[n - start]``, indices relative to
    ``start``: ``order[inverse[i]] = i``."""
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
    order = torch.empty_like(inv)
    order[inv] = p - start
    return inv, order


def grid_keep(lt: LayoutTensors, n_q: int, cfg: Grid, stride: int | torch.Tensor, residues: torch.Tensor) -> SlotKeep:
    """`mmi_core.grid_selection` for ``stride`` (an int, or a 0-dim device tensor: no host read) and kept lines
    ``residues`` (int [lines], ``[0]`` the phase)."""
    dev, b, n_k = lt.device, cfg.block, lt.layout.num_tokens
    res = residues.to(dev, torch.int64).flatten()
    stride = stride.to(dev, torch.int64) if isinstance(stride, torch.Tensor) else stride
    phase = res[0]
    prefix = n_k - n_q
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    kinv, ko = _grid_inverse(lt, stride, phase, 0)
    qo = _grid_inverse(lt, stride, phase, prefix)[1]
    pos = torch.arange(n_k, device=dev)
    big = n_k  # "no such key" position
    on_line = lt.is_video & (torch.remainder(pos, stride)[:, None] == torch.remainder(res, stride)[None, :]).any(1)
    kpos = ko  # original position at each key-permuted index
    kmin = torch.nn.functional.pad(kpos, (0, nkb * b - n_k), value=big).view(nkb, b).amin(1)

    def min_where(mask_k: torch.Tensor) -> torch.Tensor:  # per key block: smallest position among keys in mask
        m = torch.where(mask_k[kpos], kpos, big)
        return torch.nn.functional.pad(m, (0, nkb * b - n_k), value=big).view(nkb, b).amin(1)

    q_pos = qo + prefix  # original position of each query-permuted row
    q_block = torch.arange(n_q, device=dev) // b
    q_max = torch.full((nqb,), -1, dtype=torch.int64, device=dev).scatter_reduce(0, q_block, q_pos, "amax")
    # key blocks kept whole: those holding a sink or vline key causal for some row of the query block
    col_min = torch.full((nkb,), big, dtype=torch.int64, device=dev)
    if cfg.sink:
        col_min = torch.minimum(col_min, min_where(pos < cfg.sink))
    if cfg.vline:
        col_min = torch.minimum(col_min, min_where(on_line))
    h_max = torch.full((nqb,), -1, dtype=torch.int64, device=dev)  # hline: the last line row of each query block
    if cfg.hline:
        h_max = h_max.scatter_reduce(0, q_block, torch.where(on_line[q_pos], q_pos, -1), "amax")
    own = kinv[q_pos] // b  # key block of each row's own key
    # rows' intervals in key-permuted order, as [lo, own] key blocks: own key always; own class up to itself
    # (slash); the `local` key blocks before the own one
    lo = own.clone()
    if cfg.slash:
        # first key-permuted index of each row's (segment, residue) class: its key index minus its rank in the class
        s0 = lt.segment_start[q_pos]
        rank = torch.div(q_pos - s0, stride, rounding_mode="floor")  # the class's keys before the row's own
        lo = torch.where(lt.is_video[q_pos], (kinv[q_pos] - rank) // b, own)
    if cfg.local:
        lo = torch.minimum(lo, torch.clamp(own - cfg.local, min=0))
    # interval starts and ends per (query block, key block); integer sums, so the atomics are exact
    diff = torch.zeros(nqb * (nkb + 1), dtype=torch.int32, device=dev)
    ones = torch.ones_like(lo, dtype=torch.int32)
    diff.scatter_add_(0, q_block * (nkb + 1) + lo, ones)
    diff.scatter_add_(0, q_block * (nkb + 1) + own + 1, -ones)
    blocks = grid_blocks(diff.view(nqb, nkb + 1), col_min, q_max, kmin, h_max)
    return SlotKeep(qo, ko, blocks)


@triton.jit
def _grid_blocks_kernel(DIFF, COL_MIN, Q_MAX, K_MIN, H_MAX, OUT, nkb, BK: tl.constexpr):
    qb = tl.program_id(0).to(tl.int64)
    q_max = tl.load(Q_MAX + qb)
    h_max = tl.load(H_MAX + qb)
    carry = tl.zeros([], tl.int32)
    for c0 in range(0, nkb, BK):
        kb = c0 + tl.arange(0, BK)
        m = kb < nkb
        d = tl.load(DIFF + qb * (nkb + 1) + kb, mask=m, other=0)
        cover = tl.cumsum(d, 0) + carry
        carry += tl.sum(d, 0)
        keep = (cover > 0) | (tl.load(COL_MIN + kb, mask=m, other=0) <= q_max)
        keep = keep | (tl.load(K_MIN + kb, mask=m, other=0) <= h_max)
        tl.store(OUT + qb * nkb + kb, keep.to(tl.uint8), mask=m)


def grid_blocks(
    diff: torch.Tensor, col_min: torch.Tensor, q_max: torch.Tensor, k_min: torch.Tensor, h_max: torch.Tensor
) -> torch.Tensor:
    """Grid key blocks bool ``[nqb, nkb]`` from per-block facts: ``diff`` int32 ``[nqb, nkb + 1]`` (+1 where a row's
    interval starts, -1 after it ends: covered where the running sum is positive), ``col_min`` / ``k_min`` int64
    ``[nkb]`` (smallest sink-or-vline / any key position of each key block), ``q_max`` / ``h_max`` int64 ``[nqb]``
    (largest row / line-row position of each query block). Kept: covered, or ``col_min <= q_max``, or
    ``k_min <= h_max``.

    One Triton program per query block on CUDA or under the interpreter (a row's scan, three comparisons and the
    store in one pass over ``nqb · nkb``); the PyTorch expression otherwise (the reference of the tests)."""
    nqb, nkb = q_max.numel(), k_min.numel()
    if not triton_runs(diff):
        return (diff.cumsum(1)[:, :nkb] > 0) | (col_min[None, :] <= q_max[:, None]) | (k_min[None, :] <= h_max[:, None])
    out = torch.empty(nqb, nkb, dtype=torch.uint8, device=diff.device)
    if nqb and nkb:
        _grid_blocks_kernel[(nqb,)](diff.contiguous(), col_min, q_max, k_min, h_max, out, nkb, BK=1024)
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
