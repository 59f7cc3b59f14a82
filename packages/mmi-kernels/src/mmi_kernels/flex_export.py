"""Export a `SparseIndex` to PyTorch FlexAttention: the identical keep set as a `BlockMask` over permuted Q/K/V.

FlexAttention runs one block mask over tensors in one token order per head, so the export works in the index's
*permuted* orders: `flex_permute` gathers ``q`` rows through the slot's query order and ``k``/``v`` rows through its
key order, the block mask lists the kept (query block, key block) tiles of those orders, and `flex_unpermute`
scatters the output back. Causality is on original positions, so the block mask carries a ``mask_mod`` that
compares the original positions of the permuted rows (two int32 lookup tables).

Tiles are split the way FlexAttention wants them (``BlockMask.from_kv_blocks``):
- **full** tiles: every pair causal (``k_pos_max[kb] <= q_pos_min[qb]``): no ``mask_mod`` is evaluated;
- **partial** tiles: the rest (diagonal and boundary tiles, where ``k_pos_max > q_pos_min``): ``mask_mod`` on
  original positions. Only these pay for the element mask.
The lists are ascending and, by default, trimmed to the widest row (``trim=True``; FlexAttention's GPU kernel reads
only ``kv_num_blocks`` entries per row). Inductor's CPU template asserts ``width * block >= n_k``, so CPU runs need
``trim=False``. Query-side lists are not built (``compute_q_blocks=False``): they serve only the backward pass.

Vertical-line columns (`SparseIndex.column_ids`, from vertical-slash heads) are single keys: a ``BlockMask`` with
equal query and key block sizes cannot hold a 1-wide key block, and an exact per-column ``mask_mod`` would need a
[query blocks x keys] lookup table. ``columns="error"`` (default) refuses such an index with a ValueError naming the
slot; ``columns="widen"`` keeps each column's whole key block as a partial tile: a superset of the keep set (the
output then differs from mmi's), reported in `FlexExport.widened_tiles`.

Eager ``flex_attention`` (no ``torch.compile``) ignores the block lists and applies only ``mask_mod`` to every pair
(torch 2.11: it materialises the full score matrix), so it computes dense causal attention for this export: run the
export through ``torch.compile(flex_attention)`` (CPU or GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from mmi_kernels.index import SparseIndex, _mask_to_lists, index_to_bsr

__all__ = ["FlexExport", "flex_permute", "flex_sparse_attention", "flex_unpermute", "index_to_block_mask"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class FlexExport:
    """One request of a `SparseIndex` in FlexAttention form.

    block_mask: ``BlockMask`` of shape [1, H, n_q, n_k]; H = the slot's 1 (broadcast over its heads) or Hq (every
      query head reads its slot's lists).
    heads: the query heads the export covers, in FlexAttention head order (int64 [H_q_export]).
    q_order: int64 [H, n_q] request-local query index at each permuted row (H rows follow ``block_mask``'s H).
    k_order: int64 [Hk, n_k] request-local key index at each permuted row; Hk = KV heads when every slot of a KV head
      shares its key order (GQA in FlexAttention), else one row per exported query head (``gqa`` False).
    k_heads: int64 [Hk] the source KV head of each key row.
    gqa: whether FlexAttention runs with ``enable_gqa=True`` (Hk < number of exported query heads).
    full_tiles, partial_tiles: tiles per class over the block mask's H rows.
    widened_tiles: tiles added by ``columns="widen"`` (0 otherwise).
    """

    block_mask: object  # torch.nn.attention.flex_attention.BlockMask (imported lazily)
    request: int
    slot: int | None
    heads: torch.Tensor
    q_order: torch.Tensor
    k_order: torch.Tensor
    k_heads: torch.Tensor
    gqa: bool
    full_tiles: int
    partial_tiles: int
    widened_tiles: int


def _slot_tiles(
    index: SparseIndex, bsr_ptr: torch.Tensor, bsr_ind: torch.Tensor, request: int, slot: int, columns: str
) -> tuple[torch.Tensor, int]:
    """bool [nqb, nkb]: the tiles the slot keeps for the request (leading run and list), plus widened columns."""
    b, tqb = index.block, index.total_qblocks
    qb0, qb1 = int(index.cu_qblocks[request]), int(index.cu_qblocks[request + 1])
    nkb = _cdiv(index.seqlens_k[request], b)
    tiles = torch.zeros(qb1 - qb0, nkb, dtype=torch.bool, device=index.device)
    rows = slot * tqb + torch.arange(qb0, qb1, device=index.device)
    cnt = (bsr_ptr[rows + 1] - bsr_ptr[rows]).long()
    lo, hi = int(bsr_ptr[rows[0]]), int(bsr_ptr[rows[-1] + 1])
    r = torch.repeat_interleave(torch.arange(qb1 - qb0, device=index.device), cnt)
    tiles[r, bsr_ind[lo:hi].long()] = True
    ccount = index.column_count[slot, qb0:qb1].long()
    widened = 0
    if bool((ccount > 0).any()):
        if columns != "widen":
            raise ValueError(
                f"slot {slot} of request {request} keeps {int(ccount.sum())} single key columns (vertical lines): "
                "a FlexAttention BlockMask cannot hold 1-wide key blocks; pass columns='widen' to keep their whole "
                "key blocks (a superset of the keep set) or run these heads with mmi's kernel"
            )
        cids = index.lists("column", slot)[1][qb0:qb1]
        valid = cids >= 0
        rr = torch.arange(qb1 - qb0, device=index.device)[:, None].expand_as(cids)
        before = int(tiles.sum())
        tiles[rr[valid], cids[valid] // b] = True
        widened = int(tiles.sum()) - before
    return tiles, widened


def _positions(index: SparseIndex, request: int, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 [n_q] query order, int64 [n_k] key order) of the slot for the request."""
    q0, k0 = int(index.cu_seqlens_q[request]), int(index.cu_seqlens_k[request])
    n_q, n_k = index.seqlens_q[request], index.seqlens_k[request]
    return index.q_order[slot, q0 : q0 + n_q].long(), index.k_order[slot, k0 : k0 + n_k].long()


def _lists(mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    count, ids = _mask_to_lists(mask)
    out = torch.zeros(mask.shape[0], width, dtype=torch.int32, device=mask.device)
    out[:, : ids.shape[1]] = ids.to(torch.int32)
    return count.to(torch.int32), out


def _slot_heads(index: SparseIndex, slot: int) -> list[int]:
    first, count = int(index.slot_q_head[slot]), int(index.slot_num_heads[slot])
    return list(range(first, first + count))


def index_to_block_mask(
    index: SparseIndex,
    request: int = 0,
    slot: int | None = None,
    *,
    trim: bool = True,
    columns: Literal["error", "widen"] = "error",
) -> FlexExport:
    """FlexAttention form of one request of ``index``: the identical keep set as a ``BlockMask`` (module docstring).

    ``slot``: one head slot (H = 1, the slot's query heads share it) or None for every slot (H = Hq, head h reads
    its slot's lists). ``trim``: list width = the widest row (GPU) or every key block (``trim=False``, needed by the
    CPU inductor template). Raises ValueError for a request/slot out of range, (``columns="error"``) a slot that
    keeps single key columns, or row-group slots (boundary heads: a query head in several slots, each in its own
    orders, is not one permuted BlockMask).
    """
    from torch.nn.attention.flex_attention import BlockMask

    if not 0 <= request < index.num_requests:
        raise ValueError(f"request {request} is outside [0, {index.num_requests})")
    if slot is not None and not 0 <= slot < index.num_slots:
        raise ValueError(f"slot {slot} is outside [0, {index.num_slots})")
    if columns not in ("error", "widen"):
        raise ValueError(f"columns must be 'error' or 'widen', got {columns!r}")
    if index.has_row_groups():
        raise ValueError("index_to_block_mask: row-group slots (boundary heads) have no single permuted BlockMask")
    b, dev = index.block, index.device
    n_q, n_k = index.seqlens_q[request], index.seqlens_k[request]
    prefix = n_k - n_q
    qb0, qb1 = int(index.cu_qblocks[request]), int(index.cu_qblocks[request + 1])
    kb0, kb1 = int(index.cu_kblocks[request]), int(index.cu_kblocks[request + 1])
    nkb = kb1 - kb0
    bsr = index_to_bsr(index)
    slots = [slot] if slot is not None else list(range(index.num_slots))

    full_m, part_m, qpos, kpos, widened = [], [], [], [], 0
    for s in slots:
        tiles, w = _slot_tiles(index, bsr.indptr, bsr.indices, request, s, columns)
        widened += w
        all_causal = index.k_pos_max[s, None, kb0:kb1] <= index.q_pos_min[s, qb0:qb1, None]
        full_m.append(tiles & all_causal)
        part_m.append(tiles & ~all_causal)
        qo, ko = _positions(index, request, s)
        qpos.append((qo + prefix).to(torch.int32))
        kpos.append(ko.to(torch.int32))
    # FlexAttention head h of the export -> index of its slot in `slots`
    if slot is None:
        head_slot = torch.empty(index.num_q_heads, dtype=torch.int64)
        for i, s in enumerate(slots):
            head_slot[_slot_heads(index, s)] = i
        heads = torch.arange(index.num_q_heads)
    else:
        head_slot = torch.zeros(1, dtype=torch.int64)
        heads = torch.tensor(_slot_heads(index, slot))
    full = torch.stack(full_m)[head_slot.to(dev)]
    part = torch.stack(part_m)[head_slot.to(dev)]
    hh, nqb = full.shape[0], full.shape[1]
    width = max(int(full.sum(2).max()), int(part.sum(2).max()), 1) if trim else nkb
    fcnt, fidx = _lists(full.reshape(hh * nqb, nkb), width)
    pcnt, pidx = _lists(part.reshape(hh * nqb, nkb), width)
    q_pos = torch.stack(qpos)[head_slot.to(dev)].contiguous()  # [H, n_q] original position of each permuted row
    k_pos = torch.stack(kpos)[head_slot.to(dev)].contiguous()  # [H, n_k]

    mask_mod: Callable
    if slot is None:

        def mask_mod(b_, h, q_idx, kv_idx):
            return q_pos[h, q_idx] >= k_pos[h, kv_idx]
    else:
        q1, k1 = q_pos[0], k_pos[0]

        def mask_mod(b_, h, q_idx, kv_idx):
            return q1[q_idx] >= k1[kv_idx]

    bm = BlockMask.from_kv_blocks(
        pcnt.view(1, hh, nqb),
        pidx.view(1, hh, nqb, width),
        fcnt.view(1, hh, nqb),
        fidx.view(1, hh, nqb, width),
        BLOCK_SIZE=b,
        mask_mod=mask_mod,
        seq_lengths=(n_q, n_k),
        compute_q_blocks=False,
    )
    # key rows: one per KV head when the slots of each KV head agree on the key order, else one per query head
    q_order = (q_pos.long() - prefix).contiguous()
    k_by_slot = {s: _positions(index, request, s)[1] for s in slots}
    kv_of = {s: int(index.slot_kv_head[s]) for s in slots}
    kv_heads = sorted(set(kv_of.values()))
    shared = all(
        all(torch.equal(k_by_slot[s], k_by_slot[t]) for t in slots if kv_of[t] == kv_of[s]) for s in slots
    ) and (len(heads) > len(kv_heads))
    if shared:
        first_slot = {kv: next(s for s in slots if kv_of[s] == kv) for kv in kv_heads}
        k_order = torch.stack([k_by_slot[first_slot[kv]] for kv in kv_heads])
        k_heads = torch.tensor(kv_heads)
    else:
        k_order = k_pos.long()
        g = index.num_q_heads // index.num_kv_heads
        k_heads = heads // g
    return FlexExport(
        block_mask=bm,
        request=request,
        slot=slot,
        heads=heads,
        q_order=q_order,
        k_order=k_order.contiguous(),
        k_heads=k_heads,
        gqa=shared,
        full_tiles=int(full.sum()),
        partial_tiles=int(part.sum()),
        widened_tiles=widened,
    )


def flex_permute(
    export: FlexExport, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-major ``q [n_q, Hq, D]``, ``k, v [n_k, Hkv, D]`` of the export's request -> FlexAttention layout in the
    export's permuted orders: ``q [1, H_q_export, n_q, D]``, ``k, v [1, Hk, n_k, D]`` (materialised gathers).
    Raises ValueError when the token counts do not match the export."""
    n_q, n_k = export.q_order.shape[1], export.k_order.shape[1]
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape or q.shape[0] != n_q or k.shape[0] != n_k:
        raise ValueError(
            f"expected q [{n_q}, Hq, D] and k, v [{n_k}, Hkv, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    dev = q.device
    heads = export.heads.to(dev)
    qo = export.q_order.to(dev)
    if qo.shape[0] == 1:
        qf = q[qo[0]][:, heads].transpose(0, 1)
    else:
        qf = torch.gather(q[:, heads].transpose(0, 1), 1, qo[:, :, None].expand(-1, -1, q.shape[2]))
    ko, kh = export.k_order.to(dev), export.k_heads.to(dev)
    idx = ko[:, :, None].expand(-1, -1, k.shape[2])
    kf = torch.gather(k[:, kh].transpose(0, 1), 1, idx)
    vf = torch.gather(v[:, kh].transpose(0, 1), 1, idx)
    return qf[None].contiguous(), kf[None].contiguous(), vf[None].contiguous()


def flex_unpermute(export: FlexExport, o: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """FlexAttention output ``[1, H_q_export, n_q, D]`` (permuted rows) -> token-major ``[n_q, H_q_export, D]`` in
    original order, or written into the export's heads of ``out [n_q, Hq, D]`` (returned)."""
    qo = export.q_order.to(o.device)
    h, n_q, d = o.shape[1], o.shape[2], o.shape[3]
    res = torch.empty(h, n_q, d, dtype=o.dtype, device=o.device)
    res.scatter_(1, qo.expand(h, n_q)[:, :, None].expand(-1, -1, d), o[0])
    res = res.transpose(0, 1)
    if out is None:
        return res
    out[:, export.heads.to(out.device)] = res
    return out


def flex_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    export: FlexExport,
    *,
    flex_fn: Callable | None = None,
    scale: float | None = None,
    kernel_options: dict | None = None,
) -> torch.Tensor:
    """Attention of the export's heads with FlexAttention: permute, run ``flex_fn`` (default
    ``torch.compile(flex_attention)``, built once per process), unpermute. ``q [n_q, Hq, D]``, ``k, v [n_k, Hkv, D]``;
    returns ``[n_q, H_q_export, D]`` in q's dtype."""
    qf, kf, vf = flex_permute(export, q, k, v)
    fn = flex_fn if flex_fn is not None else _compiled_flex()
    o = fn(qf, kf, vf, block_mask=export.block_mask, scale=scale, enable_gqa=export.gqa, kernel_options=kernel_options)
    return flex_unpermute(export, o)


_COMPILED: list[Callable] = []


def _compiled_flex() -> Callable:
    if not _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]
