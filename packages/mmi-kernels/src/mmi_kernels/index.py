"""`SparseIndex`: the keep sets of a whole batch as fixed-capacity lists the prefill kernel reads directly.

Shape of the data (S head slots, R requests, TQ/TK query/key tokens of all requests, TQB/TKB query/key blocks of all
requests, every block ``block`` tokens of the slot's *permuted* order):

- a **head slot** is what one kernel program row-tile serves: one KV head whose GQA group executes together (the
  group shares one `Selection`), or one query head when heads execute separately. ``slot_q_head[s]`` is its first
  query head, ``slot_num_heads[s]`` how many consecutive query heads it serves, ``slot_kv_head[s]`` their KV head.
  Both kinds may be mixed in one index (and one launch).
- per (slot, query block): ``block_prefix``: the kept key blocks that lead the slot's key blocks sorted by their
  smallest original position (``k_blocks_by_pos``) are stored as a count, not a list; ``block_count`` key blocks
  (request-local ids, ascending) at ``block_ids[block_start : block_start + block_count]`` are the other kept
  blocks; ``column_count`` columns (request-local *key-permuted* ids, ascending) at ``column_ids[column_start:]``
  the kept single columns. A Grid ``hline`` block (its line rows keep every causal key) or a dense head therefore
  costs one integer, not a list as long as the sequence. See docs/kernels/NOTES.md.
- the lists are **ragged** (CSR, as flashinfer's BSR): stored back to back in (slot, query block) order, so
  ``block_start`` is the exclusive prefix sum of ``block_count`` and the index holds exactly its kept entries. A
  fixed width per list (the first design) multiplied the widest list of any slot by every (slot, query block):
  11.4 GB for one layer of Q-boundary heads at 1M tokens, 0.89 GB ragged (H200, docs/kernels/NOTES.md).
- per (slot, request): ``q_order`` / ``k_order`` (int32, request-local): the token at permuted row ``p`` is
  ``order[p]``; queries of a request are the last ``n_q`` of its ``n_k`` keys (original position = prefix + index).
- per (slot, request): ``q_rows``, how many leading rows of the slot's query order it computes: all ``n_q``, or
  fewer for a **row-group slot** (one part of a boundary head, `mmi_core.RowGroups`; the head's other rows are
  computed by its other slots, each in its own orders). A query head may thus appear in several slots, whose rows
  partition its rows.
- per (slot, block): smallest/largest original position of its computed rows (``q_pos_min`` ...): a tile needs a
  causal mask only when ``k_pos_max > q_pos_min``; the kernel skips the mask everywhere else.

Lists are exact and canonical: blocks and columns that hold no causal pair for the query block are dropped, columns
inside kept blocks are dropped (mmi_core.Selection guarantees that already), so the kept (query, key) pairs are
exactly ``mmi_core.keep_mask`` and no pair is visited twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from itertools import accumulate

import torch

from mmi_core import AShape, BlockSparse, Dense, Grid, PatternConfig, Selection, VerticalSlash, to_device
from mmi_kernels.block_lists import block_ids, lead_and_count

__all__ = [
    "BlockSparseRows",
    "IndexCapacityError",
    "SlotKeep",
    "SparseIndex",
    "index_from_keeps",
    "index_from_selections",
    "index_keep_mask",
    "index_to_bsr",
    "pattern_capacity",
]


class IndexCapacityError(ValueError):
    """A keep set needs more list entries than the capacity fixed at plan time."""


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def padded_lists(start: torch.Tensor, count: torch.Tensor, flat: torch.Tensor, width: int) -> torch.Tensor:
    """Ragged lists ``flat[start[i] : start[i] + count[i]]`` as int64 ``[n, width]`` (-1 past each count; a count
    over ``width`` is cut, so pass the widest)."""
    j = torch.arange(width, device=flat.device)
    valid = j[None, :] < count.reshape(-1, 1)
    at = torch.where(valid, start.reshape(-1, 1) + j[None, :], 0)
    return torch.where(valid, flat.long()[at], -1)


@dataclass(frozen=True)
class SlotKeep:
    """Keep set of one (request, head slot) in the form GPU estimators produce.

    q_order: int [n_q] (query index at each permuted row), k_order: int [n_k]; prefix = n_k - n_q.
    blocks: bool [ceil(n_q/block), ceil(n_k/block)] in permuted orders.
    column_ids: int [r, C] key-permuted column ids of the first r <= ceil(n_q/block) query blocks (the others have
    none: a part's lists stop after its rows), -1 = padding (may repeat, may fall inside kept blocks: both are
    removed), or None.
    rows: the first ``rows`` permuted rows are computed (a part of a boundary head, `mmi_core.RowGroups`), or None
    for all ``n_q``.
    """

    q_order: torch.Tensor
    k_order: torch.Tensor
    blocks: torch.Tensor
    column_ids: torch.Tensor | None = None
    rows: int | None = None

    @classmethod
    def from_selection(cls, sel: Selection) -> SlotKeep:
        cols = None
        if sel.columns is not None:
            n_k = sel.n_k
            key = torch.where(sel.columns, torch.arange(n_k, device=sel.columns.device), n_k)
            width = int(sel.columns.sum(1).max())
            srt = torch.sort(key, dim=1).values[:, : max(width, 1)]
            cols = torch.where(srt < n_k, srt, -1)
        return cls(sel.q_perm.order, sel.k_perm.order, sel.blocks, cols, sel.rows)


@dataclass(frozen=True)
class SparseIndex:
    """Keep sets of a batch (R requests x S head slots) as fixed-capacity lists. All tensors int32 on one device.

    slot_q_head, slot_num_heads, slot_kv_head: [S]
    cu_seqlens_q, cu_seqlens_k, cu_qblocks, cu_kblocks: [R + 1] (prefix sums of tokens and blocks per request)
    qblock_request: [TQB] request of each global query block
    q_order: [S, TQ], k_order: [S, TK] request-local token index at each permuted row (segments by cu_seqlens)
    q_rows: [S, R] permuted rows each slot computes per request (n_q, or fewer for a row-group slot)
    q_pos_min, q_pos_max: [S, TQB]; k_pos_min, k_pos_max: [S, TKB] original positions (prefix included)
    k_blocks_by_pos: [S, TKB] request-local key-block ids sorted by k_pos_min (stable)
    block_prefix, block_count: [S, TQB]; block_start: int64 [S, TQB]; block_ids: [max(NB, 1)] (NB kept entries)
    column_count: [S, TQB]; column_start: int64 [S, TQB]; column_ids: [max(NC, 1)]
    block_capacity, column_capacity: the bound every list respects (given at plan time, else the widest list)
    keys_identity: True when no slot permutes keys: the kernel then skips the key-order gather
    one_slot_per_kv_head: True when the slots are exactly one per KV head (each serving its whole group)
    slot_heads_max: the largest slot_num_heads entry, kept on the host (0 when the builder did not give it)
    """

    block: int
    num_q_heads: int
    num_kv_heads: int
    seqlens_q: tuple[int, ...]
    seqlens_k: tuple[int, ...]
    slot_q_head: torch.Tensor
    slot_num_heads: torch.Tensor
    slot_kv_head: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    cu_qblocks: torch.Tensor
    cu_kblocks: torch.Tensor
    qblock_request: torch.Tensor
    q_order: torch.Tensor
    k_order: torch.Tensor
    q_rows: torch.Tensor
    q_pos_min: torch.Tensor
    q_pos_max: torch.Tensor
    k_pos_min: torch.Tensor
    k_pos_max: torch.Tensor
    k_blocks_by_pos: torch.Tensor
    block_prefix: torch.Tensor
    block_count: torch.Tensor
    block_start: torch.Tensor
    block_ids: torch.Tensor
    column_count: torch.Tensor
    column_start: torch.Tensor
    column_ids: torch.Tensor
    block_capacity: int
    column_capacity: int
    keys_identity: bool = False  # every k_order is the identity (plan-time fact; False is always safe)
    one_slot_per_kv_head: bool = False  # plan-time fact (False is always safe)
    slot_heads_max: int = 0  # plan-time max of slot_num_heads (0: unknown, read from the device when asked)

    def __post_init__(self) -> None:
        s, r = self.num_slots, self.num_requests
        tq, tk = sum(self.seqlens_q), sum(self.seqlens_k)
        tqb = sum(_cdiv(n, self.block) for n in self.seqlens_q)
        tkb = sum(_cdiv(n, self.block) for n in self.seqlens_k)
        want = {
            "slot_num_heads": (s,),
            "slot_kv_head": (s,),
            "cu_seqlens_q": (r + 1,),
            "cu_seqlens_k": (r + 1,),
            "cu_qblocks": (r + 1,),
            "cu_kblocks": (r + 1,),
            "qblock_request": (tqb,),
            "q_order": (s, tq),
            "k_order": (s, tk),
            "q_rows": (s, r),
            "q_pos_min": (s, tqb),
            "q_pos_max": (s, tqb),
            "k_pos_min": (s, tkb),
            "k_pos_max": (s, tkb),
            "k_blocks_by_pos": (s, tkb),
            "block_prefix": (s, tqb),
            "block_count": (s, tqb),
            "column_count": (s, tqb),
        }
        for name, shape in want.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or t.dtype != torch.int32 or t.device != self.slot_q_head.device:
                raise ValueError(
                    f"SparseIndex.{name} must be int32 {shape} on {self.slot_q_head.device}, "
                    f"got {t.dtype} {tuple(t.shape)} on {t.device}"
                )
        for kind in ("block", "column"):
            start, ids = getattr(self, f"{kind}_start"), getattr(self, f"{kind}_ids")
            if tuple(start.shape) != (s, tqb) or start.dtype != torch.int64 or start.device != self.device:
                raise ValueError(
                    f"SparseIndex.{kind}_start must be int64 {(s, tqb)}, got {start.dtype} {tuple(start.shape)}"
                )
            if ids.dim() != 1 or ids.numel() < 1 or ids.dtype != torch.int32 or ids.device != self.device:
                raise ValueError(
                    f"SparseIndex.{kind}_ids must be int32 [entries >= 1], got {ids.dtype} {tuple(ids.shape)}"
                )
        if any(nq > nk for nq, nk in zip(self.seqlens_q, self.seqlens_k, strict=True)):
            raise ValueError("every request needs n_q <= n_k (queries are the last n_q keys)")

    @property
    def num_slots(self) -> int:
        return self.slot_q_head.numel()

    @property
    def num_requests(self) -> int:
        return len(self.seqlens_q)

    @property
    def total_qblocks(self) -> int:
        return self.qblock_request.numel()

    @property
    def max_heads_per_slot(self) -> int:
        """The most query heads of one slot: known at plan time (the kernel launch reads nothing), else one read."""
        return self.slot_heads_max or int(self.slot_num_heads.max())

    @property
    def device(self) -> torch.device:
        return self.slot_q_head.device

    def nbytes(self) -> int:
        """Bytes held by the index tensors."""
        tensors = [getattr(self, f.name) for f in fields(self)]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def lists(self, kind: str, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``kind`` ("block" or "column") lists of one slot as a padded matrix: (count int64 [TQB], ids int64
        [TQB, width], -1 past each count; width = the slot's widest list, >= 1). One host read (the width)."""
        if kind not in ("block", "column"):
            raise ValueError(f"kind must be 'block' or 'column', got {kind!r}")
        count = getattr(self, f"{kind}_count")[slot].long()
        width = max(int(count.max()), 1) if count.numel() else 1
        return count, padded_lists(getattr(self, f"{kind}_start")[slot], count, getattr(self, f"{kind}_ids"), width)

    def has_row_groups(self) -> bool:
        """True when some slot computes only part of its rows (a boundary head's parts). One host read."""
        seq = torch.tensor(self.seqlens_q, dtype=torch.int32, device=self.device)
        return bool((self.q_rows != seq[None, :]).any())

    def to(self, device: torch.device | str) -> SparseIndex:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return SparseIndex(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})


def _default_slots(num_slots: int, hq: int, hkv: int) -> list[tuple[int, int]]:
    g = hq // hkv
    if num_slots == hkv:
        return [(s * g, g) for s in range(hkv)]
    if num_slots == hq:
        return [(h, 1) for h in range(hq)]
    raise ValueError(
        f"{num_slots} slots per request is neither {hkv} (KV heads, groups executing together) nor {hq} "
        f"(query heads); pass slot_heads=[(first_query_head, num_heads), ...]"
    )


def _check_slots(
    slot_heads: Sequence[tuple[int, int]], rows: Sequence[Sequence[int]], seq_q: Sequence[int], hq: int, hkv: int
) -> None:
    """Slots of >= 1 consecutive query heads of one GQA group; per request, the rows of every query head's slots
    (``rows[r][s]``) add up to its ``n_q`` (a head in several slots: a boundary head's parts)."""
    if hkv < 1 or hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    g = hq // hkv
    for first, count in slot_heads:
        if count < 1 or first < 0 or first + count > hq or first // g != (first + count - 1) // g:
            raise ValueError(
                f"slot (first_query_head={first}, num_heads={count}) must cover >= 1 consecutive query heads "
                f"of one GQA group (group size {g}, {hq} query heads)"
            )
    for r, n_q in enumerate(seq_q):
        done = [0] * hq
        for (first, count), n in zip(slot_heads, rows[r], strict=True):
            for h in range(first, first + count):
                done[h] += n
        if done != [n_q] * hq:
            raise ValueError(
                f"request {r}: the slots must compute every row of each of the {hq} query heads exactly once "
                f"(rows per head {done}, n_q {n_q}; slots {list(slot_heads)})"
            )


def _compact(key: torch.Tensor, keep: torch.Tensor, big: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (last dim), the sorted unique ``key`` values where ``keep``: (count int64 [...], ids int64 [...,
    width])."""
    k = torch.where(keep, key, big)
    k = torch.sort(k, dim=-1).values
    if k.shape[-1] > 1:  # duplicates (possible in user column lists) -> big
        dup = torch.zeros_like(k, dtype=torch.bool)
        dup[..., 1:] = k[..., 1:] == k[..., :-1]
        k = torch.sort(torch.where(dup, big, k), dim=-1).values
    count = (k < big).sum(-1)
    return count, k


def _mask_to_lists(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool [rows, n] -> (count int64 [rows], ascending column ids int64 [rows, max(count)]; entries past a row's
    count are 0). Each kept entry is scattered to its rank in its row (a running count): no sort, no nonzero."""
    count = mask.sum(1)
    width = int(count.max()) if count.numel() else 0
    rank = torch.cumsum(mask, 1, dtype=torch.int32) - 1
    slot = torch.where(mask, rank, width).to(torch.int64)  # column `width` swallows the entries not kept
    ids = torch.zeros(mask.shape[0], width + 1, dtype=torch.int64, device=mask.device)
    ids.scatter_(1, slot, torch.arange(mask.shape[1], device=mask.device).expand_as(slot))
    return count, ids[:, :width]


# Bound on the memory of one chunk of slots in the batched list pass (all requests): stacked keep sets and orders,
# and the column pass of slots with column lists (~64 bytes per list entry: a vertical-slash slot at 1M tokens holds
# 8,192 query blocks x ~1,100 columns). At 131K tokens a layer's 84 boundary slots take 2-3 chunks, at 1M ~25.
INDEX_CHUNK_BYTES = 2**31


@dataclass(frozen=True)
class _SlotLists:
    """One request's chunk of slots, every tensor with a leading slot dimension."""

    q_order: torch.Tensor
    k_order: torch.Tensor
    q_min: torch.Tensor
    q_max: torch.Tensor
    k_min: torch.Tensor
    k_max: torch.Tensor
    k_by_pos: torch.Tensor
    prefix: torch.Tensor
    b_count: torch.Tensor
    c_count: torch.Tensor


@dataclass(frozen=True)
class _ListInput:
    """What the ragged writes of one request's chunk read, dropped once they are written (at 1M tokens the column
    ids alone are ~70 MB per slot)."""

    blocks: torch.Tensor  # [S, nqb, nkb] the keep sets
    rank: torch.Tensor  # [S, nkb] each key block's place in first-position order
    c_at: torch.Tensor  # [L] slot * nqb + query block of each column list (only the query blocks that have one)
    c_ids: torch.Tensor  # [L, width] ascending, the kept ones first


def _block_minmax(pos: torch.Tensor, block: int, n_k: int, nb: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest of each of ``nb`` (default: enough) blocks of ``pos`` ([..., n] positions in [0, n_k)
    or padding: n_k for the smallest, -1 for the largest never wins); a block without positions gets (n_k, -1)."""
    n = pos.shape[-1]
    nb = _cdiv(n, block) if nb is None else nb
    pad = nb * block - n
    shape = (*pos.shape[:-1], nb, block)
    lo = torch.nn.functional.pad(pos, (0, pad), value=n_k).view(shape).amin(-1)
    hi = torch.nn.functional.pad(pos, (0, pad), value=-1).view(shape).amax(-1)
    return lo, hi


def _check_keep(keep: SlotKeep, block: int, n_q: int, n_k: int) -> int:
    """Host-side shape checks of one (request, slot) keep set; returns its computed rows."""
    if keep.q_order.numel() != n_q or keep.k_order.numel() != n_k:
        got = (keep.q_order.numel(), keep.k_order.numel())
        raise ValueError(f"slots disagree on n_q / n_k: {got} vs the request's first slot {(n_q, n_k)}")
    if n_q < 1 or n_q > n_k:
        raise ValueError(f"a request needs 1 <= n_q <= n_k, got n_q={n_q}, n_k={n_k}")
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    if tuple(keep.blocks.shape) != (nqb, nkb) or keep.blocks.dtype != torch.bool:
        raise ValueError(f"blocks must be bool [{nqb}, {nkb}], got {keep.blocks.dtype} {tuple(keep.blocks.shape)}")
    cid = keep.column_ids
    if cid is not None and cid.numel() and (cid.dim() != 2 or cid.shape[0] > nqb):
        raise ValueError(f"column_ids must be [r <= {nqb}, C], got {tuple(cid.shape)}")
    n_rows = n_q if keep.rows is None else keep.rows
    if not 0 <= n_rows <= n_q:
        raise ValueError(f"rows must be in [0, {n_q}], got {n_rows}")
    return n_rows


def _stack(ts: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One tensor [len(ts), ...]; a run of one tensor object (slots sharing an order) costs one expand-and-copy."""
    if all(t is ts[0] for t in ts):
        return ts[0].to(device, dtype)[None].expand(len(ts), *ts[0].shape).contiguous()
    return torch.stack([t.to(device, dtype) for t in ts])


def _slot_lists(
    keeps: Sequence[SlotKeep], rows: Sequence[int], block: int, device: torch.device
) -> tuple[_SlotLists, _ListInput]:
    """Lists of one request's chunk of slots (checked by `_check_keep`), and the input of their ragged writes."""
    qo = _stack([k.q_order for k in keeps], device, torch.int64)
    ko = _stack([k.k_order for k in keeps], device, torch.int64)
    (s, n_q), n_k = qo.shape, ko.shape[1]
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    computed = torch.arange(n_q, device=device)[None, :] < to_device(rows, device)[:, None]
    pos = qo + (n_k - n_q)
    q_min = _block_minmax(torch.where(computed, pos, n_k), block, n_k, nqb)[0]  # computed rows only
    q_max = _block_minmax(torch.where(computed, pos, -1), block, n_k, nqb)[1]
    k_min, k_max = _block_minmax(ko, block, n_k)
    blocks = _stack([k.blocks for k in keeps], device, torch.bool)
    k_by_pos = torch.sort(k_min, dim=1, stable=True).indices
    rank = torch.empty_like(k_by_pos).scatter_(1, k_by_pos, torch.arange(nkb, device=device).expand(s, nkb))
    lead, b_count = lead_and_count(blocks, k_min, q_max, rank)  # kept = in `blocks` and holding a causal pair
    # columns: one row per (slot, query block) that has a list (a part's lists stop after its rows); the others
    # count 0
    cols = [k.column_ids if k.column_ids is not None and k.column_ids.numel() else None for k in keeps]
    c_slots = [i for i, c in enumerate(cols) if c is not None]
    c_count = torch.zeros(s, nqb, dtype=torch.int64, device=device)
    c_ids = torch.zeros(0, 0, dtype=torch.int64, device=device)
    c_at = torch.zeros(0, dtype=torch.int64, device=device)
    if c_slots:
        width = max(cols[i].shape[1] for i in c_slots)
        pad = lambda c: c if c.shape[1] == width else torch.nn.functional.pad(c, (0, width - c.shape[1]), value=-1)
        cid = _cat([pad(cols[i]).to(device, torch.int64) for i in c_slots], 0)  # [L, width], -1 padding
        rows_c = [cols[i].shape[0] for i in c_slots]
        lens = torch.tensor(rows_c)
        first = torch.tensor(c_slots) * nqb - (torch.cumsum(lens, 0) - lens)  # slot * nqb - rows of earlier lists
        total = sum(rows_c)
        c_at = torch.repeat_interleave(first, lens, output_size=total) + torch.arange(total)  # built on the host
        c_at = to_device(c_at, device)
        at_s = (c_at // nqb)[:, None]
        q_max_at = q_max.flatten()[c_at][:, None]
        ok = (cid >= 0) & (cid < n_k)
        safe = torch.where(ok, cid, 0)
        kb = safe // block
        inside = blocks.view(s * nqb, nkb)[c_at[:, None], kb] & (k_min[at_s, kb] <= q_max_at)
        ok &= ~inside  # inside a kept block: counted there
        ok &= ko[at_s, safe] <= q_max_at  # no causal pair at all
        count, c_ids = _compact(safe, ok, n_k)
        c_count.view(-1)[c_at] = count
    lists = _SlotLists(qo, ko, q_min, q_max, k_min, k_max, k_by_pos, lead, b_count, c_count)
    return lists, _ListInput(blocks, rank, c_at, c_ids)


def _slot_chunks(keeps: Sequence[Sequence[SlotKeep]], n_slots: int) -> list[tuple[int, int]]:
    """Consecutive ranges of slots whose pass (all requests) stays within `INDEX_CHUNK_BYTES` (at least one slot)."""

    def cost(k: SlotKeep) -> int:  # its blocks, its orders and their sorts, its column pass
        cols = k.column_ids.numel() if k.column_ids is not None else 0
        return k.blocks.numel() + 32 * (k.q_order.numel() + k.k_order.numel()) + 64 * cols

    chunks, start, used = [], 0, 0
    for s in range(n_slots):
        c = sum(cost(req[s]) for req in keeps)
        if s > start and used + c > INDEX_CHUNK_BYTES:
            chunks.append((start, s))
            start, used = s, 0
        used += c
    return [*chunks, (start, n_slots)]


def _is_identity(order: torch.Tensor) -> torch.Tensor:
    """int64 [S]: 1 where the slot's order ([S, n]) is the identity."""
    return (order == torch.arange(order.shape[1], device=order.device)).all(1).long()


def _cat(ts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(list(ts), dim)


def index_from_keeps(
    keeps: Sequence[Sequence[SlotKeep]],
    *,
    block: int,
    num_q_heads: int,
    num_kv_heads: int,
    slot_heads: Sequence[tuple[int, int]] | None = None,
    block_capacity: int | None = None,
    column_capacity: int | None = None,
    device: torch.device | str | None = None,
) -> SparseIndex:
    """Build the index from per-(request, slot) keep sets (``keeps[r][s]``). Exact: see `index_keep_mask`.

    ``slot_heads[s] = (first_query_head, num_heads)``; by default slots are the KV heads (when there are
    ``num_kv_heads`` slots) or the query heads (``num_q_heads`` slots). ``block_capacity`` / ``column_capacity``
    fix the list widths (plan time, e.g. from `pattern_capacity`); None = the exact maximum of this batch.
    Raises `IndexCapacityError` when a list would not fit (it is never truncated), ValueError on bad shapes.

    All slots of a request go through one batched pass (stacked keep sets, in chunks of `INDEX_CHUNK_BYTES`); the
    only host read is one per chunk (list sizes, to allocate the ragged arrays).
    """
    if not keeps:
        raise ValueError("index_from_keeps needs at least one request")
    n_slots = len(keeps[0])
    if n_slots < 1 or any(len(k) != n_slots for k in keeps):
        raise ValueError(f"every request needs the same number (>= 1) of slots, got {[len(k) for k in keeps]}")
    slots = list(slot_heads) if slot_heads is not None else _default_slots(n_slots, num_q_heads, num_kv_heads)
    if len(slots) != n_slots:
        raise ValueError(f"{len(slots)} slot_heads for {n_slots} slots")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    dev = torch.device(device) if device is not None else keeps[0][0].blocks.device
    seq_q = tuple(req[0].q_order.numel() for req in keeps)
    seq_k = tuple(req[0].k_order.numel() for req in keeps)
    rows = [[_check_keep(k, block, seq_q[r], seq_k[r]) for k in req] for r, req in enumerate(keeps)]
    _check_slots(slots, rows, seq_q, num_q_heads, num_kv_heads)
    qb_at = [0, *accumulate(_cdiv(n, block) for n in seq_q)]

    def starts(counts: torch.Tensor) -> torch.Tensor:  # exclusive prefix sums in (slot, query block) order
        c = counts.flatten()
        return (torch.cumsum(c, 0) - c).view_as(counts)

    # per chunk of slots, all requests: lists, ONE host read of their sizes, then the ragged arrays. Chunks are
    # slot ranges, so each chunk's entries are one contiguous range of the (slot, query block)-ordered arrays.
    chunks: list[list[_SlotLists]] = []
    b_parts, c_parts, b_starts, c_starts = [], [], [], []
    n_b = n_c = nb = nc = 0
    keys_identity = True
    for s0, s1 in _slot_chunks(keeps, n_slots):
        done = [_slot_lists(req[s0:s1], rows[r][s0:s1], block, dev) for r, req in enumerate(keeps)]
        lists = [sl for sl, _ in done]
        facts = torch.stack(  # [R, chunk slots, 4]: largest block / column count, key order identity, column total
            [
                torch.stack([sl.b_count.amax(1), sl.c_count.amax(1), _is_identity(sl.k_order), sl.c_count.sum(1)], 1)
                for sl in lists
            ]
        )
        b_count = _cat([sl.b_count for sl in lists], 1)  # [chunk slots, TQB]
        c_count = _cat([sl.c_count for sl in lists], 1)
        facts = torch.cat([facts.flatten(), b_count.sum().view(1)]).tolist()
        f = [facts[i : i + 4] for i in range(0, len(facts) - 1, 4)]  # (request, slot) major
        total_b, total_c = facts[-1], sum(x[3] for x in f)
        for col, cap, counts, what in ((0, block_capacity, b_count, "block"), (1, column_capacity, c_count, "column")):
            i = max(range(len(f)), key=lambda j: f[j][col])
            if cap is not None and f[i][col] > cap:
                r, s = divmod(i, s1 - s0)
                qb = int(counts[s, qb_at[r] : qb_at[r + 1]].argmax())  # for the message only (one more host read)
                raise IndexCapacityError(
                    f"request {r}, slot {s0 + s}, query block {qb} keeps {f[i][col]} key {what}s, over the "
                    f"{what} capacity {cap}"
                )
        nb, nc = max([nb, *(x[0] for x in f)]), max([nc, *(x[1] for x in f)])
        keys_identity &= all(x[2] == 1 for x in f)
        b_start, c_start = starts(b_count), starts(c_count)
        b_ids = torch.zeros(total_b, dtype=torch.int32, device=dev)
        c_ids = torch.zeros(total_c + 1, dtype=torch.int32, device=dev)  # last entry: padding goes there
        for r, (sl, inp) in enumerate(done):
            at_r = slice(qb_at[r], qb_at[r + 1])
            block_ids(inp.blocks, sl.k_min, sl.q_max, inp.rank, sl.prefix, b_start[:, at_r].contiguous(), b_ids)
            if inp.c_at.numel():
                j = torch.arange(inp.c_ids.shape[1], device=dev)
                start_at = c_start[:, at_r].reshape(-1)[inp.c_at, None]
                valid = j < sl.c_count.view(-1)[inp.c_at, None]
                c_ids[torch.where(valid, start_at + j, total_c)] = inp.c_ids.to(torch.int32)
        chunks.append(lists)  # the list inputs go out of scope with `done`
        b_parts.append(b_ids)
        c_parts.append(c_ids[:total_c])
        b_starts.append(b_start + n_b)
        c_starts.append(c_start + n_c)
        n_b, n_c = n_b + total_b, n_c + total_c
        del done

    def cat(attr: str, dtype: torch.dtype = torch.int32) -> torch.Tensor:  # [S, ...]: requests in order per slot
        return _cat([_cat([getattr(sl, attr) for sl in lists], 1) for lists in chunks], 0).to(dtype)

    def ragged(parts: list[torch.Tensor]) -> torch.Tensor:  # at least one entry (an empty index still has one)
        flat = _cat(parts, 0)
        return flat if flat.numel() else torch.zeros(1, dtype=torch.int32, device=dev)

    i32 = lambda xs: to_device(xs, dev, torch.int32)
    cum = lambda xs: i32([0, *accumulate(xs)])
    nqbs = [_cdiv(n, block) for n in seq_q]
    nkbs = [_cdiv(n, block) for n in seq_k]
    return SparseIndex(
        block=block,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        seqlens_q=seq_q,
        seqlens_k=seq_k,
        slot_q_head=i32([f for f, _ in slots]),
        slot_num_heads=i32([c for _, c in slots]),
        slot_kv_head=i32([f // (num_q_heads // num_kv_heads) for f, _ in slots]),
        cu_seqlens_q=cum(seq_q),
        cu_seqlens_k=cum(seq_k),
        cu_qblocks=cum(nqbs),
        cu_kblocks=cum(nkbs),
        qblock_request=torch.repeat_interleave(
            torch.arange(len(seq_q), device=dev),
            i32(nqbs),
            output_size=sum(nqbs),  # no host read
        ).to(torch.int32),
        q_order=cat("q_order"),
        k_order=cat("k_order"),
        q_rows=to_device(rows, dev, torch.int32).T.contiguous(),
        q_pos_min=cat("q_min"),
        q_pos_max=cat("q_max"),
        k_pos_min=cat("k_min"),
        k_pos_max=cat("k_max"),
        k_blocks_by_pos=cat("k_by_pos"),
        block_prefix=cat("prefix"),
        block_count=cat("b_count"),
        block_start=_cat(b_starts, 0),
        block_ids=ragged(b_parts),
        column_count=cat("c_count"),
        column_start=_cat(c_starts, 0),
        column_ids=ragged(c_parts),
        block_capacity=max(block_capacity if block_capacity is not None else nb, 1),
        column_capacity=max(column_capacity if column_capacity is not None else nc, 1),
        keys_identity=keys_identity,
        one_slot_per_kv_head=sorted(f for f, _ in slots)
        == [j * (num_q_heads // num_kv_heads) for j in range(num_kv_heads)]
        and all(c == num_q_heads // num_kv_heads for _, c in slots),
        slot_heads_max=max(c for _, c in slots),
    )


def index_from_selections(
    selections: Sequence[Sequence[Selection]],
    *,
    num_q_heads: int,
    num_kv_heads: int,
    slot_heads: Sequence[tuple[int, int]] | None = None,
    block_capacity: int | None = None,
    column_capacity: int | None = None,
    device: torch.device | str | None = None,
) -> SparseIndex:
    """Exact conversion of ``selections[r][s]`` (request r, head slot s) to a `SparseIndex`.

    A slot that serves a GQA group needs the group's union (`mmi_core.union_selections`). All selections must share
    one block size. Arguments and errors as `index_from_keeps`.
    """
    blocks = {sel.block for req in selections for sel in req}
    if len(blocks) != 1:
        raise ValueError(f"all selections of one index must share one block size, got {sorted(blocks)}")
    return index_from_keeps(
        [[SlotKeep.from_selection(sel) for sel in req] for req in selections],
        block=blocks.pop(),
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        slot_heads=slot_heads,
        block_capacity=block_capacity,
        column_capacity=column_capacity,
        device=device,
    )


@dataclass(frozen=True)
class BlockSparseRows:
    """flashinfer-style BSR view of an index: row ``s * TQB + qb`` (slot s, global query block qb).

    indptr, column_indptr: int32 [S * TQB + 1]; indices: int32 [nnz] request-local key-block ids (leading run
    expanded, ascending); column_indices: int32 [nnz_c] request-local key-permuted column ids.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    column_indptr: torch.Tensor
    column_indices: torch.Tensor


def index_to_bsr(index: SparseIndex) -> BlockSparseRows:
    """Expand the index into BSR rows: each row's kept key blocks (leading run and list together), ascending.

    Works slot by slot on a bool [TQB, max nkb] matrix (1 bit-byte per tile), so memory stays O(TQB x nkb) bytes."""
    dev = index.device
    nkb_max = max(_cdiv(n, index.block) for n in index.seqlens_k)
    tkb = index.k_blocks_by_pos.shape[1]
    req = index.qblock_request.long()
    kb0 = index.cu_kblocks.long()[req]  # [TQB] first global key block of the query block's request
    nkb_r = (index.cu_kblocks[1:] - index.cu_kblocks[:-1]).long()[req]
    nkb_per_req = (index.cu_kblocks[1:] - index.cu_kblocks[:-1]).long()
    kreq0 = torch.repeat_interleave(index.cu_kblocks[:-1].long(), nkb_per_req)  # [TKB] its request's first block
    pos_in_req = torch.arange(tkb, device=dev) - kreq0
    j = torch.arange(nkb_max, device=dev)
    gid = torch.clamp(kb0[:, None] + j[None, :], max=max(tkb - 1, 0))  # [TQB, nkb_max] global key block
    in_req = j[None, :] < nkb_r[:, None]
    counts, indices = [], []
    for s in range(index.num_slots):
        rank = torch.empty(tkb, dtype=torch.int32, device=dev)  # position of each key block in the by-pos order
        rank[index.k_blocks_by_pos[s].long() + kreq0] = pos_in_req.to(torch.int32)
        mask = (rank[gid] < index.block_prefix[s, :, None]) & in_req
        mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], 1)
        _, ids = index.lists("block", s)
        mask.scatter_(1, torch.where(ids >= 0, ids, nkb_max), True)  # column nkb_max swallows the padding
        mask = mask[:, :nkb_max]
        counts.append(mask.sum(1))
        indices.append(mask.nonzero(as_tuple=True)[1])  # row-major: ascending key blocks within a row
    count = torch.cat(counts)
    indptr = torch.zeros(count.numel() + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.cumsum(count, 0)
    # the column lists are CSR already: back to back in (slot, query block) order
    n_col = int(index.column_count.sum())
    cptr = torch.cat([index.column_start.flatten(), torch.tensor([n_col], device=dev)]).to(torch.int32)
    return BlockSparseRows(indptr.to(torch.int32), torch.cat(indices).to(torch.int32), cptr, index.column_ids[:n_col])


def index_keep_mask(index: SparseIndex, request: int, slot: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """bool [n_q or len(rows), n_k] in original order, on the index's device: the pairs the index keeps for
    ``rows`` (query indices of the request, default all), causal on original positions.

    The index-side twin of `mmi_core.keep_mask`, read straight from the index format (leading run in first-position
    order, listed blocks, listed columns) with batched gathers and scatters; O(rows x n_k) memory.
    """
    b, dev = index.block, index.q_order.device
    n_q, n_k = index.seqlens_q[request], index.seqlens_k[request]
    q0, k0 = int(index.cu_seqlens_q[request]), int(index.cu_seqlens_k[request])
    qb0, kb0 = int(index.cu_qblocks[request]), int(index.cu_kblocks[request])
    nkb = _cdiv(n_k, b)
    r = torch.arange(n_q, device=dev) if rows is None else rows.to(dev, torch.int64)
    q_inv = torch.empty(n_q, dtype=torch.int64, device=dev)
    q_inv[index.q_order[slot, q0 : q0 + n_q].long()] = torch.arange(n_q, device=dev)
    k_inv = torch.empty(n_k, dtype=torch.int64, device=dev)
    k_inv[index.k_order[slot, k0 : k0 + n_k].long()] = torch.arange(n_k, device=dev)
    computed = q_inv[r] < int(index.q_rows[slot, request])  # rows of a row-group slot's other parts: not here
    qb = qb0 + q_inv[r] // b  # each row's global query block
    rank = torch.empty(nkb, dtype=torch.int64, device=dev)
    rank[index.k_blocks_by_pos[slot, kb0 : kb0 + nkb].long()] = torch.arange(nkb, device=dev)
    blocks = rank[None, :] < index.block_prefix[slot, qb].long()[:, None]  # [R, nkb]: the leading run

    def rows_lists(kind: str) -> torch.Tensor:  # int64 [R, width] the rows' lists, -1 padding
        count = getattr(index, f"{kind}_count")[slot, qb].long()
        width = max(int(count.max()), 1) if count.numel() else 1
        return padded_lists(getattr(index, f"{kind}_start")[slot, qb], count, getattr(index, f"{kind}_ids"), width)

    ids = rows_lists("block")
    ids = torch.where(ids >= 0, ids, nkb)  # column nkb swallows the padding
    blocks = torch.cat([blocks, torch.zeros_like(blocks[:, :1])], 1).scatter_(1, ids, True)[:, :nkb]
    cids = rows_lists("column")
    cids = torch.where(cids >= 0, cids, n_k)
    cols = torch.zeros(r.numel(), n_k + 1, dtype=torch.bool, device=dev).scatter_(1, cids, True)[:, :n_k]
    mask = blocks[:, k_inv // b] | cols[:, k_inv]
    return mask & (torch.arange(n_k, device=dev)[None, :] <= (r + n_k - n_q)[:, None]) & computed[:, None]


def pattern_capacity(cfg: PatternConfig, n_k: int, *, video_segments: int = 1) -> tuple[int, int]:
    """Upper bounds (key blocks, key columns) of one head's list entries per query block, from its budget alone.

    A GQA group executing together needs the sum over its heads (capped by the number of key blocks / keys).
    Leading runs (dense rows, Grid ``hline`` blocks) cost no capacity. Grid without a known layout is bounded
    by its worst case: ``sink`` blocks, ``block * (local + 1)`` diagonal blocks (the block's own rows may be spread
    over up to ``block`` key blocks when a cached prefix shifts the query permutation against the key permutation),
    and the vline/slash residue classes, each spanning at most ``ceil(n_k / (stride * block)) + 1`` blocks per
    segment (``video_segments`` of them); with ``stride="search"``/``"frame"`` the smallest stride (2) is assumed,
    which is loose.
    """
    if isinstance(cfg, Dense):
        return 0, 0
    b = cfg.block
    nkb = _cdiv(n_k, b)
    if isinstance(cfg, AShape):
        nb = _cdiv(cfg.sink, b) + _cdiv(cfg.local, b) + 3
        return min(nb, nkb), 0
    if isinstance(cfg, VerticalSlash):
        nb = 2 * (cfg.slash + cfg.local) + 2
        return min(nb, nkb), min(cfg.vertical + cfg.sink, n_k)
    if isinstance(cfg, BlockSparse):
        return min(cfg.top_k + 3, nkb), 0
    if isinstance(cfg, Grid):
        stride = cfg.stride if isinstance(cfg.stride, int) else 2
        per_class = _cdiv(n_k, stride * b) + video_segments
        classes = cfg.lines * int(cfg.vline) + min(b, stride) * int(cfg.slash)
        nb = min(cfg.sink, nkb) + b * (cfg.local + 1) + classes * per_class
        return min(nb, nkb), 0
    raise ValueError(f"unknown pattern {cfg!r}")
