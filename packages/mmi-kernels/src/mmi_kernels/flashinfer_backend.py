"""Optional FlashInfer backend for the block part of a `SparseIndex` (``flashinfer.BlockSparseAttentionWrapper``).

FlashInfer's block-sparse wrapper (0.6.x, fa2/fa3 backends) takes **one** BSR matrix for all heads, blocks of
``R x C`` over one query tensor ``[M, Hqo, D]`` and one key tensor ``[N, Hkv, D]``, and treats every block row as
its own little request: row ``i`` attends the concatenation of its listed key blocks, ``count_i * C`` keys. mmi's
keep sets differ per head slot and live in permuted orders, so the conversion (`index_to_flashinfer_bsr`):

- **folds slots into rows**: row group ``u`` = one unit (a head slot when every slot serves the same number of query
  heads, otherwise one query head); its rows are the unit's query blocks of every request in the slot's *permuted*
  order, padded to ``R`` rows, with the unit's query heads as FlashInfer's ``num_qo_heads``; keys are folded the same
  way (unit ``u``'s permuted keys of each request, padded to whole blocks) with ``num_kv_heads = 1``;
- uses ``R = C = index.block`` and **ascending** key-block ids per row (`index_to_bsr` order);
- picks the mask: FlashInfer's ``causal=True`` aligns each row's causal diagonal bottom-right, i.e. query ``a`` of a
  row sees kv ``t <= a + count * C - R``: exact only when the **last** listed block is the row's own positions in
  the same contiguous ascending order and every other block is fully causal and complete (a fully causal *last*
  block would lose its upper triangle, e.g. a single query row at the end of a complete key block). That holds for
  identity orders with a block-aligned prefix (A-shape, block-sparse; ascending order puts the diagonal last). Otherwise
  (Grid permutations, unaligned prefixes, padded key tails) every tile carries an explicit bool mask ``[nnz, R, C]``
  from original positions (``mask=``; FlashInfer packs it to bits): exact, at one mask bit per computed pair.
- Vertical-line columns cannot be expressed (single keys, not blocks): ``columns="error"`` refuses, ``"widen"``
  keeps their whole key blocks (a superset; counted in ``widened_tiles``), as in `mmi_kernels.flex_export`.

`bsr_attention_reference` is the PyTorch twin of what the wrapper computes from the same arguments (the semantics
above, read from flashinfer/sparse.py and its batch-prefill causal rule); the CPU tests check the conversion
exactly through it. `FlashInferBlockSparse` runs the real wrapper; it exists only when flashinfer imports and a
CUDA device is present (`flashinfer_available`), and is used only when a caller asks for it. FlashInfer
JIT-compiles its kernels with nvcc on first use. ``q_data_type``/``kv_data_type``/``o_data_type`` are passed
explicitly from q's dtype: the wrapper's defaults are float16, which would silently run bf16 inputs as fp16.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Literal

import torch

from mmi_kernels.index import SparseIndex, index_to_bsr

__all__ = [
    "FlashInferBSR",
    "FlashInferBlockSparse",
    "bsr_attention_reference",
    "flashinfer_available",
    "index_to_flashinfer_bsr",
]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def flashinfer_available() -> tuple[bool, str]:
    """(usable, reason): flashinfer is importable and a CUDA device is present."""
    if importlib.util.find_spec("flashinfer") is None:
        return False, "flashinfer is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device (flashinfer kernels are CUDA only)"
    return True, "ok"


@dataclass(frozen=True)
class FlashInferBSR:
    """A `SparseIndex` folded for ``BlockSparseAttentionWrapper.plan`` (module docstring). U units, R = C = block.

    indptr: int32 [U * TQB + 1]; indices: int32 [nnz] global folded key-block ids, ascending per row.
    M = U * TQB * R folded query rows, N = U * TKB * C folded key rows.
    num_qo_heads: query heads per unit (FlashInfer's heads), num_kv_heads = 1.
    unit_heads: int64 [U, num_qo_heads] query heads of each unit; unit_slot: int64 [U]; unit_kv_head: int64 [U].
    q_rows: int64 [U, TQB * R] packed query row (of the index's q) at each folded row, -1 = padding.
    k_rows: int64 [U, TKB * C] packed key row at each folded key row, -1 = padding.
    causal: True -> plan with ``causal=True`` and no mask; False -> ``mask`` bool [nnz, R, C] (row a, key c).
    widened_tiles: tiles added by ``columns="widen"``.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    M: int
    N: int
    R: int
    C: int
    num_qo_heads: int
    num_kv_heads: int
    unit_heads: torch.Tensor
    unit_slot: torch.Tensor
    unit_kv_head: torch.Tensor
    q_rows: torch.Tensor
    k_rows: torch.Tensor
    causal: bool
    mask: torch.Tensor | None
    widened_tiles: int

    def fold(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed ``q [TQ, Hq, D]``, ``k, v [TK, Hkv, D]`` -> ``q [M, num_qo_heads, D]``, ``k, v [N, 1, D]``
        (padding rows are zero)."""
        d = q.shape[2]
        qr = self.q_rows.to(q.device)
        qf = q.new_zeros(qr.shape[0], qr.shape[1], self.num_qo_heads, d)
        for u in range(qr.shape[0]):
            ok = qr[u] >= 0
            qf[u, ok] = q[qr[u, ok]][:, self.unit_heads[u].to(q.device)]
        kr = self.k_rows.to(k.device)
        kf = k.new_zeros(kr.shape[0], kr.shape[1], d)
        vf = v.new_zeros(kr.shape[0], kr.shape[1], d)
        for u in range(kr.shape[0]):
            ok = kr[u] >= 0
            kf[u, ok] = k[kr[u, ok], int(self.unit_kv_head[u])]
            vf[u, ok] = v[kr[u, ok], int(self.unit_kv_head[u])]
        return qf.reshape(self.M, self.num_qo_heads, d), kf.reshape(self.N, 1, d), vf.reshape(self.N, 1, d)

    def unfold(self, o: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Folded output ``[M, num_qo_heads, D]`` -> the units' heads of packed ``out [TQ, Hq, D]`` (returned)."""
        qr = self.q_rows.to(o.device)
        of = o.reshape(qr.shape[0], qr.shape[1], self.num_qo_heads, o.shape[-1])
        for u in range(qr.shape[0]):
            ok = qr[u] >= 0
            rows = qr[u, ok]
            out[rows[:, None], self.unit_heads[u].to(o.device)[None, :]] = of[u, ok].to(out.dtype)
        return out


def _units(index: SparseIndex) -> list[tuple[int, list[int]]]:
    """(slot, query heads) per unit: slots when all serve equally many heads, else one unit per query head."""
    counts = {int(c) for c in index.slot_num_heads.tolist()}
    slots = [(s, int(index.slot_q_head[s]), int(index.slot_num_heads[s])) for s in range(index.num_slots)]
    if len(counts) == 1:
        return [(s, list(range(f, f + c))) for s, f, c in slots]
    return [(s, [h]) for s, f, c in slots for h in range(f, f + c)]


def _padded_rows(index: SparseIndex, slot: int, keys: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed row int64 [T_blocks * block], original position int64 [same]) of the slot's permuted rows, block-padded
    per request (-1 = padding)."""
    b, dev = index.block, index.device
    seqlens = index.seqlens_k if keys else index.seqlens_q
    cu = index.cu_seqlens_k if keys else index.cu_seqlens_q
    cub = index.cu_kblocks if keys else index.cu_qblocks
    order = index.k_order if keys else index.q_order
    total = int(cub[-1]) * b
    rows = torch.full((total,), -1, dtype=torch.int64, device=dev)
    pos = torch.full((total,), -1, dtype=torch.int64, device=dev)
    for r, n in enumerate(seqlens):
        t0, p0 = int(cu[r]), int(cub[r]) * b
        o = order[slot, t0 : t0 + n].long()
        rows[p0 : p0 + n] = t0 + o
        pos[p0 : p0 + n] = o + (0 if keys else index.seqlens_k[r] - n)
    return rows, pos


def index_to_flashinfer_bsr(index: SparseIndex, *, columns: Literal["error", "widen"] = "error") -> FlashInferBSR:
    """Fold ``index`` into FlashInfer's single BSR matrix (module docstring). Raises ValueError when a slot keeps
    single key columns and ``columns="error"``, or for row-group slots (boundary heads: one BSR row group per query
    head cannot hold a head whose parts use different orders)."""
    if columns not in ("error", "widen"):
        raise ValueError(f"columns must be 'error' or 'widen', got {columns!r}")
    if index.has_row_groups():
        raise ValueError("index_to_flashinfer_bsr: row-group slots (boundary heads) are not supported by FlashInfer")
    b, dev = index.block, index.device
    tqb, tkb = index.total_qblocks, int(index.cu_kblocks[-1])
    bsr = index_to_bsr(index)
    ptr = bsr.indptr.long()
    req = index.qblock_request.long()
    kb_first = index.cu_kblocks.long()[req]  # [TQB] first global key block of each query block's request
    units = _units(index)

    widened = 0
    per_slot: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot -> (counts [TQB], global key blocks)
    for s in sorted({s for s, _ in units}):
        rows = s * tqb + torch.arange(tqb, device=dev)
        cnt = ptr[rows + 1] - ptr[rows]
        ids = bsr.indices[int(ptr[s * tqb]) : int(ptr[(s + 1) * tqb])].long()
        ids = ids + torch.repeat_interleave(kb_first, cnt)
        ccount = index.column_count[s].long()
        if bool((ccount > 0).any()):
            if columns != "widen":
                raise ValueError(
                    f"slot {s} keeps {int(ccount.sum())} single key columns (vertical lines): FlashInfer's BSR holds "
                    "only R x C blocks; pass columns='widen' to keep their whole key blocks (a superset of the keep "
                    "set) or run these heads with mmi's kernel"
                )
            tiles = torch.zeros(tqb, tkb, dtype=torch.bool, device=dev)
            tiles[torch.repeat_interleave(torch.arange(tqb, device=dev), cnt), ids] = True
            cids = index.lists("column", s)[1]
            valid = cids >= 0
            rr = torch.arange(tqb, device=dev)[:, None].expand_as(cids)
            before = int(tiles.sum())
            tiles[rr[valid], (cids // b + kb_first[:, None])[valid]] = True
            widened += int(tiles.sum()) - before
            cnt = tiles.sum(1)
            ids = tiles.nonzero(as_tuple=True)[1]  # row-major: ascending per row
        per_slot[s] = (cnt, ids)

    counts, indices = [], []
    for u, (s, _) in enumerate(units):
        cnt, ids = per_slot[s]
        counts.append(cnt)
        indices.append(ids + u * tkb)
    count = torch.cat(counts)
    ind = torch.cat(indices)
    indptr = torch.zeros(count.numel() + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.cumsum(count, 0)

    # positions of every folded row and key (per slot), for the mask decision and the explicit mask
    qrow, qpos, krow, kpos = {}, {}, {}, {}
    for s in per_slot:
        qrow[s], qpos[s] = _padded_rows(index, s, keys=False)
        krow[s], kpos[s] = _padded_rows(index, s, keys=True)
    unit_slot = torch.tensor([s for s, _ in units], dtype=torch.int64)
    qp = torch.stack([qpos[int(s)] for s in unit_slot]).view(len(units) * tqb, b)  # [rows, R]
    kp = torch.stack([kpos[int(s)] for s in unit_slot]).view(len(units) * tkb, b)  # [key blocks, C]
    row_of = torch.repeat_interleave(torch.arange(count.numel(), device=dev), count)
    q_tile, k_tile = qp[row_of], kp[ind]  # [nnz, R], [nnz, C]
    ar = torch.arange(b, device=dev)

    def contiguous(p: torch.Tensor) -> torch.Tensor:  # real rows are min + 0, 1, 2, ... in order
        real = p >= 0
        return ((p == p[:, :1] + ar[None, :]) | ~real).all(1) & real[:, 0]  # padding only trails a request

    q_real, k_real = (q_tile >= 0).sum(1), (k_tile >= 0).sum(1)
    k_max = k_tile.amax(1)
    q_min = torch.where(q_tile >= 0, q_tile, 1 << 62).amin(1)
    full = (k_real == b) & (k_max <= q_min)
    last = torch.zeros_like(full)
    last[indptr[1:][count > 0] - 1] = True
    diag = last & contiguous(q_tile) & contiguous(k_tile) & (q_tile[:, 0] == k_tile[:, 0]) & (k_real >= q_real)
    # the bottom-right diagonal falls on each row's last tile, so that tile must be the exact diagonal (a full last
    # tile would lose its upper triangle) and every other tile must be full
    causal = bool(torch.where(last, diag, full).all())
    mask = None
    if not causal:
        mask = (k_tile[:, None, :] >= 0) & (k_tile[:, None, :] <= q_tile[:, :, None])

    g = index.num_q_heads // index.num_kv_heads
    return FlashInferBSR(
        indptr=indptr.to(torch.int32),
        indices=ind.to(torch.int32),
        M=len(units) * tqb * b,
        N=len(units) * tkb * b,
        R=b,
        C=b,
        num_qo_heads=len(units[0][1]),
        num_kv_heads=1,
        unit_heads=torch.tensor([h for _, h in units], dtype=torch.int64),
        unit_slot=unit_slot,
        unit_kv_head=torch.tensor([h[0] // g for _, h in units], dtype=torch.int64),
        q_rows=torch.stack([qrow[int(s)] for s in unit_slot]),
        k_rows=torch.stack([krow[int(s)] for s in unit_slot]),
        causal=causal,
        mask=mask,
        widened_tiles=widened,
    )


def bsr_attention_reference(
    bsr: FlashInferBSR, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """What ``BlockSparseAttentionWrapper`` computes for ``bsr`` on folded ``q [M, Hqo, D]``, ``k, v [N, 1, D]``, in
    fp32: row ``i`` attends the concatenation of its key blocks; ``causal`` masks kv ``t > a + count * C - R`` for
    query ``a`` of the row; otherwise ``mask`` per tile. Fully masked query rows give 0. Returns ``[M, Hqo, D]``."""
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    ptr = bsr.indptr.long().tolist()
    ind = bsr.indices.long()
    ar_c = torch.arange(bsr.C, device=q.device)
    for i in range(len(ptr) - 1):
        a, z = ptr[i], ptr[i + 1]
        if z == a:
            continue
        keys = (ind[a:z, None] * bsr.C + ar_c[None, :]).reshape(-1)  # [count * C]
        qi = q[i * bsr.R : (i + 1) * bsr.R].float()  # [R, H, D]
        s = torch.einsum("rhd,td->hrt", qi, k[keys, 0].float()) * scale
        if bsr.causal:
            kv_len = (z - a) * bsr.C
            allowed = torch.arange(kv_len)[None, :] <= torch.arange(bsr.R)[:, None] + kv_len - bsr.R
        else:
            assert bsr.mask is not None
            allowed = bsr.mask[a:z].permute(1, 0, 2).reshape(bsr.R, -1)  # [R, count * C]
        s = s.masked_fill(~allowed.to(q.device)[None], float("-inf"))
        p = torch.nan_to_num(torch.softmax(s, dim=-1))
        out[i * bsr.R : (i + 1) * bsr.R] = torch.einsum("hrt,td->rhd", p, v[keys, 0].float())
    return out


class FlashInferBlockSparse:
    """Run a `SparseIndex`'s block part through ``flashinfer.BlockSparseAttentionWrapper`` (CUDA only).

    Usage: ``fb = FlashInferBlockSparse(); fb.plan(index, head_dim=128, dtype=torch.bfloat16); o = fb.run(q, k, v)``
    with packed ``q [TQ, Hq, D]``, ``k, v [TK, Hkv, D]`` (the index's requests). Raises RuntimeError when flashinfer
    or CUDA is missing (`flashinfer_available`).
    """

    def __init__(self, workspace_bytes: int = 128 << 20, device: torch.device | str = "cuda") -> None:
        ok, why = flashinfer_available()
        if not ok:
            raise RuntimeError(f"FlashInfer backend unavailable: {why}")
        import flashinfer

        self.device = torch.device(device)
        self._workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=self.device)
        self._wrapper = flashinfer.BlockSparseAttentionWrapper(self._workspace)
        self.bsr: FlashInferBSR | None = None

    def plan(
        self,
        index: SparseIndex,
        *,
        head_dim: int,
        dtype: torch.dtype = torch.bfloat16,
        scale: float | None = None,
        columns: Literal["error", "widen"] = "error",
    ) -> FlashInferBSR:
        """Fold ``index`` and plan the wrapper (dtypes passed explicitly). Returns the folded BSR."""
        bsr = index_to_flashinfer_bsr(index.to(self.device), columns=columns)
        self._wrapper.plan(
            bsr.indptr,
            bsr.indices,
            bsr.M,
            bsr.N,
            bsr.R,
            bsr.C,
            bsr.num_qo_heads,
            bsr.num_kv_heads,
            head_dim,
            mask=bsr.mask,
            causal=bsr.causal,
            sm_scale=scale,
            q_data_type=dtype,
            kv_data_type=dtype,
            o_data_type=dtype,
        )
        self.bsr = bsr
        return bsr

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Packed ``q [TQ, Hq, D]``, ``k, v [TK, Hkv, D]`` -> ``[TQ, Hq, D]`` (fold, wrapper.run, unfold)."""
        if self.bsr is None:
            raise RuntimeError("FlashInferBlockSparse.run before plan")
        qf, kf, vf = self.bsr.fold(q, k, v)
        of = self._wrapper.run(qf, kf, vf)
        out = torch.empty_like(q) if out is None else out
        return self.bsr.unfold(of, out)
