"""Latency sources for the offline pattern search: how long one layer's heads take with given selections.

`CostModel` (CPU, no kernels) prices a head as

    kernel_ms = (computed_tiles · 4·D·b² + kept_columns · 4·D·b) / rate(pattern family, block)
    latency_ms = kernel_ms + estimation_ms(pattern family) · n_k / 131072

- ``computed_tiles``: True entries of ``Selection.blocks`` (each a ``b × b`` tile, masked elements included, as the
  kernels compute them); ``kept_columns``: True entries of ``Selection.columns`` (one key against a query block).
- ``rate``: TFLOP/s on computed tiles **measured** on an NVIDIA H200 (2026-11-22, torch 2.11, triton 3.6, v8 kernels,
  128K tokens, 28 q / 4 kv heads, D 128; ``docs/kernels/NOTES.md`` "Floors and results (v8, H200)",
  ``results/kernels/v8/kernel_bench_time_128k*.json``): block-sparse (identity key order) 385 at b64 (mean of 375
  and 395), 435 at b128; Grid (permuted keys) 293 / 258; vertical-slash (tiles + columns) 316 / 313; dense cuDNN
  SDPA 569 (counting causal pairs; used for `Dense` heads, priced at ``n_q·n_k/2`` pairs). A-shape runs as block
  lists in identity order: the block-sparse rate.
- ``estimation_ms``: per head at 128K keys, scaled linearly with ``n_k``. Grid: 3.2 ms, from the measured full-layer
  benchmark (``results/layer/layer_bench_grid_h200_2026-11-22.json``: estimate 89.6 ms + index 6.0 ms for 28 heads
  at 130,843 tokens). Vertical-slash: the same 3.2 ms (same last-query scores; **assumed**, not measured separately).
  Block-sparse: 1.0 ms (**assumed**: pooled ``n/b × n/b`` scores). A-shape and dense: 0.

Limits: one rate per family regardless of density (the table shows ±5% across 5-10% density); per-head and
group-packed GQA execution are priced alike (only packed execution was measured); rates are H200's — other GPUs scale
the absolute numbers, and the search compares candidates relative to each other and to dense, so the choice depends
on rate *ratios* only.

A search may instead time the real kernels (``mmi_models.search_cli.KernelTimer``, a `mmi_core.search.LayerEvaluator`,
which splits a measured layer time over heads by `CostModel.priced_ms` shares); the search records ``describe()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from mmi_core.layout import ModalityLayout
from mmi_core.patterns import AShape, BlockSparse, Dense, Grid, PatternConfig, VerticalSlash
from mmi_core.selection import RowGroups, Selection

__all__ = ["CostModel", "LatencySource", "pattern_family"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def pattern_family(pattern: PatternConfig) -> str:
    """Rate family of a pattern: ``dense``, ``blocks`` (block-sparse, A-shape), ``grid`` or ``vs``."""
    if isinstance(pattern, Dense):
        return "dense"
    if isinstance(pattern, Grid):
        return "grid"
    if isinstance(pattern, VerticalSlash):
        return "vs"
    if isinstance(pattern, AShape | BlockSparse):
        return "blocks"
    raise TypeError(f"unknown pattern {pattern!r}")


class LatencySource(Protocol):
    """Prices the heads of one layer. ``layer_latency_ms`` gets the captured ``q [n_q, Hq, D]``, ``k, v [n_k, Hkv,
    D]``, the layout, one pattern and one selection (None = dense) per query head; returns ms per query head."""

    name: str

    def layer_latency_ms(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: ModalityLayout,
        patterns: Sequence[PatternConfig],
        selections: Sequence[Selection | RowGroups | None],
    ) -> list[float]: ...

    def describe(self) -> dict[str, Any]: ...


class CostModel(BaseModel):
    """The documented CPU cost model (module docstring). Rates in TFLOP/s keyed ``"<family>@<block>"`` (block 64 or
    128; other blocks use the nearest measured one), estimation in ms per head at 131,072 keys."""

    model_config = _FROZEN
    name: str = "cost_model"
    rates: dict[str, float] = Field(
        default_factory=lambda: {
            "blocks@64": 385.0,
            "blocks@128": 435.0,
            "grid@64": 293.0,
            "grid@128": 258.0,
            "vs@64": 316.0,
            "vs@128": 313.0,
            "dense": 569.0,
        }
    )
    estimation_ms_at_128k: dict[str, float] = Field(
        default_factory=lambda: {"grid": 3.2, "vs": 3.2, "blocks": 1.0, "dense": 0.0, "a_shape": 0.0}
    )
    source: str = (
        "H200 v8 kernel rates (docs/kernels/NOTES.md, results/kernels/v8/kernel_bench_time_128k*.json, 2026-11-22) "
        "and Grid estimation from results/layer/layer_bench_grid_h200_2026-11-22.json; VS and block-sparse "
        "estimation assumed"
    )

    def rate(self, family: str, block: int) -> float:
        if family == "dense":
            return self.rates["dense"]
        measured = sorted(int(key.split("@")[1]) for key in self.rates if key.startswith(family + "@"))
        if not measured:
            raise KeyError(f"cost model has no rate for pattern family {family!r}")
        nearest = min(measured, key=lambda b: (abs(math.log(b / block)), b))
        return self.rates[f"{family}@{nearest}"]

    def head_latency_ms(
        self, pattern: PatternConfig, selection: Selection | RowGroups | None, n_q: int, n_k: int, d: int
    ) -> float:
        """Cost of one query head (ms). Raises TypeError for an unknown pattern."""
        if selection is None:
            return self.priced_ms(pattern, None, 0, 0, n_q, n_k, d)
        parts = selection.parts if isinstance(selection, RowGroups) else (selection,)  # a boundary head: its parts
        tiles = sum(int(p.blocks.sum()) for p in parts)
        cols = sum(int(p.columns.sum()) for p in parts if p.columns is not None)
        return self.priced_ms(pattern, selection.block, tiles, cols, n_q, n_k, d)

    def priced_ms(
        self, pattern: PatternConfig, block: int | None, tiles: int, columns: int, n_q: int, n_k: int, d: int
    ) -> float:
        """The formula of the module docstring from counts: ``tiles`` computed ``block × block`` tiles and ``columns``
        kept (query block, key) columns of one head; ``block`` None = dense causal (``n_q·n_k - n_q²/2`` pairs).
        Raises TypeError for an unknown pattern."""
        if block is None:  # dense causal: n_q·n_k - n_q²/2 pairs, 4·D flops each
            pairs = n_q * n_k - n_q * (n_q - 1) / 2
            return 4.0 * d * pairs / (self.rates["dense"] * 1e12) * 1e3
        family = pattern_family(pattern)
        if family == "dense":  # a dense pattern that still got a selection (cannot happen through the layer API)
            family = "blocks"
        flops = 4.0 * d * (tiles * block * block + columns * block)
        est_key = "a_shape" if isinstance(pattern, AShape) else family
        est = self.estimation_ms_at_128k.get(est_key, 0.0) * n_k / 131072
        return flops / (self.rate(family, block) * 1e12) * 1e3 + est

    def layer_latency_ms(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: ModalityLayout,
        patterns: Sequence[PatternConfig],
        selections: Sequence[Selection | RowGroups | None],
    ) -> list[float]:
        if len(patterns) != q.shape[1] or len(selections) != q.shape[1]:
            raise ValueError(f"{len(patterns)} patterns / {len(selections)} selections for {q.shape[1]} heads")
        n_q, n_k, d = q.shape[0], k.shape[0], q.shape[2]
        return [self.head_latency_ms(p, s, n_q, n_k, d) for p, s in zip(patterns, selections, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rates_tflops": dict(self.rates),
            "estimation_ms_at_128k": dict(self.estimation_ms_at_128k),
            "source": self.source,
        }
