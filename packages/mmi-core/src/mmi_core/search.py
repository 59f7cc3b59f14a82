"""Offline, kernel-aware pattern search (engine-agnostic): choose every head's pattern from captured q/k/v.

Per layer (`search_layer`):

1. **Candidates.** Every pattern of the `SearchSpace` runs on every head (``gqa="head"``) through a `LayerEvaluator`:
   `ReferenceEvaluator` (the layer API `estimate_layer_selections`, the same online estimation as at run time, and
   the reference sparse attention on sampled query rows; latency from a `LatencySource`, ``CostModel`` by default),
   or mmi-models' ``KernelTimer`` (the real kernels, timed). Per (candidate, head): the relative **output error**
   against the all-dense configuration on those rows (`output_error`), the attention recall, the same error on the
   rows of each query modality, and the latency. A candidate that cannot run on the layout (e.g. Grid on a layout
   without video; an evaluator's ValueError) is skipped with its reason.
2. **Choice per head.** The latency target is ``target_fraction`` × the head's dense latency; the budget is the
   band's upper edge ``(1 + band)`` × target (``band`` default 10%). Among the candidates within the budget the one
   with the lowest output error wins (ties: the earlier candidate); when none is, the cheapest. ``in_band`` says
   whether the chosen latency lies within ±``band`` of the target. There is no lower edge: a candidate cheaper than
   the band that beats every in-band one on error is better at lower cost (the paper's "comparable latency" band
   would drop it; measured on planted Grid heads, docs/search/README.md).
3. **Per modality, per pair, boundary.** The per-query-modality errors of every candidate are recorded and the best
   in-pool candidate per query modality is reported. With ``"q"`` in ``space.boundaries`` each head whose modalities
   prefer different candidates is re-run as ``HeadSpec(boundary="q", by_modality=...)`` and keeps it where the
   output error drops within the latency budget. With ``"2d"`` the per-pair stage follows: every head as a 2D head
   whose pairs all keep its pattern so far (one evaluation: the base), then per ordered pair ``m->n`` of different
   modalities and per candidate among the ``pair_candidates`` best of the pool on ``m``'s rows (mean over heads),
   one evaluation with that candidate on the pair for every head (a pair changes only ``m``'s rows, so the error on
   them ranks it); each head takes, per pair, the candidate that lowers its error on ``m``'s rows most, and keeps the
   combination where its output error drops within the latency budget (one last evaluation). ``"none"`` and ``"k"``
   execute identically; a head that keeps one pattern gets ``boundaries[0]``.
4. **GQA.** With ``"group"`` in ``space.gqa`` the chosen patterns are re-run with each KV head's group executing
   together (union of selections, pooled Grid stride/phase). A group executes together when its mean output error
   grows by at most ``gqa_error_tolerance`` and its total latency by at most ``band``. Groups mixing Grid with
   identity-order patterns stay ``"head"`` (the layer API would run them per head anyway: no shared key order).

Results are pydantic (`LayerSearchResult`, JSON round trip for per-layer checkpoints); `assemble_head_configs` turns
them into a `HeadConfigs` with the metadata every consumer reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from mmi_core.head_configs import HeadConfigs, HeadSpec, LayerConfig
from mmi_core.latency import CostModel, LatencySource
from mmi_core.layer import estimate_layer_selections
from mmi_core.layout import Modality, ModalityLayout
from mmi_core.metrics import attention_recall, output_error, sample_rows
from mmi_core.patterns import AShape, BlockSparse, Coverage, Dense, Grid, PatternConfig, VerticalSlash
from mmi_core.reference import check_qkv, sparse_attention_reference
from mmi_core.selection import keep_mask

__all__ = [
    "PAPER_VS_PAIRS",
    "HeadChoice",
    "LayerEvaluation",
    "LayerEvaluator",
    "LayerSearchResult",
    "ReferenceEvaluator",
    "SearchSpace",
    "assemble_head_configs",
    "paper_search_space",
    "pattern_label",
    "search_layer",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_PATTERN = TypeAdapter(PatternConfig)

#: The nine vertical-slash (vertical, slash) budgets: vertical {1000, 2000, 3500} × slash {200, 1024, 2048}.
PAPER_VS_PAIRS: tuple[tuple[int, int], ...] = tuple((v, s) for v in (1000, 2000, 3500) for s in (200, 1024, 2048))
#: The six Grid line combinations (hline, vline, slash): every non-empty subset except hline alone (queries on the
#: lines keep everything, other rows only their local blocks: never useful on its own).
GRID_LINE_COMBOS: tuple[tuple[bool, bool, bool], ...] = (
    (True, True, True),
    (True, True, False),
    (True, False, True),
    (False, True, True),
    (False, True, False),
    (False, False, True),
)


@dataclass(frozen=True)
class LayerEvaluation:
    """One layer configuration measured by a `LayerEvaluator`, on the sampled query rows.

    out:        [rows, Hq, D] the configuration's attention output on the rows (any float dtype and device)
    recall:     fp32 [Hq] mean over the rows of the dense causal softmax mass inside each head's keep set
    latency_ms: one latency per query head
    """

    out: torch.Tensor
    recall: torch.Tensor
    latency_ms: list[float]


class LayerEvaluator(Protocol):
    """Runs one layer configuration (a one-layer `HeadConfigs`) on captured ``q [n_q, Hq, D]``, ``k, v [n_k, Hkv,
    D]`` and reports output, recall and latency on the sampled ``rows`` (int64 query-row ids). `ReferenceEvaluator`
    is mmi-core's (reference attention, a `LatencySource`); mmi-models' ``KernelTimer`` runs the real kernels.
    ``row_keep_masks`` gives bool ``[rows, n_k]`` per query head (original order) for the report's pictures."""

    name: str

    def evaluate(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: ModalityLayout,
        head_configs: HeadConfigs,
        rows: torch.Tensor,
        *,
        scale: float | None = None,
    ) -> LayerEvaluation: ...

    def row_keep_masks(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        layout: ModalityLayout,
        head_configs: HeadConfigs,
        rows: torch.Tensor,
        *,
        layer: int = 0,
        scale: float | None = None,
    ) -> list[torch.Tensor]: ...

    def describe(self) -> dict[str, Any]: ...


class ReferenceEvaluator:
    """mmi-core's evaluation: `estimate_layer_selections` (the same online estimation as at run time; its Grid
    builder holds an ``n_q × n_k`` mask, so this is for short inputs), `sparse_attention_reference` and
    `attention_recall` on the rows (fp32), latency from ``latency`` (default `CostModel()`)."""

    def __init__(self, latency: LatencySource | None = None) -> None:
        self.latency: LatencySource = latency if latency is not None else CostModel()
        self.name = self.latency.name

    def evaluate(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: ModalityLayout,
        head_configs: HeadConfigs,
        rows: torch.Tensor,
        *,
        scale: float | None = None,
    ) -> LayerEvaluation:
        sels = estimate_layer_selections(q, k, layout, head_configs, 0, scale=scale)
        out = sparse_attention_reference(q, k, v, sels, scale=scale, rows=rows)
        rec = attention_recall(q, k, sels, scale=scale, rows=rows)
        patterns = [spec.pattern for spec in head_configs.layers[0].heads]
        return LayerEvaluation(out, rec, self.latency.layer_latency_ms(q, k, v, layout, patterns, sels))

    def row_keep_masks(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        layout: ModalityLayout,
        head_configs: HeadConfigs,
        rows: torch.Tensor,
        *,
        layer: int = 0,
        scale: float | None = None,
    ) -> list[torch.Tensor]:
        n_q, n_k = q.shape[0], k.shape[0]
        causal = torch.arange(n_k)[None, :] <= (rows.cpu() + n_k - n_q)[:, None]
        sels = estimate_layer_selections(q, k, layout, head_configs, layer, scale=scale)
        return [causal if s is None else keep_mask(s, rows) for s in sels]

    def describe(self) -> dict[str, Any]:
        return self.latency.describe()


class SearchSpace(BaseModel):
    """Candidates of the search. Raises ValueError for an empty candidate list, mixed block sizes, or boundary kinds
    the layer API does not execute yet."""

    model_config = _FROZEN
    candidates: tuple[PatternConfig, ...]
    boundaries: tuple[Literal["none", "k", "q", "2d"], ...] = ("none",)
    gqa: tuple[Literal["head", "group"], ...] = ("head", "group")
    pair_candidates: int = Field(default=3, ge=1)

    @field_validator("candidates")
    @classmethod
    def _non_empty(cls, v: tuple[PatternConfig, ...]) -> tuple[PatternConfig, ...]:
        if not v:
            raise ValueError("empty search space: give at least one candidate pattern")
        blocks = {p.block for p in v if not isinstance(p, Dense)}
        if len(blocks) > 1:
            raise ValueError(f"candidates mix block sizes {sorted(blocks)}; one block size per layer")
        return v

    @field_validator("boundaries", mode="before")
    @classmethod
    def _boundaries(cls, v: Any) -> Any:
        kinds = tuple(v) if v is not None else ()
        if not kinds:
            raise ValueError("empty search space: give at least one boundary kind ('none')")
        return kinds

    @field_validator("gqa")
    @classmethod
    def _gqa(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "head" not in v:
            raise ValueError("gqa options must include 'head' (the per-head choice is made first)")
        return v

    def describe(self) -> dict[str, Any]:
        return {
            "candidates": [pattern_label(p) for p in self.candidates],
            "boundaries": list(self.boundaries),
            "pair_candidates": self.pair_candidates,
            "gqa": list(self.gqa),
        }


def paper_search_space(
    block: int = 64,
    *,
    token_scale: float = 1.0,
    last_q: int = 64,
    grid_strides: Sequence[Literal["frame", "search"] | int] = ("frame", "search"),
    block_sparse_top_k: Sequence[int] = (16, 32, 64),
    coverage: float | None = 0.95,
    gqa: Sequence[Literal["head", "group"]] = ("head", "group"),
) -> SearchSpace:
    """The paper's space plus ours. Exactly:

    - Grid: stride in ``grid_strides`` × the 6 `GRID_LINE_COMBOS`, ``max_stride`` 1024;
    - A-shape: sink 128, local 1024 / 2048 / 4096;
    - vertical-slash: the nine `PAPER_VS_PAIRS`;
    - block-sparse: top-k key blocks in ``block_sparse_top_k``;
    - adaptive coverage (``coverage`` not None): vertical-slash (3500, 2048) and block-sparse (largest top-k) with
      ``Coverage(threshold=coverage)``.

    ``token_scale`` multiplies every token budget (sink, local, vertical, slash; rounded, at least 1) so that a short
    calibration input gets budgets of the same relative size (e.g. 0.1 for a ~10× shorter input than the paper's).
    """
    if token_scale <= 0:
        raise ValueError(f"token_scale must be > 0, got {token_scale}")

    def t(x: int) -> int:
        return max(1, round(x * token_scale))

    cands: list[PatternConfig] = []
    for stride in grid_strides:
        for h, v, s in GRID_LINE_COMBOS:
            cands.append(Grid(stride=stride, max_stride=1024, hline=h, vline=v, slash=s, last_q=last_q, block=block))
    cands += [AShape(sink=t(128), local=t(local), block=block) for local in (1024, 2048, 4096)]
    cands += [VerticalSlash(vertical=t(v), slash=t(s), last_q=last_q, block=block) for v, s in PAPER_VS_PAIRS]
    cands += [BlockSparse(top_k=k, block=block) for k in block_sparse_top_k]
    if coverage is not None:
        cov = Coverage(threshold=coverage)
        cands.append(VerticalSlash(vertical=t(3500), slash=t(2048), last_q=last_q, block=block, coverage=cov))
        cands.append(BlockSparse(top_k=max(block_sparse_top_k, default=64), block=block, coverage=cov))
    return SearchSpace(candidates=tuple(cands), gqa=tuple(gqa))


def pattern_label(p: PatternConfig) -> str:
    """Short human-readable name of a pattern (reports, CSV)."""
    if isinstance(p, Dense):
        return "dense"
    if isinstance(p, AShape):
        return f"a_shape({p.sink},{p.local})"
    cov = f"+cov{p.coverage.threshold:g}" if getattr(p, "coverage", None) is not None else ""
    if isinstance(p, VerticalSlash):
        return f"vs({p.vertical},{p.slash}){cov}"
    if isinstance(p, BlockSparse):
        return f"block_sparse({p.top_k}){cov}"
    lines = "".join(c for c, on in zip("hvs", (p.hline, p.vline, p.slash), strict=True) if on)
    return f"grid({p.stride},{lines})"


class HeadChoice(BaseModel):
    """The chosen spec of one query head with what it was chosen on."""

    model_config = _FROZEN
    spec: HeadSpec
    label: str
    output_error: float
    recall: float
    latency_ms: float
    dense_latency_ms: float
    in_band: bool
    error_by_modality: dict[str, float] = Field(default_factory=dict)
    best_by_modality: dict[str, str] = Field(default_factory=dict)


class LayerSearchResult(BaseModel):
    """One layer's result (also the per-layer checkpoint). ``table``: per candidate label, per head
    ``[output_error, recall, latency_ms]`` (None where the candidate was skipped)."""

    model_config = _FROZEN
    layer: int
    heads: list[HeadChoice]
    gqa: list[Literal["head", "group"]]
    target_fraction: float
    band: float
    num_rows: int
    skipped: dict[str, str] = Field(default_factory=dict)
    table: dict[str, list[list[float]]] = Field(default_factory=dict)
    seconds: float = 0.0


def _modality_rows(layout: ModalityLayout, n_q: int, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Positions in ``rows`` (indices into the sampled rows) per query modality."""
    mods = layout.token_modalities()[layout.num_tokens - n_q :][rows]
    return {Modality(int(m)).name.lower(): torch.nonzero(mods == m).flatten() for m in torch.unique(mods).tolist()}


def search_layer(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: ModalityLayout,
    space: SearchSpace,
    *,
    layer: int = 0,
    latency: LatencySource | None = None,
    evaluator: LayerEvaluator | None = None,
    target_fraction: float = 0.2,
    band: float = 0.1,
    num_rows: int = 256,
    gqa_error_tolerance: float = 0.01,
    scale: float | None = None,
    seed: int = 0,
    on_candidate: Callable[[int, int], None] | None = None,
) -> LayerSearchResult:
    """Choose a pattern per query head of one layer (module docstring for the rules).

    ``q [n_q, Hq, D]`` (the last ``n_q`` tokens), ``k, v [n_k, Hkv, D]`` token-major, any float dtype and device;
    ``layout`` covers the ``n_k`` tokens. Candidates run through ``evaluator`` (a `LayerEvaluator`; default
    `ReferenceEvaluator(latency)`, ``latency`` defaulting to `CostModel()`; give one of the two). ``num_rows`` query
    rows are sampled (`sample_rows`, ``seed``) for the errors; the dense output on them (the all-`Dense`
    configuration through the same evaluator) is the reference. ``on_candidate(done, total)`` is called after each
    candidate (progress). Raises ValueError for bad shapes (`check_qkv`), a layout of another length, both
    ``latency`` and ``evaluator``, ``target_fraction`` not in (0, 1], ``band`` not in [0, 1), or when no candidate
    can run on this layout (reasons in the message).
    """
    n_q, n_k, hq, hkv, _d = check_qkv(q, k, v)
    if layout.num_tokens != n_k:
        raise ValueError(f"layout has {layout.num_tokens} tokens but k has {n_k}")
    if not 0 < target_fraction <= 1:
        raise ValueError(f"target_fraction must be in (0, 1], got {target_fraction}")
    if not 0 <= band < 1:
        raise ValueError(f"band must be in [0, 1), got {band}")
    if latency is not None and evaluator is not None:
        raise ValueError("give a latency source or an evaluator, not both")
    ev: LayerEvaluator = evaluator if evaluator is not None else ReferenceEvaluator(latency)
    t0 = time.perf_counter()
    rows = sample_rows(n_q, num_rows, seed)
    by_mod = _modality_rows(layout, n_q, rows)
    dense = ev.evaluate(q, k, v, layout, HeadConfigs.uniform(1, hq, hkv, Dense(), gqa="head"), rows, scale=scale)
    o_ref, dense_ms = dense.out, dense.latency_ms
    by_mod = {m: i.to(o_ref.device) for m, i in by_mod.items()}

    def evaluate(hc: HeadConfigs) -> tuple[torch.Tensor, torch.Tensor, list[float], Any]:
        e = ev.evaluate(q, k, v, layout, hc, rows, scale=scale)
        err = output_error(e.out, o_ref, per_head=True)
        per_mod = {m: output_error(e.out[i], o_ref[i], per_head=True) for m, i in by_mod.items() if i.numel()}
        return err, e.recall.float().cpu(), e.latency_ms, per_mod

    cands = list(space.candidates)
    results: dict[int, tuple[torch.Tensor, torch.Tensor, list[float], dict[str, torch.Tensor]]] = {}
    skipped: dict[str, str] = {}
    for i, cand in enumerate(cands):
        hc = HeadConfigs.uniform(1, hq, hkv, cand, gqa="head")
        try:
            results[i] = evaluate(hc)
        except ValueError as e:  # e.g. Grid stride 'frame' on a layout without video
            skipped[pattern_label(cand)] = str(e)
        if on_candidate is not None:
            on_candidate(i + 1, len(cands))
    if not results:
        raise ValueError(f"no candidate of the search space runs on this layout: {skipped}")

    def budget(h: int) -> float:  # a head's latency budget: the band's upper edge
        return (1 + band) * target_fraction * dense_ms[h]

    specs: list[HeadSpec] = []
    choices: list[dict[str, Any]] = []
    best_idx: list[dict[str, int]] = []  # per head: the best candidate per query modality (within the head's pool)
    cand_idx: list[int] = []
    for h in range(hq):
        target = target_fraction * dense_ms[h]
        lo, hi = (1 - band) * target, (1 + band) * target
        lat = {i: r[2][h] for i, r in results.items()}
        err = {i: float(r[0][h]) for i, r in results.items()}
        # the budget: every candidate up to the band's upper edge competes. A lower edge would exclude candidates
        # that are cheaper *and* better than everything in the band (measured: planted Grid heads at 4K tokens cost
        # ~0.25 of dense and lost to worse vertical-slash candidates inside a 0.315-0.585 band; docs/search/README.md)
        pool = [i for i in results if lat[i] <= hi]
        best = min(pool, key=lambda i: (err[i], i)) if pool else min(results, key=lambda i: (lat[i], i))
        in_band = lo <= lat[best] <= hi
        err_mod = {m: float(e[h]) for m, e in results[best][3].items()}
        best_idx.append(
            {m: min(pool or [best], key=lambda i, m=m: (float(results[i][3][m][h]), i)) for m in results[best][3]}
        )
        cand_idx.append(best)
        best_mod = {m: pattern_label(cands[i]) for m, i in best_idx[h].items()}
        specs.append(HeadSpec(boundary=space.boundaries[0], pattern=cands[best]))
        choices.append(
            {
                "label": pattern_label(cands[best]),
                "output_error": err[best],
                "recall": float(results[best][1][h]),
                "latency_ms": lat[best],
                "dense_latency_ms": dense_ms[h],
                "in_band": in_band,
                "error_by_modality": err_mod,
                "best_by_modality": best_mod,
            }
        )

    if "q" in space.boundaries and len(by_mod) > 1:
        # boundary 'q': each query modality gets its own best in-pool candidate; kept where the output error drops
        q_specs = list(specs)
        for h in range(hq):
            own = {m: i for m, i in best_idx[h].items() if i != cand_idx[h]}
            if own:
                q_specs[h] = HeadSpec(
                    boundary="q", pattern=specs[h].pattern, by_modality={m: cands[i] for m, i in own.items()}
                )
        changed = [h for h in range(hq) if q_specs[h] is not specs[h]]
        if changed:
            hc_q = HeadConfigs(
                num_layers=1, num_q_heads=hq, num_kv_heads=hkv, layers=[LayerConfig(heads=q_specs, gqa=["head"] * hkv)]
            )
            q_err, q_rec, q_lat, q_mod = evaluate(hc_q)
            for h in changed:
                if float(q_err[h]) < choices[h]["output_error"] and q_lat[h] <= budget(h):
                    specs[h] = q_specs[h]
                    parts = ",".join(f"{m}:{pattern_label(p)}" for m, p in q_specs[h].by_modality.items())
                    choices[h].update(
                        label=f"q[{choices[h]['label']};{parts}]",
                        output_error=float(q_err[h]),
                        recall=float(q_rec[h]),
                        latency_ms=q_lat[h],
                        error_by_modality={m: float(e[h]) for m, e in q_mod.items()},
                    )

    if "2d" in space.boundaries and len(by_mod) > 1:
        _pair_stage(specs, choices, cands, results, by_mod, layout, space, evaluate, hq, hkv, budget)

    gqa: list[Literal["head", "group"]] = ["head"] * hkv
    if "group" in space.gqa and hq > hkv:
        patterns = [s.pattern for s in specs]
        try:
            g_err, g_rec, g_lat, g_mod = evaluate(
                HeadConfigs(
                    num_layers=1,
                    num_q_heads=hq,
                    num_kv_heads=hkv,
                    layers=[LayerConfig(heads=specs, gqa=["group"] * hkv)],
                )
            )
        except ValueError:
            g_err = None
        if g_err is not None:
            g = hq // hkv
            for j in range(hkv):
                hs = range(j * g, (j + 1) * g)
                grids = sum(isinstance(patterns[h], Grid) for h in hs)
                if 0 < grids < g:  # Grid and identity-order heads share no order: the layer runs them per head
                    continue
                head_err = sum(choices[h]["output_error"] for h in hs) / g
                group_err = float(g_err[j * g : (j + 1) * g].mean())
                head_lat = sum(choices[h]["latency_ms"] for h in hs)
                group_lat = sum(g_lat[h] for h in hs)
                if group_err <= head_err + gqa_error_tolerance and group_lat <= (1 + band) * head_lat:
                    gqa[j] = "group"
                    for h in hs:
                        choices[h].update(
                            output_error=float(g_err[h]),
                            recall=float(g_rec[h]),
                            latency_ms=g_lat[h],
                            error_by_modality={m: float(e[h]) for m, e in g_mod.items()},
                        )
    table = {
        pattern_label(cands[i]): [[float(r[0][h]), float(r[1][h]), r[2][h]] for h in range(hq)]
        for i, r in results.items()
    }
    heads = [HeadChoice(spec=s, **c) for s, c in zip(specs, choices, strict=True)]
    return LayerSearchResult(
        layer=layer,
        heads=heads,
        gqa=gqa,
        target_fraction=target_fraction,
        band=band,
        num_rows=int(rows.numel()),
        skipped=skipped,
        table=table,
        seconds=time.perf_counter() - t0,
    )


def _as_2d(spec: HeadSpec, mods: Sequence[Modality]) -> HeadSpec:
    """``spec`` as a 2D-boundary head executing the same patterns: every pair ``m->n`` gets ``spec.for_query(m)``."""
    pairs = {
        f"{m.name.lower()}->{n.name.lower()}": spec.for_query(m)
        for m in mods
        for n in mods
        if spec.for_query(m) != spec.pattern
    }
    return HeadSpec(boundary="2d", pattern=spec.pattern, by_pair=pairs)


def _pair_stage(
    specs: list[HeadSpec],
    choices: list[dict[str, Any]],
    cands: list[PatternConfig],
    results: dict[int, tuple[torch.Tensor, torch.Tensor, list[float], dict[str, torch.Tensor]]],
    by_mod: dict[str, torch.Tensor],
    layout: ModalityLayout,
    space: SearchSpace,
    evaluate: Callable[[HeadConfigs], tuple[torch.Tensor, torch.Tensor, list[float], Any]],
    hq: int,
    hkv: int,
    budget: Callable[[int], float],
) -> None:
    """The 2D stage of `search_layer` (module docstring, step 3); updates ``specs`` and ``choices`` in place."""
    mods = layout.modalities()

    def layer(heads: list[HeadSpec]) -> HeadConfigs:
        return HeadConfigs(
            num_layers=1, num_q_heads=hq, num_kv_heads=hkv, layers=[LayerConfig(heads=heads, gqa=["head"] * hkv)]
        )

    base = [_as_2d(sp, mods) for sp in specs]
    _, _, _, base_mod = evaluate(layer(base))
    chosen: list[dict[str, PatternConfig]] = [dict(sp.by_pair) for sp in base]
    improved = [False] * hq
    for m_name, m_rows in by_mod.items():
        if not m_rows.numel() or m_name not in base_mod:
            continue
        # the candidates best on m's rows, mean over heads (each result's per-modality errors)
        ranked = sorted(results, key=lambda i: (float(results[i][3][m_name].mean()), i))[: space.pair_candidates]
        for n in mods:
            pair = f"{m_name}->{n.name.lower()}"
            if n.name.lower() == m_name:
                continue
            best_err = [float(base_mod[m_name][h]) for h in range(hq)]
            for i in ranked:
                trial = [
                    HeadSpec(boundary="2d", pattern=sp.pattern, by_pair={**sp.by_pair, pair: cands[i]}) for sp in base
                ]
                try:
                    _, _, _, t_mod = evaluate(layer(trial))
                except ValueError:  # a candidate that cannot run on this pair's sub-problem
                    continue
                for h in range(hq):
                    if float(t_mod[m_name][h]) < best_err[h]:
                        best_err[h] = float(t_mod[m_name][h])
                        chosen[h][pair] = cands[i]
                        improved[h] = True
    if not any(improved):
        return
    final = [
        HeadSpec(boundary="2d", pattern=sp.pattern, by_pair=chosen[h]) if improved[h] else specs[h]
        for h, sp in enumerate(base)
    ]
    f_err, f_rec, f_lat, f_mod = evaluate(layer(final))
    for h in range(hq):
        if improved[h] and float(f_err[h]) < choices[h]["output_error"] and f_lat[h] <= budget(h):
            specs[h] = final[h]
            pairs = ",".join(
                f"{k}:{pattern_label(p)}" for k, p in final[h].by_pair.items() if p != base[h].by_pair.get(k)
            )
            choices[h].update(
                label=f"2d[{choices[h]['label']};{pairs}]",
                output_error=float(f_err[h]),
                recall=float(f_rec[h]),
                latency_ms=f_lat[h],
                error_by_modality={m: float(e[h]) for m, e in f_mod.items()},
            )


def assemble_head_configs(
    results: Sequence[LayerSearchResult],
    num_q_heads: int,
    num_kv_heads: int,
    *,
    space: SearchSpace,
    latency: LatencySource | LayerEvaluator,
    metadata: dict[str, Any] | None = None,
) -> HeadConfigs:
    """`HeadConfigs` from one result per layer (in layer order 0..L-1), with metadata: the caller's (model, date,
    calibration), the search space, the latency source, and per layer × head the chosen label, output error, recall,
    latency and dense latency. Raises ValueError when layers are missing or out of order."""
    if not results or [r.layer for r in results] != list(range(len(results))):
        raise ValueError(f"need one result per layer 0..L-1 in order, got layers {[r.layer for r in results]}")
    layers = [LayerConfig(heads=[c.spec for c in r.heads], gqa=r.gqa) for r in results]
    per_head = [
        [
            {
                "pattern": c.label,
                "output_error": round(c.output_error, 6),
                "recall": round(c.recall, 6),
                "latency_ms": round(c.latency_ms, 6),
                "dense_latency_ms": round(c.dense_latency_ms, 6),
                "in_band": c.in_band,
                "error_by_modality": {m: round(e, 6) for m, e in c.error_by_modality.items()},
                "best_by_modality": c.best_by_modality,
            }
            for c in r.heads
        ]
        for r in results
    ]
    total = sum(c.latency_ms for r in results for c in r.heads)
    dense = sum(c.dense_latency_ms for r in results for c in r.heads)
    meta = {
        **(metadata or {}),
        "search": {
            "space": space.describe(),
            "latency_source": latency.describe(),
            "target_fraction": results[0].target_fraction,
            "band": results[0].band,
            "rows_sampled": results[0].num_rows,
            "selection_rule": "min output error (sampled rows, vs dense) among candidates with latency <= "
            "(1 + band) x target_fraction x dense latency (none: the cheapest); in_band: chosen within +-band",
            "latency_fraction_of_dense": round(total / dense, 6) if dense > 0 else math.nan,
            "seconds_per_layer": [round(r.seconds, 3) for r in results],
            "skipped_candidates": {str(r.layer): r.skipped for r in results if r.skipped},
        },
        "per_head": per_head,
    }
    return HeadConfigs(
        num_layers=len(results), num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, layers=layers, metadata=meta
    )
