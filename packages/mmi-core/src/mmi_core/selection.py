"""`Selection`: the exact keep set of one head, at the granularity every kernel executes.

A selection keeps, for each query block ``qb`` (``block`` consecutive rows of the *query-permuted* order):
- key blocks ``kb`` (``block`` consecutive keys of the *key-permuted* order) where ``blocks[qb, kb]``, and
- single key columns ``c`` (key-permuted index) where ``columns[qb, c]``,
and then only the pairs that are causal on **original positions** (key position <= query position).
Queries are the last ``n_q <= n_k`` of the ``n_k`` keys (``n_q < n_k``: a chunk over a cached prefix of
``n_k - n_q`` tokens).
`keep_mask` turns a selection into the boolean (query, key) mask in original order; it is the truth every kernel and
planner is tested against.

Canonical form (enforced on construction, so ``blocks.sum()`` / ``columns.sum()`` count exactly the tiles and
columns a kernel computes, and index planners can be compared with the builders tensor for tensor):
- no kept block or column is entirely non-causal for its query block (every key of it after every row of it), and
- no column lies inside a key block kept for the same query block, so a kernel that iterates blocks then columns
  never counts a pair twice.

How the builders read a pattern: each rule of a pattern names a set of causal (query, key) pairs (sink keys, a
local window, a diagonal, a grid line); a key block is kept for a query block when it holds at least one such pair
for one of the block's rows ("covered by the blocks they touch"), and vertical lines stay single columns. Every
builder keeps each row's own position, so no softmax row is empty. The builders turn explicit pattern parameters
(column ids, diagonal offsets, top blocks, grid stride/residues) into selections; the online estimation chooses
those parameters from scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmi_core.layout import Modality, ModalityLayout
from mmi_core.patterns import AShape, BlockSparse, Grid, VerticalSlash
from mmi_core.permutation import Permutation, grid_permutation, grid_residues

__all__ = [
    "RowGroups",
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


@dataclass(frozen=True, eq=False)
class Selection:
    """Keep set of one head (or one GQA group executing together); see the module docstring for the rules.

    block:   tokens per query block and per key block (>= 1; kernels accept only their tile sizes)
    q_perm:  `Permutation` of the ``n_q`` query rows, ``offset = n_k - n_q``
    k_perm:  `Permutation` of the ``n_k`` keys, ``offset = 0``
    blocks:  bool [ceil(n_q / block), ceil(n_k / block)] in (query-permuted, key-permuted) block order
    columns: bool [ceil(n_q / block), n_k] (key-permuted index), or None (no columns)
    rows:    how many leading rows of the query-permuted order this selection computes (None: all ``n_q``). The
             other rows belong to the other `RowGroups` parts of the same head: they are neither computed nor kept
             here, and tiles are judged causal on the computed rows only.

    Both tensors are stored in canonical form (module docstring). Raises ValueError for inconsistent sizes,
    dtypes or permutation offsets.
    """

    block: int
    q_perm: Permutation
    k_perm: Permutation
    blocks: torch.Tensor
    columns: torch.Tensor | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        n_q, n_k, b = self.q_perm.size, self.k_perm.size, self.block
        if b < 1:
            raise ValueError(f"block must be >= 1, got {b}")
        if self.rows is not None and not 0 <= self.rows <= n_q:
            raise ValueError(f"rows must be in [0, {n_q}], got {self.rows}")
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
        dev = self.blocks.device
        qmax, kmin, kpos = _tile_bounds(self.q_perm, self.k_perm, b, dev, self.num_rows)
        object.__setattr__(self, "blocks", self.blocks & (kmin[None, :] <= qmax[:, None]))
        if self.columns is not None:
            if tuple(self.columns.shape) != (want[0], n_k) or self.columns.dtype != torch.bool:
                raise ValueError(
                    f"columns must be bool {(want[0], n_k)}, got {self.columns.dtype} {tuple(self.columns.shape)}"
                )
            in_block = self.blocks.repeat_interleave(b, dim=1)[:, :n_k]
            cols = self.columns.to(dev) & ~in_block & (kpos[None, :] <= qmax[:, None])
            object.__setattr__(self, "columns", cols if bool(cols.any()) else None)

    def __eq__(self, other: object) -> bool:
        """Same block size, permutations and (canonical) tensors, on any devices."""
        if not isinstance(other, Selection):
            return NotImplemented
        cols = (self.columns is None) == (other.columns is None) and (
            self.columns is None or torch.equal(self.columns.cpu(), other.columns.cpu())  # type: ignore[union-attr]
        )
        return (
            self.block == other.block
            and self.q_perm == other.q_perm
            and self.k_perm == other.k_perm
            and torch.equal(self.blocks.cpu(), other.blocks.cpu())
            and cols
            and self.num_rows == other.num_rows
        )

    def __hash__(self) -> int:
        return hash((self.block, self.n_q, self.n_k))

    @property
    def n_q(self) -> int:
        return self.q_perm.size

    @property
    def n_k(self) -> int:
        return self.k_perm.size

    @property
    def num_rows(self) -> int:
        """Rows this selection computes: the first ``num_rows`` of the query-permuted order."""
        return self.n_q if self.rows is None else self.rows

    @property
    def prefix(self) -> int:
        """Cached prefix length ``n_k - n_q`` (original position of query row 0)."""
        return self.n_k - self.n_q


@dataclass(frozen=True, eq=False)
class RowGroups:
    """Keep set of a head that executes as several row-disjoint selections, each with its own orders (a boundary
    head: one part per query modality, `mmi_core.boundary`). Part ``i`` computes the first ``parts[i].num_rows``
    rows of its query order; together the parts compute every query row exactly once, so each row still runs ONE
    softmax (no outputs merged). A kernel runs each part as its own head slot. Raises ValueError when the parts
    disagree on block size or shape, or do not partition the rows."""

    parts: tuple[Selection, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("RowGroups needs at least one part")
        first = self.parts[0]
        if any((p.block, p.n_q, p.n_k) != (first.block, first.n_q, first.n_k) for p in self.parts):
            raise ValueError("the parts of RowGroups must share block size, n_q and n_k")
        covered = torch.cat([p.q_perm.order[: p.num_rows].cpu() for p in self.parts])
        if covered.numel() != first.n_q or not torch.equal(torch.sort(covered).values, torch.arange(first.n_q)):
            raise ValueError("the parts of RowGroups must compute every query row exactly once")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RowGroups):
            return NotImplemented
        return len(self.parts) == len(other.parts) and all(
            a == b for a, b in zip(self.parts, other.parts, strict=False)
        )

    def __hash__(self) -> int:
        return hash(len(self.parts))

    @property
    def block(self) -> int:
        return self.parts[0].block

    @property
    def n_q(self) -> int:
        return self.parts[0].n_q

    @property
    def n_k(self) -> int:
        return self.parts[0].n_k

    @property
    def prefix(self) -> int:
        return self.parts[0].prefix


def _tile_bounds(
    q_perm: Permutation, k_perm: Permutation, block: int, device: torch.device, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int64 [nqb] last original position of each query block's first ``rows`` rows (-1: none), int64 [nkb] first
    original position of each key block, int64 [n_k] original position of each key-permuted index). A tile holds a
    causal pair iff kmin <= qmax."""
    n_q, n_k = q_perm.size, k_perm.size
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    qpos = q_perm.positions.to(device).clone()
    qpos[rows:] = -1  # rows of other row groups
    kpos = k_perm.positions.to(device)
    qmax = torch.nn.functional.pad(qpos, (0, nqb * block - n_q), value=-1).view(nqb, block).amax(1)
    kmin = torch.nn.functional.pad(kpos, (0, nkb * block - n_k), value=n_k).view(nkb, block).amin(1)
    return qmax, kmin, kpos


def _query_rows(n_q: int, rows: torch.Tensor | None) -> torch.Tensor:
    """int64 [r] on CPU: the query rows to compute (all when None). Raises ValueError for ids outside [0, n_q)."""
    if rows is None:
        return torch.arange(n_q)
    r = rows.to(torch.int64).cpu().flatten()
    if r.numel() and (int(r.min()) < 0 or int(r.max()) >= n_q):
        raise ValueError(f"rows must be query-row ids in [0, {n_q}), got range [{int(r.min())}, {int(r.max())}]")
    return r


def keep_mask(sel: Selection | RowGroups, rows: torch.Tensor | None = None) -> torch.Tensor:
    """bool [n_q (or len(rows)), n_k] in **original** order: True where query row i attends key j (a `RowGroups`:
    the union of its parts, each computing its own rows).

    ``rows`` (int64 query-row indices) restricts the mask to sampled rows, for large N.
    """
    if isinstance(sel, RowGroups):
        m = keep_mask(sel.parts[0], rows)
        for part in sel.parts[1:]:
            m |= keep_mask(part, rows)
        return m
    b = sel.block
    qi = _query_rows(sel.n_q, rows)
    kj = torch.arange(sel.n_k)
    qrank = sel.q_perm.inverse.cpu()[qi]
    qb = qrank // b
    pk = sel.k_perm.inverse.cpu()
    m = sel.blocks.cpu()[qb][:, pk // b]
    if sel.columns is not None:
        m |= sel.columns.cpu()[qb][:, pk]
    return m & (kj[None, :] <= (qi + sel.prefix)[:, None]) & (qrank < sel.num_rows)[:, None]


def _rows_blocks(q_perm: Permutation, k_perm: Permutation, pair: torch.Tensor, block: int) -> torch.Tensor:
    """Any-reduce a pair mask bool [n_q, n_k] (original order) to tiles bool [nqb, nkb] of the permuted orders."""
    n_q, n_k = pair.shape
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    p = pair[q_perm.order][:, k_perm.order]
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
    """A-shape: row ``i`` keeps keys ``j < cfg.sink`` and ``i - cfg.local <= j <= i``, each rounded to the key blocks
    it touches (identity orders). ``local = 0`` still keeps the row's own block."""
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
    n_q: int, n_k: int, cfg: VerticalSlash, columns: torch.Tensor | Sequence[int], offsets: torch.Tensor | Sequence[int]
) -> Selection:
    """Vertical-slash: key columns ``columns ∪ [0, cfg.sink)`` (int key positions, any shape) for every row, kept as
    single columns; diagonals ``offsets ∪ [0, cfg.local)`` (int, any shape; row ``i`` keeps key ``i - offset``)
    rounded to the key blocks they touch in each query block (identity orders). Ids outside ``[0, n_k)`` are ignored.
    ``cfg.local >= 1`` keeps offset 0, each row's own position."""
    b = cfg.block
    qp, kp = _identity_perms(n_q, n_k)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    offsets, columns = torch.as_tensor(offsets), torch.as_tensor(columns)
    offs = torch.unique(torch.cat([offsets.flatten().cpu().to(torch.int64), torch.arange(cfg.local)]))
    offs = offs[(offs >= 0) & (offs < n_k)]
    first = (n_k - n_q) + torch.arange(nqb) * b
    last = torch.clamp(first + b - 1, max=n_k - 1)
    lo = torch.clamp(first[:, None] - offs[None, :], min=0)  # [nqb, n_off]: key range the diagonal touches
    hi = last[:, None] - offs[None, :]
    valid = hi >= 0
    kb = torch.arange(nkb)
    blocks = torch.zeros(nqb, nkb, dtype=torch.bool)
    for j in range(offs.numel()):  # a diagonal touches a contiguous block range; looping keeps memory O(nqb * nkb)
        touched = (kb[None, :] >= (lo[:, j] // b)[:, None]) & (kb[None, :] <= (hi[:, j] // b)[:, None])
        blocks |= valid[:, j, None] & touched
    cols = torch.unique(torch.cat([columns.flatten().cpu().to(torch.int64), torch.arange(min(cfg.sink, n_k))]))
    cols = cols[(cols >= 0) & (cols < n_k)]
    colmask = torch.zeros(nqb, n_k, dtype=torch.bool)
    colmask[:, cols] = True
    return Selection(b, qp, kp, blocks, colmask)


def block_sparse_selection(
    n_q: int, n_k: int, cfg: BlockSparse, top_blocks: torch.Tensor | Sequence[Sequence[int]]
) -> Selection:
    """Block-sparse: key blocks ``top_blocks[qb]`` (int [nqb, k]; entries < 0 or >= nkb are padding) plus the
    key block(s) holding the query block's own positions and key block 0 (identity orders).
    Raises ValueError when ``top_blocks`` is not [ceil(n_q / block), k]."""
    b = cfg.block
    qp, kp = _identity_perms(n_q, n_k)
    nqb, nkb = _cdiv(n_q, b), _cdiv(n_k, b)
    top_blocks = torch.as_tensor(top_blocks)
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
    ``residues[0]`` is the phase; int [lines] or a sequence).

    Keys (the whole ``layout``) and queries (its last ``n_q`` tokens) are grid-permuted separately with that phase
    (`grid_permutation`, video segments only): with a cached prefix that ends inside a video segment, the queries'
    part of the segment is sorted on its own, so query and key blocks differ. The rules, each a set of causal pairs
    (query at position i, key at position j <= i) rounded to the key blocks it touches:

    - sink: keys ``j < cfg.sink``;
    - own: ``j == i`` (the block holding the row's own key), plus the ``cfg.local`` key blocks before that block in
      key-permuted order (a block rule; blocks without a causal pair are dropped by canonicalisation);
    - ``slash``: video rows keep the keys of their own (video segment, residue class): the diagonals spaced by the
      stride, which the permutation turns into one contiguous run per class;
    - ``vline``: every row keeps the video keys on a kept residue;
    - ``hline``: video rows on a kept residue keep every key.

    Text and image tokens are on no line and in no class. A layout without video keeps only sink + own + local.
    Raises ValueError for an empty ``residues``, a stride < 1 or ``n_q`` outside [0, num_tokens].
    """
    b, n_k = cfg.block, layout.num_tokens
    res = torch.as_tensor(list(residues) if not isinstance(residues, torch.Tensor) else residues.cpu())
    res = res.to(torch.int64).flatten()
    if res.numel() == 0:
        raise ValueError("grid_selection needs at least one residue (the phase)")
    if stride < 1:
        raise ValueError(f"grid stride must be >= 1, got {stride}")
    if not 0 <= n_q <= n_k:
        raise ValueError(f"n_q {n_q} must be within [0, num_tokens={n_k}]")
    phase = int(res[0])
    prefix = n_k - n_q
    kp = grid_permutation(layout, stride, phase, 0, n_k)
    qp = grid_permutation(layout, stride, phase, prefix, n_k)
    pos = torch.arange(n_k)
    qpos = pos[prefix:]
    is_video = layout.token_modalities() == int(Modality.VIDEO)
    seg_id = torch.zeros(n_k, dtype=torch.int64)
    for i, s in enumerate(layout.segments):
        seg_id[s.start : s.end] = i
    r = grid_residues(pos, stride, phase)
    on_line = is_video & torch.isin(torch.remainder(pos, stride), torch.remainder(res, stride))
    pair = pos[None, :] < cfg.sink  # [n_q, n_k], original order; made causal below
    pair = pair | (qpos[:, None] == pos[None, :])
    if cfg.slash:
        group = torch.where(is_video, seg_id * stride + r, -1)
        pair = pair | ((group[prefix:, None] == group[None, :]) & is_video[prefix:, None])
    if cfg.vline:
        pair = pair | on_line[None, :]
    if cfg.hline:
        pair = pair | on_line[prefix:, None]
    pair = pair & (pos[None, :] <= qpos[:, None])
    blocks = _rows_blocks(qp, kp, pair, b)
    own = _rows_blocks(qp, kp, qpos[:, None] == pos[None, :], b)
    nkb = blocks.shape[1]
    for shift in range(1, min(cfg.local, nkb) + 1):  # `local` key blocks before each own block, key-permuted order
        blocks[:, : nkb - shift] |= own[:, shift:]
    return Selection(b, qp, kp, blocks)


def union_selections(selections: Sequence[Selection]) -> Selection:
    """Union of the keep sets of one GQA group executing together (they must share block size and permutations)."""
    if not selections:
        raise ValueError("union_selections needs at least one selection")
    first = selections[0]
    for s in selections[1:]:
        if s.block != first.block or not (
            torch.equal(s.q_perm.order, first.q_perm.order) and torch.equal(s.k_perm.order, first.k_perm.order)
        ):
            raise ValueError("selections of one executing group must share block size and permutations")
    if any(s.num_rows != first.num_rows for s in selections):
        raise ValueError("selections of one executing group must compute the same rows")
    blocks = torch.stack([s.blocks for s in selections]).any(0)
    cols = [s.columns for s in selections if s.columns is not None]
    columns = torch.stack(cols).any(0) if cols else None
    return Selection(first.block, first.q_perm, first.k_perm, blocks, columns, first.rows)
