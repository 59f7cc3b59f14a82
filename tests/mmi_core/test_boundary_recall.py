"""Held-out mixed workloads: a Q-boundary head vs the same head without boundary handling at no more density.

Workload: the frozen ``"interleaved"`` synthetic workload (text · video · text · video · text) with a planted Grid
head and a planted vertical-slash head on one KV head; the modality-switching query head takes the Grid head's
queries on video rows and the VS head's queries on text rows (a head whose pattern changes with the query's
modality, the case Q-boundary heads exist for). No new spec ranges: everything is drawn from the frozen spec.
Configs are fixed a priori (nothing was tuned), and the asserted seeds are held-out seeds 3..5, never run before the
assertion was written (seeds 0..2 were looked at while writing the test).

Mixed workloads (issue 7; the spec's ``"mixed"`` section, committed before any recall was measured on them): 2-5
videos/images with subtitles between them and the question at the end; the question's rows attend a needle patch,
video rows (in some heads) their subtitle. Same modality-switching head (Grid head's queries on video rows, VS head's
elsewhere). Configs were picked on dev seeds 0..5 at 4096 tokens (VS 16/32/64 verticals x block-sparse top 1/2/4 for
video->text were compared; the largest VS budget and top 2 were kept) and are asserted on held-out seeds 1000010..13.
"""

from __future__ import annotations

import pytest
import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    Modality,
    VerticalSlash,
    estimate_layer_selections,
)
from mmi_core.metrics import attention_recall, density, sample_rows
from mmi_core.synthetic import held_out_seeds, synthetic_workload

B = 32
GR = Grid(stride="frame", block=B, lines=2)
BOUNDARY = HeadSpec(
    boundary="q", pattern=VerticalSlash(vertical=64, slash=32, last_q=64, block=B), by_modality={"video": GR}
)
BASELINES = [
    HeadSpec(pattern=VerticalSlash(vertical=v, slash=v // 2, last_q=64, block=B)) for v in (8, 16, 32, 64, 128)
]
BASELINES.append(HeadSpec(pattern=GR))


def _measure(q, k, layout, spec, rows) -> tuple[float, float]:
    hc = HeadConfigs(num_layers=1, num_q_heads=1, num_kv_heads=1, layers=[LayerConfig(heads=[spec], gqa=["head"])])
    sel = estimate_layer_selections(q, k, layout, hc, 0)[0]
    return float(attention_recall(q, k, [sel], rows=rows)[0]), density(sel, rows)


@pytest.mark.parametrize("seed", held_out_seeds(6)[3:])
def test_q_boundary_beats_no_boundary_at_equal_or_lower_density(seed: int) -> None:
    w = synthetic_workload(
        seed,
        workload="interleaved",
        num_tokens=2048,
        num_q_heads=2,
        num_kv_heads=1,
        head_kinds=("grid", "vertical_slash"),
    )
    n = w.layout.num_tokens
    video = w.layout.token_modalities()[n - w.q.shape[0] :] == int(Modality.VIDEO)
    q = torch.where(video[:, None], w.q[:, 0], w.q[:, 1])[:, None]
    rows = sample_rows(q.shape[0], 256, seed)
    recall, dens = _measure(q, w.k, w.layout, BOUNDARY, rows)
    base = [_measure(q, w.k, w.layout, s, rows) for s in BASELINES]
    best = max((r for r, d in base if d <= dens), default=0.0)
    print(f"seed {seed}: boundary recall {recall:.4f} at density {dens:.3f}; best without boundary at <= that")
    print(f"  density {best:.4f}; all (recall, density): {[(round(r, 4), round(d, 3)) for r, d in base]}")
    assert recall > best


# -- mixed workloads (spec version 2, "mixed" section): Q-boundary and 2D-boundary heads --------------------------
MIXED_N = 4096
MIXED_SEEDS = held_out_seeds(14)[10:]  # 1000010..1000013: never run before the assertions below were written
VS_TEXT = VerticalSlash(vertical=64, slash=16, last_q=64, block=B)
GRID_VIDEO = Grid(stride="frame", block=B, lines=1)
Q_MIXED = HeadSpec(boundary="q", pattern=VS_TEXT, by_modality={"video": GRID_VIDEO})
D2_MIXED = HeadSpec(
    boundary="2d",
    pattern=VS_TEXT,
    by_pair={
        "video->video": GRID_VIDEO,
        "video->text": BlockSparse(top_k=2, block=B),
        "video->image": BlockSparse(top_k=2, block=B),
    },
)
# the same pattern families without boundaries (the paper's ablation), then other no-boundary patterns
MIXED_FAMILY = [
    HeadSpec(pattern=VerticalSlash(vertical=v, slash=v // 2, last_q=64, block=B)) for v in (8, 16, 32, 64, 128, 256)
]
MIXED_FAMILY += [HeadSpec(pattern=Grid(stride="frame", block=B, lines=n)) for n in (1, 2, 4)]
MIXED_OTHER = [HeadSpec(pattern=BlockSparse(top_k=t, block=B)) for t in (2, 4, 8, 16)]
MIXED_OTHER += [HeadSpec(pattern=AShape(sink=4, local=n * B, block=B)) for n in (2, 8, 32)]
_MIXED_CACHE: dict[int, dict] = {}


def _mixed_result(seed: int) -> dict:
    """Recall/density of Q, 2D and every no-boundary baseline on one held-out mixed workload (cached per seed)."""
    if seed in _MIXED_CACHE:
        return _MIXED_CACHE[seed]
    w = synthetic_workload(
        seed, workload="mixed", num_tokens=MIXED_N, num_q_heads=2, num_kv_heads=1, head_kinds=("grid", "vertical_slash")
    )
    n = w.layout.num_tokens
    video = w.layout.token_modalities()[n - w.q.shape[0] :] == int(Modality.VIDEO)
    q = torch.where(video[:, None], w.q[:, 0], w.q[:, 1])[:, None]
    rows = sample_rows(q.shape[0], 256, seed)
    out = {
        "q": _measure(q, w.k, w.layout, Q_MIXED, rows),
        "2d": _measure(q, w.k, w.layout, D2_MIXED, rows),
        "family": [_measure(q, w.k, w.layout, s, rows) for s in MIXED_FAMILY],
        "other": [_measure(q, w.k, w.layout, s, rows) for s in MIXED_OTHER],
        "subtitle": w.params["mixed"]["video_subtitle"][0] > 0,  # does the video head attend its subtitles?
        "segments": "".join(s.modality.name[0] for s in w.layout.segments),
    }
    for name in ("q", "2d"):
        r, d = out[name]
        out[f"{name}_gain_family"] = r - max((br for br, bd in out["family"] if bd <= d), default=0.0)
        out[f"{name}_gain_all"] = r - max((br for br, bd in out["family"] + out["other"] if bd <= d), default=0.0)
    print(
        f"seed {seed} {out['segments']} subtitle={out['subtitle']}: Q {out['q'][0]:.4f}@{out['q'][1]:.3f} "
        f"(gain family {out['q_gain_family']:+.4f}, all {out['q_gain_all']:+.4f}); 2D {out['2d'][0]:.4f}@"
        f"{out['2d'][1]:.3f} (gain family {out['2d_gain_family']:+.4f}, all {out['2d_gain_all']:+.4f})"
    )
    _MIXED_CACHE[seed] = out
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", MIXED_SEEDS)
def test_mixed_2d_keeps_what_q_keeps_and_adds_subtitles(seed: int) -> None:
    """Per held-out seed: the 2D head never loses recall against the Q head (same patterns, except that video rows
    use block-sparse against text/image keys), and where the planted video head attends its subtitles (ground truth)
    the 2D head gains >= 0.02 over the Q head, which cannot see video->text structure. (Held on 1000010..13 where it
    is asserted; on the later seeds 1000014..17 the subtitle claim failed once: 1000016, both heads at recall 0.9825
    and density 0.79 on a short single-video layout, so the +0.02 is not a law.)"""
    res = _mixed_result(seed)
    assert res["2d"][0] >= res["q"][0] - 0.005
    if res["subtitle"]:
        assert res["2d"][0] >= res["q"][0] + 0.02


@pytest.mark.slow
def test_mixed_q_beats_same_family_no_boundary_on_average() -> None:
    """Pre-registered (written before the held-out run): the Q head beats the best no-boundary vertical-slash or
    Grid head at no more density, on average over the held-out seeds. With the first boundary design (one selection
    per head, every modality rounded onto one modality-grouped order) it did NOT hold: -0.0145/-0.0405/-0.0804/-0.0062
    (mean -0.035; kept as a strict xfail). With one part per query modality in its own pattern's orders
    (`mmi_core.RowGroups`; a change of mechanism, no config or seed tuning) it holds: -0.0224/+0.0824/-0.0563/+0.0456
    (mean +0.012, CPU fp32, 2026-11-22). Dev seeds 0..5 (old design): +0.022/+0.027/+0.116/+0.001/-0.068/+0.134."""
    res = [_mixed_result(s) for s in MIXED_SEEDS]
    assert sum(r["q_gain_family"] for r in res) / len(res) > 0


@pytest.mark.slow
def test_mixed_2d_beats_any_no_boundary_on_average() -> None:
    """Pre-registered: the 2D head beats the best no-boundary head of ANY family (vertical-slash, Grid, block-sparse,
    A-shape) at no more density, on average over the held-out seeds. Dev seeds 0..5 (old design): +0.017/-0.048/
    +0.164/+0.001/-0.006/+0.079 (mean +0.035); held-out with the old design: -0.0841/-0.0405/+0.0078/-0.0171 (mean
    -0.034, block-sparse top-16 the strong baseline); with per-modality parts: -0.0048/+0.0657/+0.0633/+0.0447 (mean
    +0.042)."""
    res = [_mixed_result(s) for s in MIXED_SEEDS]
    assert any(r["subtitle"] for r in res)
    assert sum(r["2d_gain_all"] for r in res) / len(res) > 0


CONFIRM_SEEDS = held_out_seeds(18)[14:]  # 1000014..1000017: first run after this test was written


@pytest.mark.slow
def test_mixed_2d_beats_same_family_no_boundary_on_fresh_seeds() -> None:
    """The 2D head beats the best no-boundary vertical-slash or Grid head (the paper's ablation: the same pattern
    families without boundary handling) at no more density, on average over fresh held-out seeds. This hypothesis was
    formed AFTER seeing held-out seeds 1000010..13 (gains +0.069/-0.041/+0.008/+0.085, mean +0.030), so it is
    asserted on seeds 1000014..17, never run before."""
    res = [_mixed_result(s) for s in CONFIRM_SEEDS]
    gain = sum(r["2d_gain_family"] for r in res) / len(res)
    print(f"2D mean gain vs the best same-family no-boundary head on {CONFIRM_SEEDS}: {gain:+.4f}")
    assert gain > 0


FRESH_SEEDS = held_out_seeds(22)[18:]  # 1000018..1000021: never run before these two assertions were written


@pytest.mark.slow
def test_mixed_boundary_gains_confirmed_on_fresh_seeds() -> None:
    """Both pre-registered claims, re-asserted on seeds never run before (written after the per-modality parts
    made them hold on 1000010..13, and before any run on these seeds): on average, Q beats the best same-family
    no-boundary head and 2D beats the best no-boundary head of any family, each at no more density. First run
    (CPU fp32, 2026-11-22): Q +0.1053/-0.0824/+0.2077/+0.0123 (mean +0.061), 2D +0.0388/+0.1887/+0.1899/+0.0123
    (mean +0.107)."""
    res = [_mixed_result(s) for s in FRESH_SEEDS]
    q_gain = sum(r["q_gain_family"] for r in res) / len(res)
    d2_gain = sum(r["2d_gain_all"] for r in res) / len(res)
    print(
        f"fresh seeds {FRESH_SEEDS}: Q mean gain (same family) {q_gain:+.4f}, 2D mean gain (any family) {d2_gain:+.4f}"
    )
    assert q_gain > 0
    assert d2_gain > 0
