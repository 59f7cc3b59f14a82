"""Q-boundary and 2D-boundary heads on the device: `mmi_core.boundary.boundary_selection` as one `SlotKeep` per
query modality (the parts of `mmi_core.RowGroups`, ``rows`` set), in O(n_q + n_k + nqb·nkb) memory per part.

`boundary_selection` (the specification, rules in its module docstring) ORs every group's (query, key) pairs into
[n_q, n_k] masks and rounds them onto the tiles of each part's orders. Here the sub-problems come from the GPU
estimator (`estimate_problems` on the truncated sequences, the same rule as `_sub_selection`), batched over every
boundary head of the layer that needs one (query modality, pattern), and the rounding works on block-level
quantities only. The one identity that makes it linear: a sub tile ``(QB, KB)`` keeps
every causal pair of its rows and keys, so the final tile ``(X, Y)`` holds one of its (restricted) pairs iff

    min position of KB's kept keys inside Y  <=  max position of QB's modality-m rows inside X.

With ``pmax(QB, X)`` per (sub query block, final query block) incidence and ``kmin(KB, Y)`` per (sub key block,
final key block) incidence (each token is in exactly one incidence, so there are at most n_q and n_k of them):

    A[X, KB] = max over incidences (QB, X) with S[QB, KB] of pmax(QB, X)        [nqb, nkb_sub]
    T[X, Y]  = OR over incidences (KB, Y) of kmin(KB, Y) <= A[X, KB]             [nqb, nkb]

Incidences are grouped per final block into ``W`` slots (``W`` = the most distinct sub blocks one final block
meets). Keys: always 1, since each key of a group has the same index in the group's sub order and in the final one
(the final key order takes it from its own pair's sub). Rows: 1–3 plus segment joins when the sub's row order
agrees with the part's on m's rows (a layout fact: `part_row_width`), up to ``block`` when it does not (identity-
ordered video rows of a 2D pair against grid-ordered final video rows, or two different Grids). Where the Triton
pass runs, `mmi_kernels.boundary_tiles.slot_tiles` rounds every group in one fused pass writing ``T`` once (``A`` is
never materialised): narrow rows as the transposed problem (rows: the key blocks), scattered rows (more than
`SLOT_LOOP_MAX` slots) as rows, O(Wr) per tile in registers. The PyTorch path takes the side with fewer slots as
rows; few column slots: `slot_tiles`' expression; many: the full/partial split of `_split_tiles` (``A`` one [nqb,
nkb] pass per row slot; blocks reached in full: one 0/1 matmul against the incidence matrix; blocks reached in part,
at most one per row slot and final block: scattered one incidence at a time). Only the key blocks that can hold a
key of the group are rounded (`group_key_runs`, a layout fact, in place per run): the rest have no incidence.

Sub columns become columns of every final block whose incident m rows reach them (``pos(c) <= pmax``); columns that
fall inside the sub's kept blocks are not removed first: their pairs are block pairs, so the final tile holding them
is kept and the index drops such columns anyway. The head's own diagonal is added as in the reference.

Each part is rounded over its own final query blocks only (its rows lead its query order; the other blocks are
empty), so a layer's parts cost about one pass over the query blocks per head, not three. Per query modality the
heads are rounded in two batches, every step with a leading head dimension: heads whose subs of the part are all
non-Grid (identity orders) share the part's orders and incidences (computed once, expanded over the heads); heads
with a Grid sub (orders from each head's stride/phase estimate) get per-head orders and incidences, computed
together; when a layer has Grid subs and all its heads' per-head tables fit one `GRID_CHUNK`, every head goes into
one per-head batch instead (the identity orders stacked like the Grid ones: a few more device bytes, half the host
ops of two batches). Per (batch, key group) one incidence computation, one tile pass and one column pass serve all
heads, so a layer's rounding is a few hundred operations whatever its head count (2026-11-22, CPU, torch 2.11, a
15,856-token mixed layer of 28 Q- or 2D-boundary heads, block 64: 515–947 non-view aten ops, 6–12 host reads;
6,330–10,420 ops and 60–144 reads when each head was rounded alone).

Host reads per layer (none per head, none per token): none for Q-boundary heads. The incidence tables' widths are
layout facts where the sub's row order agrees with the part's (`part_row_width`; every Q-boundary part, and 2D
groups whose pattern orders m's rows as the part does), and the key side always has width 1 (`_incidences`);
otherwise (PyTorch path only: the Triton path gives scattered rows one slot each) one read per (query modality,
batch, key group) for the query side's width. Beyond: on the PyTorch path,
the number of partly reached blocks when the split runs (one ``nonzero`` per chunk of heads, `SPLIT_CHUNK`); one
``torch.equal`` per
sub's column lists unless they are an expanded view (vertical-slash lists are: no read) and ``torch.unique`` when
they differ between query blocks; the part's row count is a layout fact (no read).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mmi_core import (
    Dense,
    Grid,
    HeadSpec,
    Modality,
    ModalityLayout,
    PatternConfig,
    to_device,
)
from mmi_core.boundary import modality_last_rows, sub_problem
from mmi_kernels.boundary_tiles import slot_tiles
from mmi_kernels.dispatch import triton_runs
from mmi_kernels.index import SlotKeep
from mmi_kernels.keep_planner import LayoutTensors, dense_keep, query_row_ranges

__all__ = ["boundary_keeps"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=8)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    """``arange(n)`` on ``device``, one per length and device (a layer asks for the same few every time). Shared:
    never written into."""
    return torch.arange(n, device=device)


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation of each row of ``order`` (int64 [H, n])."""
    return torch.empty_like(order).scatter_(1, order, _arange(order.shape[1], order.device).expand_as(order))


def _rows(t: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Rows ``idx`` of a per-head table ``t`` [Hs, ...]; a table of one row (shared by every head) stays as it is."""
    if t.shape[0] == 1 or idx == list(range(t.shape[0])):
        return t
    return t[to_device(idx, t.device)]


def _sub_keeps(
    q: torch.Tensor,
    k: torch.Tensor,
    lt: LayoutTensors,
    requests: list[tuple[dict[int, PatternConfig], int, int]],
    block: int,
    scale: float | None,
) -> list[dict[int, SlotKeep]]:
    """`mmi_core.boundary._sub_selection` of every head of every request ``(cfgs, end, rows)`` (head -> pattern,
    one pattern per head): the keep set on queries ``[prefix, end)`` and keys ``[0, end)`` (sub coordinates = global
    ones), ``last_q`` clamped to ``rows``. Each query head is estimated alone (its own KV head, no GQA pooling), as
    in the reference.

    One `estimate_problems` call for all requests (the statistics of every sub-problem in one set of launches, the
    vertical-slash ranking of all in one sort): a request's patterns whose clamped ``last_q`` agree form one problem
    (a Grid's fold starts at the problem's longest ``last_q``, so a Grid with a shorter one gets a problem of its
    own); heads of no pattern there are Dense placeholders, which cost no estimate."""
    from mmi_kernels.estimate import EstimationProblem, estimate_problems  # local: estimate imports us

    prefix = lt.layout.num_tokens - q.shape[0]
    hq, hkv = q.shape[1], k.shape[1]
    out: list[dict[int, SlotKeep]] = [{} for _ in requests]
    problems: list[EstimationProblem] = []
    owner: list[tuple[int, dict[int, PatternConfig]]] = []  # per problem: its request and heads
    dense: dict[int, SlotKeep] = {}  # one object per end for every dense sub (the index stacks a shared one once)
    for r, (cfgs, end, rows) in enumerate(requests):
        calls: dict[int | None, dict[int, PatternConfig]] = {}  # clamped last_q (None: no statistics) -> head -> cfg
        sub_layout = lt.layout
        known: dict[PatternConfig, tuple] = {}  # heads share a few patterns: one `sub_problem` each
        for h, cfg in cfgs.items():
            if cfg not in known:
                known[cfg] = sub_problem(lt.layout, cfg, end, rows)
            sub_layout, sub = known[cfg]
            if isinstance(sub, Dense):
                if end not in dense:
                    dense[end] = dense_keep(end - prefix, end, block, q.device)
                out[r][h] = dense[end]
            else:
                calls.setdefault(getattr(sub, "last_q", None), {})[h] = sub
        if None in calls and len(calls) > 1:  # patterns without statistics join any call
            calls[next(lq for lq in calls if lq is not None)].update(calls.pop(None))
        sub_lt = lt.truncated(sub_layout)
        for need in calls.values():
            patterns = tuple(need.get(h, Dense()) for h in range(hq))
            problems.append(EstimationProblem(end, sub_lt, patterns, ("head",) * hkv))
            owner.append((r, need))
    keeps = estimate_problems(q, k, problems, scale=scale)
    for (r, need), kp in zip(owner, keeps, strict=True):
        out[r].update((h, kp[h]) for h in need)  # type: ignore[misc]
    return out


def _slots(
    ids: torch.Tensor, vals: torch.Tensor, sentinel: int, largest: bool, width: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``ids`` (int64 [R, B]) / ``vals`` (int32 or int64 [R, B]): the distinct ids other than
    ``sentinel`` with their largest (``largest``) or smallest value, in id order, as ``[R, W]`` (padding: id
    ``sentinel``, value -1 for largest, the dtype's maximum for smallest). ``W = width`` when the caller knows the
    most distinct ids of one row (>= 1) from the layout; None: read on the host."""
    by_val = torch.sort(vals, dim=1, descending=largest, stable=True).indices
    ids, vals = ids.gather(1, by_val), vals.gather(1, by_val)
    by_id = torch.sort(ids, dim=1, stable=True).indices  # best value first inside each id
    ids, vals = ids.gather(1, by_id), vals.gather(1, by_id)
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep = first & (ids != sentinel)
    compact = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept entries first, in id order
    ids, vals, keep = ids.gather(1, compact), vals.gather(1, compact), keep.gather(1, compact)
    if width is None:
        width = max(int(keep.sum(1).max()), 1) if keep.numel() else 1  # host read
    keep, ids, vals = keep[:, :width], ids[:, :width], vals[:, :width]
    pad = -1 if largest else torch.iinfo(vals.dtype).max
    return torch.where(keep, ids, sentinel), torch.where(keep, vals, pad)


def _runs(ids: torch.Tensor, vals: torch.Tensor, sentinel: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_slots` (``largest``) for rows whose ids are already non-decreasing, ``sentinel`` entries last, at most
    ``width`` distinct other ids per row: each run of one id is a slot, its value the run's largest (a scatter,
    no sort). The part's rows in a sub order that agrees with the part's are such rows (`_incidences`)."""
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    run = torch.cumsum(first, 1) - 1
    run = torch.where(ids == sentinel, width, run.clamp(max=width))  # sentinels (and nothing else) into the trash
    slot = torch.full((ids.shape[0], width + 1), sentinel, dtype=ids.dtype, device=ids.device).scatter_(1, run, ids)
    val = torch.full((ids.shape[0], width + 1), -1, dtype=vals.dtype, device=ids.device)
    val = val.scatter_reduce_(1, run, vals, "amax")
    return slot[:, :width], val[:, :width]


@functools.lru_cache(maxsize=64)
def part_row_width(layout: ModalityLayout, m: Modality, prefix: int, block: int) -> int:
    """The most sub query blocks one final query block of modality ``m``'s part meets, when the sub's row order and
    the part's agree on m's rows (`_incidences`): a layout fact. Both orders permute rows only inside video
    segments, so the r-th m row of the part sits at sub index ``a_s - prefix + (r - R_s)`` (its segment's first row
    ``a_s`` and first m-rank ``R_s``) whatever the permutation inside the segment: the same as in position order."""
    ranks = [torch.arange(max(s.start, prefix), s.end) - prefix for s in layout.segments_of(m) if s.end > prefix]
    sub_block = torch.cat(ranks) // block if ranks else torch.zeros(0, dtype=torch.int64)
    new = torch.ones_like(sub_block, dtype=torch.bool)
    new[1:] = sub_block[1:] != sub_block[:-1]
    new[::block] = True  # each final block counts its first row's sub block
    per_block = torch.nn.functional.pad(new, (0, (-new.numel()) % block)).view(-1, block).sum(1)
    return max(int(per_block.max()), 1) if per_block.numel() else 1


SLOT_LOOP_MAX = 8
"""Up to this many column slots the tiles come from `slot_tiles` (O(Wr · Wc) per tile, all heads at once); beyond (a
sub order that scatters the final blocks, typically identity-ordered keys against grid-ordered video keys) from
`_split_tiles`' full/partial split (heads batched)."""


SPLIT_CHUNK = 1 << 27
"""Elements of the per-head [R, nc] and [nc, C] tables of `_split_tiles` per call: heads are split into chunks of at
most this many (at least one head), bounding its memory (int32 reach and counts, fp16 matmul operands)."""


GRID_CHUNK = 1 << 24
"""Heads with Grid subs are rounded in chunks of at most ``GRID_CHUNK // n_k`` heads (at least one): their per-head
int64 orders and incidence tables take ~10 ``[heads, n_k]`` temporaries (16M elements each at most: 128 MiB)."""


def _tiles(
    s: torch.Tensor,
    r_slot: torch.Tensor,
    r_val: torch.Tensor,
    c_slot: torch.Tensor,
    c_val: torch.Tensor,
    block: int,
    out: torch.Tensor,
    reverse: bool = False,
) -> None:
    """OR into ``out`` (bool [H, R, C], any strides) per head ``T[X, Y] = OR over slots w, v of
    S[r_slot[X, w], c_slot[Y, v]] and c_val[Y, v] <= r_val[X, w]`` (``>=`` with ``reverse``).

    ``s`` bool [H, nr, nc] (sub blocks per head; ids nr / nc: an empty slot);
    ``r_slot``, ``r_val`` [H, R, Wr]; ``c_slot``, ``c_val`` [H, C, Wc] (ids int64, values int32 or int64; a table
    expanded over the heads is read in place); every sub block id occurs in at most ``block`` slots of a head's
    ``c_slot``. Call it with the side of few slots as rows. Few column slots: `mmi_kernels.boundary_tiles.slot_tiles`
    (one fused pass for all heads). Many: `_split_tiles`, heads in chunks of `SPLIT_CHUNK` elements.
    """
    if c_slot.shape[2] <= SLOT_LOOP_MAX:
        slot_tiles(s, r_slot, r_val, c_slot, c_val, out=out, reverse=reverse)
        return
    if reverse:
        r_val, c_val = -r_val, -c_val
    heads, n_rows, n_cols = s.shape[0], r_slot.shape[1], c_slot.shape[1]
    step = max(1, SPLIT_CHUNK // max((s.shape[2] + 1) * (n_rows + n_cols + 1), 1))
    for a in range(0, heads, step):
        c = slice(a, a + step)
        out[c] |= _split_tiles(s[c], r_slot[c], r_val[c], c_slot[c], c_val[c], block)


def _split_tiles(
    s: torch.Tensor,
    r_slot: torch.Tensor,
    r_val: torch.Tensor,
    c_slot: torch.Tensor,
    c_val: torch.Tensor,
    block: int,
) -> torch.Tensor:
    """`_tiles` with many column slots, all heads of the call at once: the reach ``A[h, X, c] = max r_val`` over
    X's slots that keep ``c`` (one [H, R, nc] pass per row slot), then per sub block c its column incidences sorted
    by value; ``n[h, c, X]`` = how many of them X reaches (a prefix). Blocks reached in full (n = all) give
    ``full @ incidence`` (one batched matmul of 0/1 values: all terms >= 0, so ``> 0`` is exact in any float type);
    partly reached ones (n strictly between) are few when the sub order agrees with the final one on the row side
    (at most Wr per X: the values lie inside one block's range each), and are scattered one incidence at a time. Too
    many partial blocks (sub orders that overlap, e.g. a grid-ordered sub against another order): `slot_tiles`
    instead (O(Wr · Wc) per tile). One host read (the number of partial blocks of all heads).
    """
    dev = s.device
    s_ext = torch.nn.functional.pad(s, (0, 1, 0, 1))  # the empty slots' row and column: all False
    heads, nc = s_ext.shape[0], s_ext.shape[2] - 1
    n_rows, n_cols, wc = r_slot.shape[1], c_slot.shape[1], c_slot.shape[2]
    low = torch.iinfo(r_val.dtype).min
    reach = torch.full((heads, n_rows, nc + 1), low, dtype=r_val.dtype, device=dev)  # column nc stays `low`
    for w in range(r_slot.shape[2]):  # slots, not tokens
        hit = torch.gather(s_ext, 1, r_slot[:, :, w, None].expand(heads, n_rows, nc + 1))
        reach = torch.maximum(reach, torch.where(hit, r_val[:, :, w, None], low))
    # column incidences grouped by sub block, ascending value inside each (padding id nc sorts last)
    inc_c, inc_v = c_slot.reshape(heads, -1), c_val.reshape(heads, -1)
    inc_y = torch.arange(n_cols, device=dev).repeat_interleave(wc).expand(heads, -1)
    order = torch.sort(inc_v, dim=1, stable=True).indices
    order = order.gather(1, torch.sort(inc_c.gather(1, order), dim=1, stable=True).indices)
    inc_c, inc_y, inc_v = inc_c.gather(1, order), inc_y.gather(1, order), inc_v.gather(1, order)
    count = torch.zeros(heads, nc + 1, dtype=torch.int64, device=dev).scatter_add_(1, inc_c, torch.ones_like(inc_c))
    rank = torch.arange(inc_c.shape[1], device=dev) - (torch.cumsum(count, 1) - count).gather(1, inc_c)
    real = inc_c < nc
    hd = torch.arange(heads, device=dev)[:, None].expand_as(inc_c)
    big = torch.iinfo(c_val.dtype).max
    tab_v = torch.full((heads, nc + 1, block + 1), big, dtype=c_val.dtype, device=dev)  # [h, c, rank]; block: trash
    tab_y = torch.full((heads, nc + 1, block + 1), n_cols, dtype=torch.int64, device=dev)
    slot = torch.where(real, rank.clamp(max=block), block)
    tab_v[hd, inc_c, slot] = torch.where(real, inc_v, big)
    tab_y[hd, inc_c, slot] = torch.where(real, inc_y, n_cols)
    tab_v, tab_y, count = tab_v[:, :nc, :block].contiguous(), tab_y[:, :nc, :block], count[:, :nc, None]
    reached = torch.searchsorted(tab_v, reach[:, :, :nc].transpose(1, 2).contiguous(), right=True, out_int32=True)
    full = (reached == count) & (count > 0)  # [H, nc, R]
    partial = (reached > 0) & (reached < count)
    ph, pc, px = partial.nonzero(as_tuple=True)  # host sync: the number of partly reached blocks
    if pc.numel() * block > max(heads * n_rows * n_cols, 1):
        return slot_tiles(s, r_slot, r_val, c_slot, c_val)
    incidence = torch.zeros(heads, nc + 1, n_cols + 1, dtype=torch.bool, device=dev)
    incidence[hd, inc_c, torch.where(real, inc_y, n_cols)] = True
    mm = torch.float16 if dev.type == "cuda" else torch.float32
    out = torch.zeros(heads, n_rows, n_cols + 1, dtype=torch.bool, device=dev)
    out[:, :, :n_cols] = torch.bmm(full.transpose(1, 2).to(mm), incidence[:, :nc, :n_cols].to(mm)) > 0
    ys = torch.where(torch.arange(block, device=dev)[None, :] < reached[ph, pc, px][:, None], tab_y[ph, pc], n_cols)
    out[ph[:, None].expand_as(ys), px[:, None].expand_as(ys), ys] = True  # column n_cols: not reached
    return out[:, :, :n_cols]


def _orders(keeps: list[SlotKeep], kind: str, dev: torch.device) -> torch.Tensor:
    """int64 [len(keeps), n]: the query (``kind`` "q") or key orders of sub keep sets of one length."""
    return torch.stack([kp.q_order if kind == "q" else kp.k_order for kp in keeps]).to(dev, torch.int64)


def _pad_view(x: torch.Tensor, block: int, value: int) -> torch.Tensor:
    """int64 [H, n] -> [H, ceil(n / block), block], padded with ``value``."""
    nb = _cdiv(x.shape[1], block)
    return torch.nn.functional.pad(x, (0, nb * block - x.shape[1]), value=value).view(x.shape[0], nb, block)


def _gather(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``src[h, index[h, ...]]`` for ``src`` [H, n] and ``index`` [H, ...]."""
    return torch.gather(src, 1, index.reshape(index.shape[0], -1)).view(index.shape)


def _own_positions(blocks: torch.Tensor, mine: torch.Tensor, kinv: torch.Tensor, prefix: int, block: int) -> None:
    """Set in ``blocks`` (bool [H, nqb, nkb], contiguous) the tile of each part row's own position: row ``r``
    (query index ``mine[h, r]``, int64 [Hs, rows], ``Hs`` 1 or H) in final query block ``r // block`` against key
    block ``kinv[h, mine[h, r] + prefix] // block`` (``kinv`` int64 [Hs, n_k]). One Triton launch where the kernels
    run (was five ops); `_own_positions_reference` otherwise."""
    heads, rows = blocks.shape[0], mine.shape[1]
    if not triton_runs(blocks):
        _own_positions_reference(blocks, mine, kinv, prefix, block)
        return
    mine = mine if mine.stride(1) == 1 else mine.contiguous()
    kinv = kinv if kinv.stride(1) == 1 else kinv.contiguous()
    if heads and rows:
        _own_positions_kernel[(triton.cdiv(rows, 1024), heads)](
            blocks.view(torch.uint8), mine, kinv, mine.stride(0) if mine.shape[0] > 1 else 0,
            kinv.stride(0) if kinv.shape[0] > 1 else 0, rows, prefix, blocks.shape[1], blocks.shape[2], B=block,
            BR=1024,
        )  # fmt: skip


def _own_positions_reference(
    blocks: torch.Tensor, mine: torch.Tensor, kinv: torch.Tensor, prefix: int, block: int
) -> None:
    """`_own_positions` in PyTorch ops (a scatter of a scalar: ``blocks[...] = True`` would copy a host tensor, a
    stream synchronisation)."""
    heads, rows, nkb = blocks.shape[0], mine.shape[1], blocks.shape[2]
    own = (torch.arange(rows, device=blocks.device) // block) * nkb + _gather(kinv, mine + prefix) // block
    blocks.view(heads, -1).scatter_(1, own.expand(heads, rows), True)


@triton.jit
def _own_positions_kernel(BLOCKS, MINE, KINV, mine_h, kinv_h, rows, prefix, nqb, nkb, B: tl.constexpr,
                          BR: tl.constexpr):  # fmt: skip
    h = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    ok = r < rows
    pos = tl.load(MINE + h * mine_h + r, mask=ok, other=0) + prefix
    kb = tl.load(KINV + h * kinv_h + pos, mask=ok, other=0) // B
    one = tl.full([BR], 1, tl.uint8)
    tl.store(BLOCKS + (h * nqb + r // B) * nkb + kb, one, mask=ok)


@dataclass(frozen=True)
class _Incidences:
    """(sub block, final block) incidences of one group of a part (`_slots` outputs), per head: query side
    ``[Hs, nqb_m, Wq]``, key side ``[Hs, nkb, Wk]``, and the sub's block counts. They depend on the orders, the
    part's rows and the group's keys only, so heads whose sub-problems have identity orders (every pattern but Grid)
    share one (``Hs = 1``)."""

    q_slot: torch.Tensor
    q_pmax: torch.Tensor
    k_slot: torch.Tensor
    k_min: torch.Tensor
    nqb_s: int
    nkb_s: int


def _incidences(
    qs_inv: torch.Tensor,
    k_sub: torch.Tensor,
    mine: torch.Tensor,
    n_q: int,
    key_mask: torch.Tensor,
    ko: torch.Tensor,
    prefix: int,
    block: int,
    q_width: int | None,
) -> _Incidences:
    """Per head (row) of the int64 tables: ``qs_inv`` [Hs, n_q_sub] the inverse of the sub's query order, ``k_sub``
    [Hs, end] its key order; ``mine``
    [Hs, rows] the part's rows (query indices of modality m, all inside the sub chunk) in the final query order;
    ``ko`` [Hs, n_k] the final key order; ``key_mask`` bool [n_k]: the group's keys; ``q_width``: the query table's
    width when the orders agree on the part's rows (`part_row_width`), else None: one slot per row where the Triton
    pass rounds (``block`` slots, no read), the distinct sub blocks on the PyTorch path (one host read, all heads).

    The key side needs no width: the final key order takes each key's index from the sub of its own pair, and the
    group's keys are exactly the keys of this sub, so each of them has the same index in both orders and a final key
    block meets one sub key block, itself (W = 1; the block's smallest group-key position, or none)."""
    b = block
    n_q_sub, end = qs_inv.shape[1], k_sub.shape[1]
    nqb_s, nkb_s = _cdiv(n_q_sub, b), _cdiv(end, b)
    if triton_runs(ko):  # one launch for the key side and, when the width is a layout fact, the query side
        q_tables, k_slot, k_min = _incidence_tables(mine, qs_inv, ko, key_mask, end, prefix, b, q_width)
        # rows that scatter: one slot per row, as the Triton rounding pass takes them (O(block) per tile either way)
        q_slot, q_pmax = q_tables or _query_incidences(mine, qs_inv, n_q, prefix, b, None, per_row=True)
    else:
        q_slot, q_pmax = _query_incidences(mine, qs_inv, n_q, prefix, b, q_width)
        k_slot, k_min = _key_incidences(ko, key_mask, end, b)
    return _Incidences(q_slot, q_pmax, k_slot, k_min, nqb_s, nkb_s)


_POS = torch.int32  # original positions (< 2**31): halves the [nqb, nkb] reach tables


def _query_incidences(
    mine: torch.Tensor, qs_inv: torch.Tensor, n_q: int, prefix: int, b: int, q_width: int | None, per_row: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sub query block, final query block) incidences in PyTorch ops: max original position of the group's rows
    in both, ``[Hs, nqb_m, W]`` (`_incidences`; the reference of `_incidence_tables`). ``per_row``: every row its
    own slot, ``W = b`` (ids may repeat; the rounding ORs over slots, so a sub block's largest position is implied):
    no sort and no host read for scattered rows."""
    heads, n_q_sub = mine.shape[0], qs_inv.shape[1]
    nqb_s = _cdiv(n_q_sub, b)
    r = _pad_view(mine, b, n_q)  # [Hs, nqb_m, b] query index at each final row of the part
    ok = r < n_q
    q_ids = torch.where(ok, _gather(qs_inv, r.clamp(max=n_q_sub - 1)) // b, nqb_s)
    q_vals = torch.where(ok, r + prefix, -1).to(_POS)
    if per_row:
        return q_ids, q_vals
    if q_width is None:
        q_slot, q_pmax = _slots(q_ids.flatten(0, 1), q_vals.flatten(0, 1), nqb_s, True, None)
    else:  # the orders agree on the part's rows: their sub blocks come in order, one run each
        q_slot, q_pmax = _runs(q_ids.flatten(0, 1), q_vals.flatten(0, 1), nqb_s, q_width)
    return q_slot.view(heads, -1, q_slot.shape[1]), q_pmax.view(heads, -1, q_pmax.shape[1])


def _key_incidences(ko: torch.Tensor, key_mask: torch.Tensor, end: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sub key block, final key block) incidences in PyTorch ops: one per final key block holding a group key, its
    smallest group-key position, ``[Hs, nkb, 1]`` (`_incidences`; the reference of `_incidence_tables`)."""
    n_k = ko.shape[1]
    c = _pad_view(ko, b, n_k)  # [Hs, nkb, b] key position at each final key index
    ok = (c < end) & key_mask[c.clamp(max=n_k - 1)]
    big = torch.iinfo(_POS).max
    k_min = torch.where(ok, c, big).to(_POS).amin(2, keepdim=True)  # [Hs, nkb, 1]
    own = torch.arange(c.shape[1], device=c.device)[:, None]
    return torch.where(k_min < big, own, _cdiv(end, b)), k_min


def _incidence_tables(
    mine: torch.Tensor,
    qs_inv: torch.Tensor,
    ko: torch.Tensor,
    key_mask: torch.Tensor,
    end: int,
    prefix: int,
    b: int,
    q_width: int | None,
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor, torch.Tensor]:
    """`_key_incidences` and, when ``q_width`` is given (the orders agree: `_runs`), `_query_incidences` in one
    Triton launch (one program per (final block, head); ~35 ops of gathers, pads, scans and scatters before), as
    ``(q_slot, q_pmax) or None, k_slot, k_min``."""
    heads, n_m = mine.shape
    n_k, n_q_sub = ko.shape[1], qs_inv.shape[1]
    nqb_m, nkb = _cdiv(n_m, b), _cdiv(n_k, b)
    dev, width = ko.device, q_width or 0
    q_slot = torch.empty(heads, nqb_m, width, dtype=torch.int64, device=dev)
    q_pmax = torch.empty(heads, nqb_m, width, dtype=_POS, device=dev)
    k_slot = torch.empty(heads, nkb, 1, dtype=torch.int64, device=dev)
    k_min = torch.empty(heads, nkb, 1, dtype=_POS, device=dev)
    mine, qs_inv, ko = (t if t.stride(1) == 1 else t.contiguous() for t in (mine, qs_inv, ko))
    n_blocks = max(nkb, nqb_m if width else 0)
    if heads and n_blocks:
        _incidences_kernel[(n_blocks, heads)](
            mine, qs_inv, ko, key_mask.view(torch.uint8), q_slot, q_pmax, k_slot, k_min,
            mine.stride(0), qs_inv.stride(0), ko.stride(0), n_m, n_k, end, prefix, nqb_m, nkb,
            _cdiv(n_q_sub, b), _cdiv(end, b), width, B=b,
        )  # fmt: skip
    return ((q_slot, q_pmax) if width else None), k_slot, k_min


@triton.jit
def _incidences_kernel(MINE, QS_INV, KO, KEY_MASK, Q_SLOT, Q_PMAX, K_SLOT, K_MIN,
                       mine_h, qs_h, ko_h, n_m, n_k, end, prefix, nqb_m, nkb, nqb_s, nkb_s, width,
                       B: tl.constexpr):  # fmt: skip
    blk = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    j = tl.arange(0, B)
    i = blk * B + j
    if blk < nqb_m:  # query side (width 0: none): a final block's rows meet their sub blocks in order, one run each
        ok = i < n_m
        r = tl.load(MINE + h * mine_h + i, mask=ok, other=0)
        ids = tl.load(QS_INV + h * qs_h + r, mask=ok, other=0) // B
        prev_ok = ok & (j > 0)
        r_prev = tl.load(MINE + h * mine_h + i - 1, mask=prev_ok, other=0)
        prev = tl.load(QS_INV + h * qs_h + r_prev, mask=prev_ok, other=0) // B
        first = (j == 0) | (ids != prev)
        run = tl.cumsum(first.to(tl.int32), 0) - 1
        pos = (r + prefix).to(tl.int32)
        for w in range(width):  # runs past the width: none (the width bounds them)
            sel = ok & (run == w)
            sid = tl.max(tl.where(sel, ids, -1), 0)
            tl.store(Q_SLOT + (h * nqb_m + blk) * width + w, tl.where(sid >= 0, sid, nqb_s))
            tl.store(Q_PMAX + (h * nqb_m + blk) * width + w, tl.max(tl.where(sel, pos, -1), 0))
    if blk < nkb:  # key side: the block's smallest group-key position, its own sub block when it has one
        ok = i < n_k
        c = tl.load(KO + h * ko_h + i, mask=ok, other=0)
        ok = ok & (c < end) & (tl.load(KEY_MASK + c, mask=ok, other=0) != 0)
        big = 2147483647
        k_min = tl.min(tl.where(ok, c, big), 0)
        tl.store(K_MIN + h * nkb + blk, k_min.to(tl.int32))
        tl.store(K_SLOT + h * nkb + blk, tl.where(k_min < big, blk, nkb_s))


def _round_tiles(
    sub_blocks: torch.Tensor,
    inc: _Incidences,
    block: int,
    out: torch.Tensor,
    key_runs: list[tuple[int, int]] | None = None,
) -> None:
    """One group's sub blocks of H heads (bool [H, nqb_s, nkb_s]; ``inc`` per head or one for all) rounded onto the
    final orders and ORed into ``out`` (bool [H, ceil(rows / block), nkb], any strides): the part's own query blocks
    only (its rows lead its query order; the blocks after them hold none). ``key_runs``: runs ``[lo, hi)`` of final
    key blocks that can hold a group key (`group_key_runs`, a superset); the others have no incidence, so only the
    runs are rounded (in place, one call each)."""
    heads = sub_blocks.shape[0]  # sub block ids nqb_s / nkb_s: empty slots

    def per_head(t: torch.Tensor) -> torch.Tensor:  # one table for every head: an expanded view, not a copy
        return t.expand(heads, *t.shape[1:])

    q_slot, q_pmax, k_slot, k_min = map(per_head, (inc.q_slot, inc.q_pmax, inc.k_slot, inc.k_min))
    # more row slots than key slots: the transposed problem, its rows the key blocks. Except where the Triton pass
    # runs and the rows scatter (identity-ordered sub rows against grid-ordered final video rows: up to `block` row
    # slots against one key slot): it takes them as rows, O(Wr) per tile in registers, where the transposed problem
    # goes to `_split_tiles` (its reach, sorts, matmul and a host read). A 131K 2D layer's video part, 28 heads, 128
    # row slots, 800 rows: 1.09 ms against 4.47 ms; with 2 row slots the transposed pass stays faster, 0.38 against
    # 0.55 ms (H100, 2026-12-07)
    q_w, k_w = q_slot.shape[2], k_slot.shape[2]
    transposed = q_w > k_w and (q_w <= SLOT_LOOP_MAX or not triton_runs(sub_blocks))
    for lo, hi in key_runs if key_runs is not None else [(0, k_slot.shape[1])]:
        if transposed:
            _tiles(sub_blocks.transpose(1, 2), k_slot[:, lo:hi], k_min[:, lo:hi], q_slot, q_pmax, block,
                   out.transpose(1, 2)[:, lo:hi], reverse=True)  # fmt: skip
        else:
            _tiles(sub_blocks, q_slot, q_pmax, k_slot[:, lo:hi], k_min[:, lo:hi], block, out[:, :, lo:hi])


@functools.lru_cache(maxsize=256)
def group_key_runs(layout: ModalityLayout, group: frozenset[int], end: int, block: int) -> list[tuple[int, int]]:
    """Runs ``[lo, hi)`` of final key blocks that can hold a key of modalities ``group`` before ``end``, ascending
    and disjoint: the blocks overlapping such a segment (a layout fact: every sub order, and so the final key order,
    permutes keys only inside their own segment; keys past ``end`` keep their positions)."""
    blocks: set[int] = set()
    for s in layout.segments:
        if int(s.modality) in group and s.start < end:
            blocks.update(range(s.start // block, _cdiv(min(s.end, end), block)))
    runs: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


def _round_columns(
    cids: list[torch.Tensor | None],
    k_sub: torch.Tensor,
    inc: _Incidences,
    key_mask: torch.Tensor,
    kinv: torch.Tensor,
    plain: list[bool] | None = None,
) -> list[torch.Tensor | None]:
    """The column lists of one group's subs (one per head) as final key-permuted column ids per final query block
    of the part: int64 [nqb_m, C] (-1 padding; the blocks after the part's rows have none: `SlotKeep` lists may
    stop early), or None for a sub without columns. ``k_sub``
    [Hs, end]: the subs' key orders, ``kinv`` [Hs, n_k]: the inverse final key orders, ``inc``: per head or one
    for all (``Hs = 1``). Lists that are one list for every sub query block (vertical-slash: an expanded view, known
    without a host read) are done for all heads at once, padded to the longest, and stay one list (an expanded view:
    the index drops a block's non-causal columns). ``plain[i]``: sub ``i``'s key order and its head's final key
    order are both the identity and the group holds every key (`key_mask` all True): such a list is final as it is
    (a Q-boundary part of vertical-slash heads: ~10 host ops and two [H', n_k] gathers less per part)."""
    dev = kinv.device
    out: list[torch.Tensor | None] = [None] * len(cids)
    one: list[int] = []
    for i, cid in enumerate(cids):
        if cid is None or cid.numel() == 0:
            continue
        if cid.stride(0) == 0 or torch.equal(cid, cid[:1].expand_as(cid)):
            one.append(i)
            continue
        # lists that differ between sub query blocks: their union, each final block reaching a column through the
        # sub blocks that list it
        q_slot, q_pmax = _rows(inc.q_slot, [i])[0], _rows(inc.q_pmax, [i])[0]
        cid = cid.to(dev, torch.int64)
        universe = torch.unique(cid[cid >= 0])  # host sync: output size
        member = torch.zeros(inc.nqb_s + 1, universe.numel(), dtype=torch.bool, device=dev)
        rows = torch.arange(inc.nqb_s, device=dev)[:, None].expand_as(cid)
        valid = cid >= 0
        member[rows[valid], torch.searchsorted(universe, cid[valid])] = True
        col_reach = torch.full((q_slot.shape[0], universe.numel()), -1, dtype=q_pmax.dtype, device=dev)
        for w in range(q_slot.shape[1]):  # slots, W <= block
            col_reach = torch.maximum(col_reach, torch.where(member[q_slot[:, w]], q_pmax[:, w : w + 1], -1))
        final = _final_columns(universe[None], _rows(k_sub, [i]), key_mask, _rows(kinv, [i]), col_reach[None])
        out[i] = final[0]
    nqb_m = inc.q_slot.shape[1]
    if plain is not None:
        for i in [i for i in one if plain[i]]:
            out[i] = cids[i][0].to(dev, torch.int64)[None, :].expand(nqb_m, -1)  # type: ignore[index]
        one = [i for i in one if not plain[i]]
    if one:
        lists = [cids[i][0].to(dev, torch.int64) for i in one]  # type: ignore[index]
        if len({c.numel() for c in lists}) == 1:  # one width (vertical-slash lists: the budget's): one stack
            universe = torch.stack(lists)  # [H', U]
        else:
            universe = torch.nn.utils.rnn.pad_sequence(lists, batch_first=True, padding_value=-1)
        # one list for every final block, a view: a column after all of a block's rows holds no causal pair there,
        # which the index drops itself (the reach test of the differing lists above would only repeat it per block,
        # [H', nqb_m, U] int64: ~150 MB and ~3.5 ms of a 131K Q-boundary layer's device time, H100)
        final = _final_columns(universe, _rows(k_sub, one), key_mask, _rows(kinv, one), None)
        for i, c in zip(one, final, strict=True):
            out[i] = c[None, :].expand(nqb_m, -1)
    return out


def _final_columns(
    universe: torch.Tensor,
    k_sub: torch.Tensor,
    key_mask: torch.Tensor,
    kinv: torch.Tensor,
    col_reach: torch.Tensor | None,
) -> torch.Tensor:
    """Sub column ``universe[h, u]`` (sub key-permuted id, -1 padding) as a final key-permuted id where it is one of
    the group's keys, else -1: int64 [H, U], or [H, nqb_m, U] with ``col_reach`` (broadcastable [H, nqb_m, U]): only
    where the final block's rows reach it (``pos <= col_reach[h, X, u]``). ``k_sub`` [H or 1, end], ``kinv`` [H or
    1, n_k]."""
    heads = universe.shape[0]
    pos = _gather(k_sub.expand(heads, -1), universe.clamp(min=0))  # original position of each column
    keep = (universe >= 0) & key_mask[pos]
    final = _gather(kinv.expand(heads, -1), pos)
    if col_reach is None:
        return torch.where(keep, final, -1)
    return torch.where(keep[:, None, :] & (pos[:, None, :] <= col_reach), final[:, None, :], -1)


def _pairs_of(spec: HeadSpec, m: Modality, layout_modalities: tuple[Modality, ...]) -> dict[Modality, PatternConfig]:
    """The pattern of each key modality for rows of ``m`` (Q: one for all keys; 2D: one per ordered pair)."""
    return {n: spec.for_query(m) if spec.boundary == "q" else spec.for_pair(m, n) for n in layout_modalities}


def _empty_part(n_q: int, n_k: int, block: int, dev: torch.device) -> SlotKeep:
    """A part computing no row (a modality without query rows in the chunk)."""
    blocks = torch.zeros(_cdiv(n_q, block), _cdiv(n_k, block), dtype=torch.bool, device=dev)
    return SlotKeep(torch.arange(n_q, device=dev), torch.arange(n_k, device=dev), blocks, None, 0)


def boundary_keeps(
    q: torch.Tensor,
    k: torch.Tensor,
    lt: LayoutTensors,
    specs: dict[int, HeadSpec],
    *,
    scale: float | None = None,
) -> dict[int, list[SlotKeep]]:
    """`mmi_core.boundary.boundary_selection` of every boundary head in ``specs`` (query head -> spec) as its three
    parts (TEXT, IMAGE, VIDEO; `SlotKeep` with ``rows``), on ``q``'s device.

    ``q [n_q, Hq, D]``, ``k [n_k, Hkv, D]``, token-major, any float dtype; ``lt`` the layout tensors of the ``n_k``
    keys (on ``q``'s device). ``index_from_keeps`` of the parts equals ``index_from_selections`` of the reference's
    parts exactly. Heads whose patterns are all dense, and every head when ``n_q == 0``, are left out (dense).
    Raises ValueError for another boundary kind, inconsistent shapes or devices.
    """
    for h, spec in specs.items():
        if not isinstance(spec, HeadSpec) or spec.boundary not in ("q", "2d"):
            raise ValueError(f"head {h}: boundary_keeps needs a HeadSpec with boundary 'q' or '2d', got {spec!r}")
    if q.dim() != 3 or k.dim() != 3 or q.shape[1] % k.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q [n_q, Hq, D] and k [n_k, Hkv, D] with Hkv | Hq, got {tuple(q.shape)}, {tuple(k.shape)}")
    layout = lt.layout
    n_q, n_k = q.shape[0], k.shape[0]
    if layout.num_tokens != n_k or n_q > n_k:
        raise ValueError(f"layout has {layout.num_tokens} tokens, k {n_k}, q {n_q}: need layout == k >= q")
    if q.device != k.device or lt.seg_id.device != q.device:  # tensors' devices: "cuda" and "cuda:0" are one
        raise ValueError(f"q, k and the layout tensors must share a device, got {q.device}, {k.device}, {lt.device}")
    specs = {h: s for h, s in specs.items() if not s.is_dense}
    if n_q == 0 or not specs:
        return {}
    blocks_of = {s.block or 64 for s in specs.values()}
    if len(blocks_of) != 1:
        raise ValueError(f"boundary heads of one layer must share one block size, got {sorted(blocks_of)}")
    block = blocks_of.pop()
    dev = q.device
    prefix = n_k - n_q
    kmod = lt.modality
    mods = layout.modalities()
    last = modality_last_rows(layout, n_q)
    rows_of = {m: sum(max(0, s.end - max(s.start, prefix)) for s in layout.segments_of(m)) for m in last}

    # sub-problems: per query modality, rounds of one pattern per head (a 2D head's i-th distinct pattern in round
    # i); every round of every modality estimated in one call
    pairs = {m: {h: _pairs_of(spec, m, mods) for h, spec in specs.items()} for m in last}  # m -> head -> pairs
    requests: list[tuple[Modality, dict[int, PatternConfig]]] = []
    for m in last:
        distinct = {h: list(dict.fromkeys(of.values())) for h, of in pairs[m].items()}
        for r in range(max(len(c) for c in distinct.values())):
            requests.append((m, {h: c[r] for h, c in distinct.items() if r < len(c)}))
    subs: dict[tuple[int, Modality, PatternConfig], SlotKeep] = {}
    done = _sub_keeps(q, k, lt, [(cfgs, *last[m]) for m, cfgs in requests], block, scale)
    for (m, cfgs), keeps in zip(requests, done, strict=True):
        for h, kp in keeps.items():
            subs[(h, m, cfgs[h])] = kp

    # per query modality: the part of every head, in two batches. Heads whose subs of the part are all non-Grid
    # (identity orders) share the part's orders and incidences (tables of one row, expanded); heads with a Grid sub
    # (orders from each head's stride/phase estimate) get per-head tables, one row each, computed together. When
    # all heads' tables fit one chunk, one per-head batch for all (the host's work per batch is the cost).
    parts: dict[int, list[SlotKeep]] = {h: [] for h in specs}
    stacked: dict[tuple[int, ...], torch.Tensor] = {}  # one batch's stacked sub orders

    def orders(keeps: list[SlotKeep], kind: str) -> torch.Tensor:  # `_orders`, stacked once per list and batch
        # by the order tensors themselves: a sub whose rows are all its keys (no cached prefix) has one order for
        # both, so its query and key stacks (and their inverses) are one
        tag = tuple(id(kp.q_order if kind == "q" else kp.k_order) for kp in keeps)
        if tag not in stacked:
            stacked[tag] = _orders(keeps, kind, dev)
        return stacked[tag]

    inverses: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (stacked order, its inverse), per batch

    def inverse(order: torch.Tensor) -> torch.Tensor:
        if id(order) not in inverses:
            inverses[id(order)] = (order, _inverse(order))
        return inverses[id(order)][1]

    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    for m in Modality:
        if m not in last:
            for h in specs:
                parts[h].append(_empty_part(n_q, n_k, block, dev))
            continue
        end = last[m][0]
        n_m, nqb_m = rows_of[m], _cdiv(rows_of[m], block)  # a layout fact: no host read
        m_rows = query_row_ranges(layout, frozenset({m}), prefix)  # every m row lies before `end`
        rest = lt.query_rows(frozenset(mods) - {m}, prefix)  # the other rows, ascending
        of_key = pairs[m]
        grid = [h for h in specs if any(isinstance(c, Grid) for c in of_key[h].values())]
        step = max(1, GRID_CHUNK // n_k)
        if grid and len(specs) <= step:  # every head's tables fit one chunk: one batch of per-head tables
            batches = [(list(specs), len(specs))]
        else:
            batches = [([h for h in specs if h not in grid], 1)]
            batches += [(grid[a : a + step], len(grid[a : a + step])) for a in range(0, len(grid), step)]
        for batch, hs in batches:
            if not batch:
                continue
            heads = len(batch)
            stacked.clear()  # the next batch's subs differ: free the last one's [heads, n] tables
            inverses.clear()

            # m's rows in its own pattern's row order first, then the rest (ascending); every key in its own pair's
            # key order. A sub order maps each segment's rows onto the segment's own range, so m's rows in sub order
            # are the sub order's slices at m's segments: no sort, no host read
            sub_rows = orders([subs[(h, m, of_key[h][m])] for h in batch[:hs]], "q")
            slices = [sub_rows[:, a:b] for a, b in m_rows]
            mine = slices[0] if len(slices) == 1 else torch.cat(slices, dim=1)
            qo = torch.cat([mine, rest.expand(hs, -1)], dim=1)
            # each key's final index is its index in its own pair's sub order (keys past `end`: their position).
            # Every sub order maps a segment's keys onto the segment's own range, so these indices form one
            # permutation: the inverse final order, one inverse per distinct sub order
            inv_of, tag_of = {}, {}  # sub order tag -> (extended order, its inverse); key modality -> its tag
            for n in mods:
                key_subs = [subs[(h, m, of_key[h][n])] for h in batch[:hs]]
                tag_of[n] = tag = tuple(map(id, key_subs))
                if tag not in inv_of:
                    ks = orders(key_subs, "k")
                    ext = ks if end == n_k else torch.cat([ks, _arange(n_k, dev)[end:].expand(hs, -1)], 1)
                    inv_of[tag] = (ext, inverse(ext))  # keys past the sub's end keep their positions
                    # ext permutes [0, end) within itself: its inverse there is the sub order's (the query order's
                    # too when the sub has no cached prefix: one inverse for both)
                    inverses.setdefault(id(ks), (ks, inv_of[tag][1][:, :end]))
            if len(inv_of) == 1:  # one sub order for every key (Q-boundary, 2D with one key order): the final order
                ko, kinv = next(iter(inv_of.values()))
            else:
                kinv = inv_of[tag_of[mods[0]]][1]
                for n in mods[1:]:
                    kinv = torch.where(kmod == int(n), inv_of[tag_of[n]][1], kinv)
                ko = _inverse(kinv)

            blocks = torch.zeros(heads, nqb, nkb, dtype=torch.bool, device=dev)  # past the part's rows: empty
            columns: dict[int, list[torch.Tensor]] = {h: [] for h in batch}
            groups: dict[frozenset[int], list[int]] = {}  # key-modality group -> the batch's heads that have it
            for i, h in enumerate(batch):
                for cfg in dict.fromkeys(of_key[h].values()):
                    groups.setdefault(frozenset(int(n) for n, c in of_key[h].items() if c == cfg), []).append(i)
            for group, idx in groups.items():
                key_mask = lt.modality_mask(group)
                cfg_of = {batch[i]: of_key[batch[i]][Modality(min(group))] for i in idx}
                gsubs = [subs[(h, m, cfg)] for h, cfg in cfg_of.items()]
                rows = idx[:hs]
                q_sub, k_sub = orders(gsubs[:hs], "q"), orders(gsubs[:hs], "k")
                sub_ko, sub_kinv = _rows(ko, rows), _rows(kinv, rows)
                # the sub's row order agrees with the part's on m's rows unless one of them is a Grid on video rows
                # and they differ (a Grid's order is the identity outside video)
                agree = m != Modality.VIDEO or all(
                    cfg_of[batch[i]] == of_key[batch[i]][m]
                    or (not isinstance(cfg_of[batch[i]], Grid) and not isinstance(of_key[batch[i]][m], Grid))
                    for i in idx
                )
                q_width = part_row_width(layout, m, prefix, block) if agree else None
                qs_inv = inverse(q_sub)  # the key order's inverse too when the sub has no cached prefix
                inc = _incidences(qs_inv, k_sub, _rows(mine, rows), n_q, key_mask, sub_ko, prefix, block, q_width)
                sub_blocks = torch.stack([sub.blocks for sub in gsubs])  # on the device: the estimator made them
                runs = group_key_runs(layout, group, end, block)
                if len(idx) == heads:  # in place
                    _round_tiles(sub_blocks, inc, block, blocks[:, :nqb_m], runs)
                else:
                    at = to_device(idx, dev)
                    tiles = blocks[at, :nqb_m]  # a copy: ORed into, then written back
                    _round_tiles(sub_blocks, inc, block, tiles, runs)
                    blocks[at, :nqb_m] = tiles
                cids = [sub.column_ids for sub in gsubs]
                # identity key orders (no Grid pattern among the head's pairs) and every key in the group: the
                # sub's column ids are final ids
                every_key = group == frozenset(int(n) for n in mods)
                plain = [every_key and not any(isinstance(c, Grid) for c in of_key[batch[i]].values()) for i in idx]
                for i, c in zip(idx, _round_columns(cids, k_sub, inc, key_mask, sub_kinv, plain), strict=True):
                    if c is not None:
                        columns[batch[i]].append(c)
            _own_positions(blocks, mine, kinv, prefix, block)  # every row keeps its own position
            qos, kos = qo.unbind(0), ko.unbind(0)  # one row each, or one for all heads (hs == 1)
            for i, (h, bl) in enumerate(zip(batch, blocks.unbind(0), strict=True)):
                cols = columns[h]
                cid = None if not cols else cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
                j = i if hs > 1 else 0
                parts[h].append(SlotKeep(qos[j], kos[j], bl, cid, n_m))
    return {h: parts[h] for h in specs}
