"""Offline pattern search (mmi_core.search): planted heads are found, the latency band rules, configs round-trip."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mmi_core import (
    AShape,
    CostModel,
    Dense,
    Grid,
    HeadConfigs,
    LayerSearchResult,
    SearchSpace,
    VerticalSlash,
    assemble_head_configs,
    paper_search_space,
    search_layer,
    synthetic_workload,
)
from mmi_core.search import PAPER_VS_PAIRS
from mmi_core.synthetic import held_out_seeds

BLOCK = 32
KINDS = ("grid", "grid", "vertical_slash", "vertical_slash")


def _space(gqa: tuple[str, ...] = ("head",)) -> SearchSpace:
    vs = [
        VerticalSlash(vertical=v, slash=s, block=BLOCK, last_q=32, sink=16, local=32)
        for v, s in ((16, 8), (32, 16), (64, 32), (64, 64), (128, 32))
    ]
    ashape = [AShape(sink=32, local=local, block=BLOCK) for local in (64, 128, 256)]
    return SearchSpace(candidates=(Grid(stride="frame", block=BLOCK, last_q=32, sink=16), *vs, *ashape), gqa=gqa)


@pytest.fixture(scope="module")
def workload():
    # dev seed 5 (not a held-out seed): the band, GQA and boundary tests below
    return synthetic_workload(5, num_tokens=1536, num_q_heads=4, num_kv_heads=2, head_kinds=KINDS)


#: held-out seeds never looked at while the rule and this space were chosen (1000000-1000009 were: see
#: docs/search/README.md "Planted heads"); thresholds fixed before the first run on them
PLANTED_SEEDS = held_out_seeds(16)[10:]


def _ladder_space() -> SearchSpace:
    """Grid plus a vertical-slash and an A-shape ladder that both reach the latency budget at 4K tokens (so each
    family competes at its best density, not only the one whose budgets happen to be largest)."""
    pairs = ((16, 8), (32, 16), (64, 32), (64, 64), (128, 32), (128, 128), (256, 128), (256, 256))
    vs = [VerticalSlash(vertical=v, slash=s, block=BLOCK, last_q=32, sink=16, local=32) for v, s in pairs]
    ashape = [AShape(sink=32, local=local, block=BLOCK) for local in (64, 128, 256, 512)]
    grid = Grid(stride="frame", block=BLOCK, last_q=32, sink=16)
    return SearchSpace(candidates=(grid, *vs, *ashape), gqa=("head",))


@pytest.mark.slow
def test_planted_heads_recovered_on_held_out_seeds():
    """Six held-out seeds at ~4K tokens, 2 planted grid + 2 planted vertical-slash heads each, budget 0.45 x dense
    (+30%): grid heads choose Grid and VS heads choose vertical-slash on most seeds, never each other's kind (a few
    VS heads are local-dominated and go to A-shape). Measured on dev seeds 1-10: Grid 19/20, VS 19/20; with the old
    band rule (lower edge 0.315): Grid 6/20 on held-out seeds 1000000-1000009."""
    kernel_only = CostModel(estimation_ms_at_128k={})  # at 4K tokens the 128K estimation overhead would dominate
    chosen: dict[int, list[str]] = {}
    for seed in PLANTED_SEEDS:
        w = synthetic_workload(seed, num_tokens=4096, num_q_heads=4, num_kv_heads=2, head_kinds=KINDS)
        r = search_layer(
            w.q, w.k, w.v, w.layout, _ladder_space(), latency=kernel_only, num_rows=64, target_fraction=0.45, band=0.3
        )
        chosen[seed] = [c.spec.pattern.kind for c in r.heads]
        for h, c in enumerate(r.heads):  # the rule: the lowest error among the candidates within the budget
            budget = 1.3 * 0.45 * c.dense_latency_ms
            within = [rows[h][0] for rows in r.table.values() if rows[h][2] <= budget]
            assert c.latency_ms <= budget and c.output_error == pytest.approx(min(within))
            assert c.in_band == (0.7 * 0.45 <= c.latency_ms / c.dense_latency_ms <= 1.3 * 0.45)
    grid = [k for kinds in chosen.values() for k in kinds[:2]]
    vs = [k for kinds in chosen.values() for k in kinds[2:]]
    assert grid.count("grid") >= 10 and "vertical_slash" not in grid, chosen  # of 12
    assert vs.count("vertical_slash") >= 9 and "grid" not in vs, chosen  # of 12


class _Fake:
    """Latency by pattern type (default: VS cheap, Grid at the target 0.2 x dense, A-shape above the band)."""

    name = "fake"

    def __init__(self, grid: float = 2.0, vs: float = 1.0) -> None:
        self.cost = {Dense: 10.0, VerticalSlash: vs, Grid: grid, AShape: 5.0}

    def layer_latency_ms(self, q, k, v, layout, patterns, selections) -> list[float]:
        return [self.cost[type(p)] for p in patterns]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def test_budget_excludes_slower_candidates_and_keeps_cheaper_better_ones(workload):
    w = workload
    r = search_layer(w.q, w.k, w.v, w.layout, _space(), latency=_Fake(), num_rows=32, target_fraction=0.2, band=0.1)
    for h, c in enumerate(r.heads):  # budget 2.2: Grid (2.0, in band) and VS (1.0, below it) compete; A-shape out
        assert isinstance(c.spec.pattern, Grid | VerticalSlash) and c.in_band == isinstance(c.spec.pattern, Grid)
        within = [rows[h][0] for lab, rows in r.table.items() if not lab.startswith("a_shape")]
        assert c.output_error == pytest.approx(min(within))
    assert any(not c.in_band for c in r.heads)  # a cheaper and better VS beats the in-band Grid (dev seed 5)
    r = search_layer(w.q, w.k, w.v, w.layout, _space(), latency=_Fake(), num_rows=32, target_fraction=0.05, band=0.1)
    # nothing within the budget 0.55: the cheapest candidate, flagged out of band
    assert all(isinstance(c.spec.pattern, VerticalSlash) and not c.in_band for c in r.heads)


def test_gqa_group_choice_and_configs_round_trip(workload, tmp_path):
    w = workload
    lat = _Fake(grid=2.0, vs=3.0)  # only Grid within the budget 2.2: every head Grid
    r = search_layer(
        w.q, w.k, w.v, w.layout, _space(("head", "group")), latency=lat, num_rows=32, target_fraction=0.2, band=0.1
    )
    assert r.gqa == ["group", "group"]  # one Grid per group: the union costs no more and pools one stride
    again = LayerSearchResult.model_validate_json(r.model_dump_json())
    assert again == r
    hc = assemble_head_configs(
        [r, again.model_copy(update={"layer": 1})], 4, 2, space=_space(), latency=lat, metadata={"model": "synthetic"}
    )
    hc.save(tmp_path / "c.json")
    back = HeadConfigs.load(tmp_path / "c.json")
    assert back.num_layers == 2 and back.layers[1].gqa == ["group", "group"]
    meta = back.metadata
    assert meta["model"] == "synthetic" and meta["search"]["latency_source"] == {"name": "fake"}
    assert len(meta["per_head"]) == 2 and set(meta["per_head"][0][0]) >= {"pattern", "output_error", "latency_ms"}
    with pytest.raises(ValueError, match="one result per layer"):
        assemble_head_configs([again.model_copy(update={"layer": 1})], 4, 2, space=_space(), latency=lat)


def test_paper_space_lists_the_paper_candidates():
    space = paper_search_space(64)
    labels = space.describe()["candidates"]
    assert sum(lab.startswith("grid(") for lab in labels) == 12  # frame + search strides x 6 line combinations
    assert [lab for lab in labels if lab.startswith("a_shape")] == [
        "a_shape(128,1024)",
        "a_shape(128,2048)",
        "a_shape(128,4096)",
    ]
    assert len(PAPER_VS_PAIRS) == 9 and sum(lab.startswith("vs(") and "cov" not in lab for lab in labels) == 9
    assert any("cov" in lab for lab in labels) and any(lab.startswith("block_sparse") for lab in labels)
    assert all(p.max_stride == 1024 for p in space.candidates if isinstance(p, Grid))


def test_bad_spaces_and_arguments_raise_clearly(workload):
    with pytest.raises(ValueError, match="empty search space"):
        SearchSpace(candidates=())
    SearchSpace(candidates=(Dense(),), boundaries=("none", "q", "2d"))
    with pytest.raises(ValueError, match="at least one boundary kind"):
        SearchSpace(candidates=(Dense(),), boundaries=())
    with pytest.raises(ValueError, match="pair_candidates"):
        SearchSpace(candidates=(Dense(),), pair_candidates=0)
    with pytest.raises(ValueError, match="mix block sizes"):
        SearchSpace(candidates=(AShape(block=32), AShape(block=64)))
    w = workload
    text = synthetic_workload(0, workload="text", num_tokens=256, num_q_heads=2, num_kv_heads=1)
    only_grid = SearchSpace(candidates=(Grid(stride="frame", block=BLOCK),))
    with pytest.raises(ValueError, match="no candidate of the search space runs"):
        search_layer(text.q, text.k, text.v, text.layout, only_grid)
    with pytest.raises(ValueError, match="target_fraction"):
        search_layer(w.q, w.k, w.v, w.layout, _space(), target_fraction=0.0)
    with pytest.raises(ValueError, match="layout has"):
        search_layer(text.q, text.k, text.v, w.layout, _space())


def test_cost_model_prices_tiles_and_dense():
    cm = CostModel()
    q = torch.zeros(128, 1, 128)
    dense = cm.layer_latency_ms(q, q, q, None, [Dense()], [None])[0]  # type: ignore[arg-type]
    assert dense == pytest.approx(4 * 128 * (128 * 128 - 128 * 127 / 2) / 569e12 * 1e3)
    assert cm.rate("grid", 64) == 293.0 and cm.rate("blocks", 100) == 435.0 and cm.rate("vs", 16) == 316.0


@pytest.mark.slow
def test_boundary_q_stage(workload):
    w = workload
    assert len({int(m) for m in w.layout.token_modalities()}) > 1  # text and video query rows
    cands = _space().candidates[:4]  # Grid and three vertical-slash budgets: enough for modalities to differ
    space = SearchSpace(candidates=cands, boundaries=("none", "q"), gqa=("head",))
    base = search_layer(
        w.q,
        w.k,
        w.v,
        w.layout,
        SearchSpace(candidates=cands, gqa=("head",)),
        latency=_Fake(),
        num_rows=32,
        target_fraction=0.5,
        band=0.9,
    )
    r = search_layer(w.q, w.k, w.v, w.layout, space, latency=_Fake(), num_rows=32, target_fraction=0.5, band=0.9)
    for a, b in zip(base.heads, r.heads, strict=True):
        assert b.output_error <= a.output_error + 1e-6  # 'q' is taken only where it lowers the error
        assert (b.spec.boundary == "q") == b.label.startswith("q[")
        if b.spec.boundary == "q":
            assert b.spec.by_modality


@pytest.mark.slow
def test_boundary_2d_stage(workload):
    """The per-pair stage after the 'q' stage: a 2D head is kept only where it lowers the head's output error, its
    label names the pairs that differ from the head's pattern so far, and every pair it sets is a candidate."""
    w = workload
    cands = _space().candidates[:4]
    kw = {"latency": _Fake(), "num_rows": 32, "target_fraction": 0.5, "band": 0.9}
    q_only = search_layer(
        w.q, w.k, w.v, w.layout, SearchSpace(candidates=cands, boundaries=("none", "q"), gqa=("head",)), **kw
    )
    space = SearchSpace(candidates=cands, boundaries=("none", "q", "2d"), gqa=("head",), pair_candidates=2)
    r = search_layer(w.q, w.k, w.v, w.layout, space, **kw)
    assert any(b.spec.boundary == "2d" for b in r.heads), "the planted mixed workload should gain from some pair"
    for a, b in zip(q_only.heads, r.heads, strict=True):
        assert b.output_error <= a.output_error + 1e-6
        assert (b.spec.boundary == "2d") == b.label.startswith("2d[")
        if b.spec.boundary == "2d":
            assert b.output_error < a.output_error
            assert set(b.spec.by_pair.values()) <= set(cands)
            assert all("->" in k for k in b.spec.by_pair)
