"""Per-head sparse pattern configs (pydantic, frozen): what a head keeps, before any scores are seen.

Every pattern is executed at the same granularity (see `mmi_core.selection`): key *blocks* of ``block`` tokens in
the head's (possibly permuted) order plus individual key *columns*; causality is always on original positions.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AShape",
    "BlockSparse",
    "Coverage",
    "Dense",
    "Grid",
    "PatternConfig",
    "VerticalSlash",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Coverage(BaseModel):
    """Adaptive budget: keep the highest-scoring entries until ``threshold`` of the estimated mass is covered,
    but never fewer than ``min_fraction`` nor more than ``max_fraction`` of the pattern's fixed budget."""

    model_config = _FROZEN
    threshold: float = Field(0.95, gt=0.0, le=1.0)
    min_fraction: float = Field(0.1, ge=0.0, le=1.0)
    max_fraction: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _bounds(self) -> Coverage:
        if self.min_fraction > self.max_fraction:
            raise ValueError(f"min_fraction {self.min_fraction} > max_fraction {self.max_fraction}")
        return self


class Dense(BaseModel):
    """Full causal attention (the engine's dense kernel)."""

    model_config = _FROZEN
    kind: Literal["dense"] = "dense"


class AShape(BaseModel):
    """Static sink + local window: keys with position < ``sink`` and keys within ``local`` tokens before the query,
    rounded outward to key blocks."""

    model_config = _FROZEN
    kind: Literal["a_shape"] = "a_shape"
    sink: int = Field(128, ge=0)
    local: int = Field(1024, ge=0)
    block: int = Field(64, ge=16)


class VerticalSlash(BaseModel):
    """MInference vertical-slash: top-``vertical`` key columns and top-``slash`` diagonals from the last ``last_q``
    queries. The first ``sink`` columns and the ``local`` nearest diagonals are always kept. Columns stay columns;
    diagonals are covered by the key blocks they touch."""

    model_config = _FROZEN
    kind: Literal["vertical_slash"] = "vertical_slash"
    vertical: int = Field(1000, ge=0)
    slash: int = Field(2048, ge=0)
    last_q: int = Field(64, ge=1)
    sink: int = Field(30, ge=0)
    local: int = Field(64, ge=1)
    block: int = Field(64, ge=16)
    coverage: Coverage | None = None


class BlockSparse(BaseModel):
    """MInference block-sparse: mean-pooled q/k blocks, ``top_k`` key blocks per query block. The diagonal block and
    the first key block are always kept (in addition to ``top_k``)."""

    model_config = _FROZEN
    kind: Literal["block_sparse"] = "block_sparse"
    top_k: int = Field(16, ge=0)
    block: int = Field(64, ge=16)
    coverage: Coverage | None = None


class Grid(BaseModel):
    """MMInference Grid head for video: stride and phase estimated online, video tokens permuted by
    ``((i - phase) mod stride, i)`` so that grid lines become dense blocks.

    ``stride``: an int (fixed), ``"frame"`` (the layout's tokens per frame; only the phase is searched) or
    ``"search"`` (candidates derived from tokens per frame, or ``2..max_stride`` when there is no frame size).
    ``lines``: how many residue classes (phases) are kept as grid lines; the best one is the phase.
    ``vline``: keys on the lines are kept for every query; ``hline``: queries on the lines keep every key;
    ``slash``: each query keeps the keys of its own residue class (the diagonals spaced by the stride).
    The first ``sink`` key positions, each row's own key block and the ``local`` key blocks before it (in key-permuted
    order) are always kept. Exact rules: `mmi_core.selection.grid_selection`.
    """

    model_config = _FROZEN
    kind: Literal["grid"] = "grid"
    stride: int | Literal["frame", "search"] = "frame"
    max_stride: int = Field(1024, ge=2)
    lines: int = Field(1, ge=1)
    hline: bool = True
    vline: bool = True
    slash: bool = True
    sink: int = Field(64, ge=0)
    local: int = Field(1, ge=0)
    last_q: int = Field(64, ge=1)
    block: int = Field(64, ge=16)

    @model_validator(mode="after")
    def _stride(self) -> Grid:
        if isinstance(self.stride, int) and not 2 <= self.stride <= self.max_stride:
            raise ValueError(f"Grid.stride {self.stride} must be within [2, max_stride={self.max_stride}]")
        if isinstance(self.stride, int) and self.lines > self.stride:
            raise ValueError(f"Grid.lines {self.lines} exceeds the stride {self.stride} (residue classes available)")
        if not (self.hline or self.vline or self.slash):
            raise ValueError("Grid needs at least one of hline, vline, slash")
        return self


PatternConfig = Annotated[Dense | AShape | VerticalSlash | BlockSparse | Grid, Field(discriminator="kind")]
