"""Budget helper: pattern parameters for a target density (kept pairs / causal pairs) at a sequence length.

These are first-order cost models of each pattern's keep set (block rounding included); they choose parameters,
they do not promise the density. `mmi_core.metrics.density` measures it, and the tests check these within 2x.
"""

from __future__ import annotations

from typing import Literal

from mmi_core.patterns import AShape, BlockSparse, Grid, PatternConfig, VerticalSlash

__all__ = ["pattern_for_density"]


def pattern_for_density(
    kind: Literal["a_shape", "vertical_slash", "block_sparse", "grid"],
    density: float,
    num_tokens: int,
    *,
    block: int = 64,
    tokens_per_frame: int | None = None,
) -> PatternConfig:
    """A pattern of ``kind`` whose keep set is about ``density`` of the causal pairs of ``num_tokens`` tokens.

    A causal row keeps on average ``num_tokens / 2`` keys, so the per-row budget is ``density * num_tokens / 2``.
    Grid density is set by the stride (about ``(lines + 1) * 2 / stride`` plus sink and local); ``lines`` is chosen
    to fill the budget. Raises ValueError for densities outside (0, 1] or an unknown kind.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    per_row = density * num_tokens / 2
    if kind == "a_shape":
        sink = min(128, block)
        return AShape(sink=sink, local=max(int(per_row - sink - block), 0), block=block)
    if kind == "vertical_slash":
        # half the budget to columns, half to diagonals; a diagonal costs about 1.5 blocks per query block
        return VerticalSlash(vertical=max(int(per_row / 2), 0), slash=max(int(per_row / 2 / (1.5 * block)), 1), block=block)
    if kind == "block_sparse":
        return BlockSparse(top_k=max(int(per_row / block) - 2, 0), block=block)
    if kind == "grid":
        stride = tokens_per_frame or 256
        lines = max(1, round(density * stride / 2) - 1)
        return Grid(stride="frame" if tokens_per_frame else stride, lines=min(lines, stride), block=block)
    raise ValueError(f"unknown pattern kind {kind!r}")
