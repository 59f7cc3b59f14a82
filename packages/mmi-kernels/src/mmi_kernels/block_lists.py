"""Key-block lists of head slots from their keep sets: the index builder's only pass over ``[S, nqb, nkb]``.

Per slot and query block ``qb`` a key block ``kb`` is *kept* when the keep set has it and it holds a causal pair
(``k_min[kb] <= q_max[qb]``). The kept blocks that lead the slot's key blocks sorted by first position become one
integer, ``lead`` (the smallest position-order ``rank`` of a block NOT kept); the other kept blocks, ascending, are
the list, written into the index's ragged (CSR) id array at the query block's start. Both functions run one Triton
program per (query block, slot) on CUDA or under ``TRITON_INTERPRET=1`` (a few chunked scans of one row: nothing of size
``nqb · nkb`` is written but the lists), and the PyTorch expressions below otherwise; those are the reference of the
tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmi_kernels.dispatch import triton_runs

__all__ = ["block_ids", "lead_and_count"]

_CHUNK = 1024


def _kept(blocks: torch.Tensor, k_min: torch.Tensor, q_max: torch.Tensor) -> torch.Tensor:
    return blocks & (k_min[:, None, :] <= q_max[:, :, None])


@triton.jit
def _program_row(BLOCKS, K_MIN, RANK, nqb, nkb):
    """This program's (query block, slot): its row of the slot's blocks, the slot's key-block tables, and its
    place in the [S, nqb] per-(slot, query block) arrays."""
    s = tl.program_id(1).to(tl.int64)
    at = s * nqb + tl.program_id(0).to(tl.int64)
    return BLOCKS + at * nkb, K_MIN + s * nkb, RANK + s * nkb, at


@triton.jit
def _kept_chunk(ROW, K_MIN, kb, m, q_max):
    """Kept key blocks ``kb`` of the row (in the keep set and holding a causal pair); False past ``m``."""
    return (tl.load(ROW + kb, mask=m, other=0) != 0) & (tl.load(K_MIN + kb, mask=m, other=0) <= q_max) & m


@triton.jit
def _lead_count_kernel(BLOCKS, K_MIN, Q_MAX, RANK, LEAD, COUNT, nqb, nkb, CHUNK: tl.constexpr):
    ROW, K_MIN, RANK, at = _program_row(BLOCKS, K_MIN, RANK, nqb, nkb)
    q_max = tl.load(Q_MAX + at)
    if q_max < 0:  # no computed row (past a row-group slot's rows): nothing kept, so the run is empty
        tl.store(LEAD + at, tl.zeros([], tl.int64))
        tl.store(COUNT + at, tl.zeros([], tl.int64))
        return
    lead = tl.zeros([], tl.int64) + nkb
    for c0 in range(0, nkb, CHUNK):
        kb = c0 + tl.arange(0, CHUNK)
        m = kb < nkb
        kept = _kept_chunk(ROW, K_MIN, kb, m, q_max)
        rank = tl.load(RANK + kb, mask=m, other=nkb)
        lead = tl.minimum(lead, tl.min(tl.where(kept | ~m, nkb, rank), 0))
    count = tl.zeros([], tl.int32)
    for c0 in range(0, nkb, CHUNK):
        kb = c0 + tl.arange(0, CHUNK)
        m = kb < nkb
        kept = _kept_chunk(ROW, K_MIN, kb, m, q_max)
        rank = tl.load(RANK + kb, mask=m, other=0)
        count += tl.sum((kept & (rank >= lead)).to(tl.int32), 0)
    tl.store(LEAD + at, lead)
    tl.store(COUNT + at, count)


@triton.jit
def _ids_kernel(BLOCKS, K_MIN, Q_MAX, RANK, LEAD, START, IDS, nqb, nkb, CHUNK: tl.constexpr):
    ROW, K_MIN, RANK, at = _program_row(BLOCKS, K_MIN, RANK, nqb, nkb)
    q_max = tl.load(Q_MAX + at)
    if q_max < 0:  # no computed row: no list
        return
    lead = tl.load(LEAD + at)
    base = tl.load(START + at)
    for c0 in range(0, nkb, CHUNK):
        kb = c0 + tl.arange(0, CHUNK)
        m = kb < nkb
        listed = _kept_chunk(ROW, K_MIN, kb, m, q_max) & (tl.load(RANK + kb, mask=m, other=0) >= lead)
        to = base + tl.cumsum(listed.to(tl.int64), 0) - 1
        tl.store(IDS + to, kb.to(tl.int32), mask=listed)
        base += tl.sum(listed.to(tl.int64), 0)


def lead_and_count(
    blocks: torch.Tensor, k_min: torch.Tensor, q_max: torch.Tensor, rank: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slot ``s`` (every argument contiguous with a leading slot dimension ``S``): ``blocks`` bool
    ``[S, nqb, nkb]``, ``k_min`` int64 ``[S, nkb]`` (first original position of each key block), ``q_max`` int64
    ``[S, nqb]`` (last position of each query block; -1: no computed row, e.g. past a row-group slot's rows: those
    rows are skipped), ``rank`` int64 ``[S, nkb]`` (each key block's place in first-position order). Returns int64
    ``(lead [S, nqb], count [S, nqb])``: the kept leading run's length and the number of other kept blocks."""
    n_s, nqb, nkb = blocks.shape
    if not triton_runs(blocks):
        kept = _kept(blocks, k_min, q_max)
        if not nkb:
            return torch.zeros(n_s, nqb, dtype=torch.int64), torch.zeros(n_s, nqb, dtype=torch.int64)
        lead = torch.where(kept, nkb, rank[:, None, :]).amin(2)
        return lead, (kept & (rank[:, None, :] >= lead[..., None])).sum(2)
    lead = torch.empty(n_s, nqb, dtype=torch.int64, device=blocks.device)
    count = torch.empty(n_s, nqb, dtype=torch.int64, device=blocks.device)
    if nqb and n_s:
        _lead_count_kernel[(nqb, n_s)](blocks.contiguous().view(torch.uint8), k_min, q_max, rank, lead, count, nqb,
                                       nkb, CHUNK=_CHUNK)  # fmt: skip
    return lead, count


def block_ids(
    blocks: torch.Tensor,
    k_min: torch.Tensor,
    q_max: torch.Tensor,
    rank: torch.Tensor,
    lead: torch.Tensor,
    start: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Write the listed key blocks of each (slot, query block), ascending, into ``out`` (int32 [entries]) at
    ``out[start[s, qb] : start[s, qb] + count[s, qb]]`` (``start`` int64 [S, nqb]; ``count`` from `lead_and_count`,
    whose room the caller reserved). Arguments as `lead_and_count`, ``lead`` its first output."""
    n_s, nqb, nkb = blocks.shape
    if not triton_runs(blocks):
        listed = _kept(blocks, k_min, q_max) & (rank[:, None, :] >= lead[..., None])
        at = start[..., None] + torch.cumsum(listed, 2) - 1
        ids = torch.arange(nkb, device=blocks.device, dtype=out.dtype).expand_as(listed)
        out[at[listed]] = ids[listed]
        return
    if nqb and n_s:
        _ids_kernel[(nqb, n_s)](blocks.contiguous().view(torch.uint8), k_min, q_max, rank, lead, start, out, nqb,
                                nkb, CHUNK=_CHUNK)  # fmt: skip
