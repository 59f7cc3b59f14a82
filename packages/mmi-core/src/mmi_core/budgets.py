"""Budget helper: pattern parameters for a target density (kept pairs / causal pairs) at a sequence length.

These are first-order cost models of each pattern's keep set, block rounding included; they choose parameters, they
do not promise the density. `mmi_core.metrics.density` measures it; the tests check the measured density is within
2x of the target on small layouts, for targets above each pattern's floor.

Cost model, in kept keys per query row averaged over the ``N`` rows (a causal row has ``N / 2`` keys on average, so a
density ``d`` is a budget of ``R = d * N / 2`` keys per row):

- A-shape: ``max(sink, block)`` sink keys + the ``local`` window + about one block of rounding.
- Vertical-slash: ``sink`` columns and the ``local`` diagonals are fixed (about ``2 * sink / N`` and
  ``3 * max(block, local) / N`` of density); the rest is split evenly between columns (a column at a uniformly
  spread position holds ``N / 2`` causal pairs: ``1 / N`` of density) and diagonals (a diagonal at a uniformly spread
  offset touches about two key blocks of ``N / 2`` rows: ``2 * block / N``).
- Block-sparse: counted exactly on the block grid, assuming the top blocks are distinct causal blocks: query block
  ``qb`` keeps ``min(top_k + 2, qb + 1)`` blocks (``+ 2``: block 0 and the diagonal block).
- Grid: a grid line spans about ``F = N / stride`` tokens (the video is assumed to fill the sequence), rounded up to
  a block: ``L = max(F, block)``. Fixed: the sink block, the own and ``local`` blocks, the own residue class
  (``slash``); each kept line adds about ``L / 2`` keys per row as a vertical line and as much again as a horizontal
  one. ``lines`` is chosen to fill the budget.

Targets below a pattern's floor (what it keeps with the smallest parameters) get the floor.
"""

from __future__ import annotations

from typing import Literal

from mmi_core.patterns import AShape, BlockSparse, Grid, PatternConfig, VerticalSlash

__all__ = ["pattern_for_density"]


def _block_sparse_top_k(density: float, num_tokens: int, block: int) -> int:
    """Smallest ``top_k`` whose block-grid pair count reaches ``density`` of the causal pairs."""
    nb = -(-num_tokens // block)
    causal = num_tokens * (num_tokens + 1) / 2
    diag_pairs, full_pairs = block * (block + 1) / 2, block * block

    def kept(top_k: int) -> float:
        return sum(diag_pairs + (min(top_k + 2, qb + 1) - 1) * full_pairs for qb in range(nb))

    for top_k in range(nb + 1):
        if kept(top_k) >= density * causal:
            return top_k
    return nb


def pattern_for_density(
    kind: Literal["a_shape", "vertical_slash", "block_sparse", "grid"],
    density: float,
    num_tokens: int,
    *,
    block: int = 64,
    tokens_per_frame: int | None = None,
) -> PatternConfig:
    """A pattern of ``kind`` whose keep set is about ``density`` of the causal pairs of ``num_tokens`` tokens.

    ``block``: the key/query block size of the returned config. ``tokens_per_frame``: the Grid stride (the returned
    Grid then has ``stride="frame"``); without it a fixed stride of 256 is assumed. See the module docstring for the
    cost model. Raises ValueError for densities outside (0, 1], ``num_tokens < 1`` or an unknown kind.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    n = num_tokens
    per_row = density * n / 2
    if kind == "a_shape":
        sink = min(128, block)
        return AShape(sink=sink, local=max(int(per_row - sink - block), 0), block=block)
    if kind == "vertical_slash":
        defaults = VerticalSlash()
        fixed = 2 * defaults.sink / n + 3 * max(block, defaults.local) / n
        rest = max(density - fixed, 0.0)
        vertical = round(rest / 2 * n)
        slash = round(rest / 2 * n / (2 * block))
        return VerticalSlash(vertical=vertical, slash=slash, block=block)
    if kind == "block_sparse":
        return BlockSparse(top_k=_block_sparse_top_k(density, n, block), block=block)
    if kind == "grid":
        stride = tokens_per_frame or 256
        defaults = Grid()
        line = max(n / stride, block)  # tokens of one grid line, rounded up to a block
        fixed = max(defaults.sink, block) + (defaults.local + 0.5) * block + line / 2
        lines = round((per_row - fixed) / line)  # each line: ~line/2 keys per row as vline, as much as hline
        lines = min(max(lines, 1), stride)
        return Grid(stride="frame" if tokens_per_frame else stride, lines=lines, block=block)
    raise ValueError(f"unknown pattern kind {kind!r}")
