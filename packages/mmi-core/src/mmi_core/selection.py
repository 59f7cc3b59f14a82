"""`Selection`: the exact keep set of one head, at the granularity every kernel executes.

A selection keeps, for each query block ``qb`` (``block`` consecutive rows of the *query-permuted* order):
- key blocks ``kb`` (``block`` consecutive keys of the *key-permuted* order) where ``blocks[qb, kb]``, and
- single key columns ``c`` (key-permuted index) where ``columns[qb, c]``,
and then only the pairs that are causal on **original positions** (key position <= query position).
Queries are the last ``n_q`` of the ``n_k`` keys (``n_q < n_k``: a chunk over a cached prefix).

Canonical form (enforced on construction): no column lies inside a key block kept for the same query block, so a
kernel that iterates blocks then columns never counts a pair twice. The builders below turn explicit pattern
parameters (column ids, diagonal offsets, top blocks, grid stride/residues) into selections; the online estimation
in `mmi_core.estimation` chooses those parameters from scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmi_core.layout import Modality, ModalityLayout
from mmi_core.patterns import AShape, BlockSparse, Grid, VerticalSlash
from mmi_core.permutation import Permutation, grid_permutation, grid_residues

__all__ = [
    "Selection",
    "ashape_selection",
    "block_sparse_selection",
    "dense_selection",
    "grid_selection",
    "keep_mask",
    "union_selections",
    "vertical_slash_selection",
]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Selection:
    """Keep set of one head (or one GQA group executing together).

    blocks:  bool [ceil(n_q / block), ceil(n_k / block)]
    columns: bool [ceil(n_q / block), n_k] (key-permuted index), or None
    """

    block: int
    q_perm: Permutation
    k_perm: Permutation
    blocks: torch.Tensor
    columns: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n_q, n_k, b = self.q_perm.size, self.k_perm.size, self.block
        if b < 1:
            raise ValueError(f"block must be >= 1, got {b}")
        if n_q > n_k:
            raise ValueError(f"{n_q} queries but only {n_k} keys: queries must be a suffix of the keys")
        if self.q_perm.offset != n_k - n_q or self.k_perm.offset != 0:
            raise ValueError(
                f"q_perm.offset must be n_k - n_q = {n_k - n_q} and k_perm.offset 0, "
                f"got {self.q_perm.offset} and {self.k_perm.offset}"
            )
        want = (_cdiv(n_q, b), _cdiv(n_k, b))
        if tuple(self.blocks.shape) != want or self.blocks.dtype != torch.bool:
            raise ValueError(f"blocks must be bool {want}, got {self.blocks.dtype} {tuple(self.blocks.shape)}")
        if self.columns is not None:
            if tuple(self.columns.shape) != (want[0], n_k) or self.columns.dtype != torch.bool:
                raise ValueError(f"columns must be bool {(want[0], n_k)}, got {tuple(self.columns.shape)}")
            in_block = self.blocks.repeat_interleave(b, dim=1)[:, :n_k]
            cols = self.columns & ~in_block
            object.__setattr__(self, "columns", cols if bool(cols.any()) else None)

    @property
    def n_q(self) -> int:
        return self.q_perm.size

    @property
    def n_k(self) -> int:
        return self.k_perm.size

    @property
    def prefix(self) -> int:
        return self.n_k - self.n_q


def keep_mask(sel: Selection, rows: torch.Tensor | None = None) -> torch.Tensor:
    """bool [n_q (or len(rows)), n_k] in **original** order: True where query row i attends key j.

    ``rows`` (int64 query-row indices) restricts the mask to sampled rows, for large N.
    """
    b = sel.block
    qi = torch.arange(sel.n_q) if rows is None else rows.to(torch.int64).cpu()
    kj = torch.arange(sel.n_k)
    qb = sel.q_perm.inverse.cpu()[qi] // b
    pk = sel.k_perm.inverse.cpu()
    m = sel.blocks.cpu()[qb][:, pk // b]
    if sel.columns is not None:
        m |= sel.columns.cpu()[qb][:, pk]
    return m & (kj[None, :] <= (qi + sel.prefix)[:, None])


def _rows_blocks(sel_q: Permutation, k_perm: Permutation, pair: torch.Tensor, block: int) -> torch.Tensor:
    """Any-reduce a pair mask [n_q, n_k] (original order) to blocks [nqb, nkb] of the permuted orders."""
    n_q, n_k = pair.shape
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    p = pair[sel_q.order][:, k_perm.order]
    p = torch.nn.functional.pad(p, (0, nkb * block - n_k, 0, nqb * block - n_q))
    return p.view(nqb, block, nkb, block).any(dim=3).any(dim=1)


def _identity_perms(n_q: int, n_k: int) -> tuple[Permutation, Permutation]:
    return Permutation.identity(n_q, n_k - n_q), Permutation.identity(n_k)


def _diag_blocks(n_q: int, n_k: int, block: int) -> torch.Tensor:
    """bool [nqb, nkb] (identity orders): key blocks holding the query block's own positions."""
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    first = (n_k - n_q) + torch.arange(nqb) * block
    last = torch.clamp(first + block - 1, max=n_k - 1)
    kb = torch.arange(nkb)
    return (kb[None, :] >= (first // block)[:, None]) & (kb[None, :] <= (last // block)[:, None])


def dense_selection(n_q: int, n_k: int, block: int = 64) -> Selection:
    """Every causal pair (the identity orders, all blocks)."""
    qp, kp = _identity_perms(n_q, n_k)
    return Selection(block, qp, kp, torch.ones(_cdiv(n_q, block), _cdiv(n_k, block), dtype=torch.bool))


def ashape_selection(n_q: int, n_k: int, cfg: AShape) -> Selection:
    """Sink keys ``[0, sink)`` and keys within ``local`` tokens before any query of the block, rounded to blocks."""
    b = cfg.block
    qp, kp = _identity_perms(n_q, n_k)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    first = (n_k - n_q) + torch.arange(nqb) * b
    kb = torch.arange(nkb)
    blocks = _diag_blocks(n_q, n_k, b)
    blocks |= (kb[None, :] * b < cfg.sink).expand(nqb, nkb)
    blocks |= (kb[None, :] >= (torch.clamp(first - cfg.local, min=0) // b)[:, None]) & (
        kb[None, :] <= (first // b)[:, None]
    )
    return Selection(b, qp, kp, blocks)


def vertical_slash_selection(
    n_q: int, n_k: int, cfg: VerticalSlash, columns: torch.Tensor, offsets: torch.Tensor
) -> Selection:
    """Columns ``columns ∪ [0, sink)`` (key positions) for every query; diagonals ``offsets ∪ [0, local)``
    (``key = query - offset``) covered by the key blocks they touch in each query block."""
    b = cfg.block
    qp, kp = _identity_perms(n_q, n_k)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    offs = torch.unique(torch.cat([offsets.flatten().cpu().to(torch.int64), torch.arange(cfg.local)]))
    offs = offs[(offs >= 0) & (offs < n_k)]
    first = (n_k - n_q) + torch.arange(nqb) * b
    last = torch.clamp(first + b - 1, max=n_k - 1)
    lo = torch.clamp(first[:, None] - offs[None, :], min=0)  # [nqb, n_off]: key range the diagonal touches
    hi = last[:, None] - offs[None, :]
    valid = hi >= 0
    kb = torch.arange(nkb)
    blocks = torch.zeros(nqb, nkb, dtype=torch.bool)
    for j in range(offs.numel()):  # diagonals touch contiguous block ranges; loop over offsets keeps memory O(nqb*nkb)
        blocks |= valid[:, j, None] & (kb[None, :] >= (lo[:, j] // b)[:, None]) & (kb[None, :] <= (hi[:, j] // b)[:, None])
    cols = torch.unique(torch.cat([columns.flatten().cpu().to(torch.int64), torch.arange(min(cfg.sink, n_k))]))
    cols = cols[(cols >= 0) & (cols < n_k)]
    colmask = torch.zeros(nqb, n_k, dtype=torch.bool)
    colmask[:, cols] = True
    return Selection(b, qp, kp, blocks, colmask)


def block_sparse_selection(n_q: int, n_k: int, cfg: BlockSparse, top_blocks: torch.Tensor) -> Selection:
    """Key blocks ``top_blocks[qb]`` (int [nqb, k]; entries < 0 are padding) plus the diagonal block(s) and block 0."""
    b = cfg.block
    qp, kp = _identity_perms(n_q, n_k)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    if top_blocks.dim() != 2 or top_blocks.shape[0] != nqb:
        raise ValueError(f"top_blocks must be [{nqb}, k], got {tuple(top_blocks.shape)}")
    tb = top_blocks.cpu().to(torch.int64)
    blocks = _diag_blocks(n_q, n_k, b)
    blocks[:, 0] = True
    ok = (tb >= 0) & (tb < nkb)
    rows = torch.arange(nqb)[:, None].expand_as(tb)
    blocks[rows[ok], tb[ok]] = True
    return Selection(b, qp, kp, blocks)


def grid_selection(
    layout: ModalityLayout, n_q: int, cfg: Grid, stride: int, residues: Sequence[int] | torch.Tensor
) -> Selection:
    """Grid keep set for ``stride`` and the kept grid lines ``residues`` (values of ``pos mod stride``;
    ``residues[0]`` is the phase).

    Queries and keys are grid-permuted (`grid_permutation`, video segments only) with that phase. Per query block
    the kept key blocks are those holding: keys at positions < ``sink``; the block's own rows and ``local`` blocks
    before each (diagonal); keys of the same (segment, residue) class as any of its video rows (``slash``); video
    keys on a kept residue (``vline``); and every key if any of its video rows is on a kept residue (``hline``).
    A layout without video therefore keeps only sink + local.
    """
    b, n_k = cfg.block, layout.num_tokens
    res = torch.as_tensor(list(residues) if not isinstance(residues, torch.Tensor) else residues, dtype=torch.int64)
    if res.numel() == 0:
        raise ValueError("grid_selection needs at least one residue (the phase)")
    if stride < 1:
        raise ValueError(f"grid stride must be >= 1, got {stride}")
    phase = int(res[0])
    prefix = n_k - n_q
    kp = grid_permutation(layout, stride, phase, 0, n_k)
    qp = grid_permutation(layout, stride, phase, prefix, n_k)
    pos = torch.arange(n_k)
    is_video = layout.token_modalities() == int(Modality.VIDEO)
    seg_id = torch.zeros(n_k, dtype=torch.int64)
    for i, s in enumerate(layout.segments):
        seg_id[s.start : s.end] = i
    r = grid_residues(pos, stride, phase)
    group = torch.where(is_video, seg_id * stride + r, -1 - pos)  # non-video tokens: singleton groups
    on_line = is_video & torch.isin(torch.remainder(pos, stride), torch.remainder(res, stride))
    qpos = pos[prefix:]
    pair = torch.zeros(n_q, n_k, dtype=torch.bool)
    if cfg.slash:
        pair |= group[prefix:, None] == group[None, :]
    if cfg.vline:
        pair |= on_line[None, :].expand(n_q, n_k)
    blocks = _rows_blocks(qp, kp, pair, b)
    if cfg.hline:
        blocks |= _rows_blocks(qp, kp, on_line[prefix:, None].expand(n_q, n_k), b).any(dim=1, keepdim=True)
    nqb, nkb = blocks.shape
    kblock_of = kp.inverse // b  # key position -> key block
    if cfg.sink:
        blocks[:, torch.unique(kblock_of[: min(cfg.sink, n_k)])] = True
    diag = torch.zeros(nqb, nkb, dtype=torch.bool)
    diag[qp.inverse // b, kblock_of[qpos]] = True
    for shift in range(cfg.local + 1):  # own blocks and `local` blocks before each, in key-permuted order
        blocks[:, shift:] |= diag[:, : nkb - shift]
    return Selection(b, qp, kp, blocks)


def union_selections(selections: Sequence[Selection]) -> Selection:
    """Union of the keep sets of one GQA group executing together (they must share block size and permutations)."""
    first = selections[0]
    for s in selections[1:]:
        if s.block != first.block or not (
            torch.equal(s.q_perm.order, first.q_perm.order) and torch.equal(s.k_perm.order, first.k_perm.order)
        ):
            raise ValueError("selections of one executing group must share block size and permutations")
    blocks = torch.stack([s.blocks for s in selections]).any(0)
    cols = [s.columns for s in selections if s.columns is not None]
    columns = torch.stack(cols).any(0) if cols else None
    return Selection(first.block, first.q_perm, first.k_perm, blocks, columns)
