"""Synthetic VLM workloads: determinism, frozen spec, planted ground truth, layouts, bad inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmi_core import Modality, SyntheticWorkload, held_out_seeds, synthetic_workload
from mmi_core.synthetic import default_spec


def test_spec_is_frozen_and_seed_ranges_disjoint():
    spec = default_spec()
    dev, held = spec.dev_seeds, spec.held_out_seeds
    assert dev[1] < held[0]  # held-out seeds are never dev seeds
    seeds = held_out_seeds(5)
    assert seeds == list(range(held[0], held[0] + 5))
    with pytest.raises(ValueError, match="held-out seeds"):
        held_out_seeds(held[1] - held[0] + 2)


def test_deterministic_and_query_suffix():
    a = synthetic_workload(11, num_tokens=1500, num_q_heads=4, num_kv_heads=2)
    b = synthetic_workload(11, num_tokens=1500, num_q_heads=4, num_kv_heads=2, n_q=100)
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    torch.testing.assert_close(a.q[-100:], b.q)  # queries are the last n_q tokens of the same workload
    c = synthetic_workload(12, num_tokens=1500, num_q_heads=4, num_kv_heads=2)
    assert not torch.equal(a.k, c.k)
    assert a.q.shape == (a.layout.num_tokens, 4, 64) and a.k.shape == (a.layout.num_tokens, 2, 64)
    assert torch.isfinite(a.q).all() and torch.isfinite(a.k).all()


@pytest.mark.parametrize("workload", ["video", "interleaved", "text"])
def test_layouts_and_ground_truth(workload):
    w = synthetic_workload(3, workload=workload, num_tokens=2500, num_q_heads=3, num_kv_heads=3)
    assert isinstance(w, SyntheticWorkload)
    videos = w.layout.segments_of(Modality.VIDEO)
    assert len(videos) == {"video": 1, "interleaved": 2, "text": 0}[workload]
    if workload == "text":
        assert w.head_kinds == ("vertical_slash", "a_shape", "vertical_slash")
        assert w.strides == (None,) * 3
        return
    assert w.head_kinds == ("grid", "vertical_slash", "a_shape")
    tpf = videos[0].grid.tokens_per_frame
    assert w.strides[0] == tpf and w.strides[1] is None
    # the phase is the residue of the primary salient patch's tokens in the first video segment
    primary = max(w.params["salient_patches"][0].items(), key=lambda kv: kv[1])[0]
    grid = videos[0].grid
    on = torch.nonzero(grid.on_grid_mask()).flatten()
    assert w.phases[0] == (videos[0].start + int(on[primary])) % tpf


def test_text_prefix_shifts_phase_and_grid_head_attends_its_lines():
    """The planted structure is visible in the attention: a grid head's video query attends mostly to keys of its
    own residue class (same patch in other frames) and to the phase line."""
    w = synthetic_workload(5, num_tokens=3000, num_q_heads=1, num_kv_heads=1, head_kinds=("grid",))
    seg = w.layout.segments_of(Modality.VIDEO)[0]
    tpf = seg.grid.tokens_per_frame
    row = seg.end - 1 - tpf // 2  # a video query in the last frame
    p = torch.softmax(w.q[row, 0] @ w.k[: row + 1, 0].T / math.sqrt(64), -1)
    pos = torch.arange(row + 1)
    same = ((row - pos) % tpf == 0) | ((pos - w.phases[0]) % tpf == 0)
    assert float(p[same].sum()) > 0.5
    assert float(same.float().mean()) < 0.05


def test_chunked_generation_matches_whole():
    """Workloads larger than one generation chunk are built chunk by chunk with O(N·D) memory."""
    w = synthetic_workload(2, workload="text", num_tokens=70_000, num_q_heads=1, num_kv_heads=1, n_q=8)
    assert w.k.shape == (70_000, 1, 64) and w.q.shape == (8, 1, 64)
    assert torch.isfinite(w.k).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="head_dim"):
        synthetic_workload(0, head_dim=16)
    with pytest.raises(ValueError, match="multiple"):
        synthetic_workload(0, num_q_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="head kinds"):
        synthetic_workload(0, num_q_heads=2, num_kv_heads=1, head_kinds=("grid",))
    with pytest.raises(ValueError, match="n_q"):
        synthetic_workload(0, num_tokens=500, n_q=10_000)
    with pytest.raises(ValueError, match="num_tokens"):
        synthetic_workload(0, num_tokens=0)


# -- "mixed" workloads (spec version 2) --------------------------------------------------------------------------------
def _mixed(seed: int, **kw) -> SyntheticWorkload:
    kw = {"num_tokens": 3000, "num_q_heads": 3, "num_kv_heads": 3, **kw}
    return synthetic_workload(seed, workload="mixed", **kw)


def test_mixed_spec_section_and_existing_kinds_untouched():
    spec = default_spec()
    assert spec.version >= 2 and spec.mixed["visual_segments"] == [2, 5]
    lo, hi = spec.mixed["text_share"]
    assert lo <= 0.25 <= hi


@pytest.mark.parametrize("seed", range(12))
def test_mixed_layout_follows_the_spec(seed):
    w = _mixed(seed)
    spec = default_spec().mixed
    segs = w.layout.segments
    visual = [s for s in segs if s.modality != Modality.TEXT]
    assert 2 <= len(visual) <= 5
    assert w.layout.segments_of(Modality.VIDEO)  # always at least one video (the needle lives in a frame)
    for s in w.layout.segments_of(Modality.IMAGE):
        assert s.grid.frames == 1
    share = w.layout.num_tokens_of(Modality.TEXT) / w.layout.num_tokens
    assert spec["text_share"][0] - 0.01 <= share <= spec["text_share"][1] + 0.01
    assert segs[-1].modality == Modality.TEXT  # the question is at the very end
    assert tuple(w.params["mixed"]["question"]) == (segs[-1].start, segs[-1].end)
    # visual segments are separated by text (subtitles), and the first one follows the (possibly empty) prefix
    for a, b in itertools.pairwise(segs):
        assert not (a.modality != Modality.TEXT and b.modality != Modality.TEXT)
    assert 0.9 * 3000 <= w.layout.num_tokens <= 1.1 * 3000
    needle = torch.tensor(w.params["mixed"]["needle_positions"])
    assert needle.numel() >= 1
    assert (w.layout.token_modalities()[needle] == int(Modality.VIDEO)).all()


def test_mixed_images_present_in_some_seeds_and_segment_counts_vary():
    counts, with_images = set(), 0
    for seed in range(20):
        w = _mixed(seed, num_q_heads=1, num_kv_heads=1, n_q=1)
        counts.add(sum(s.modality != Modality.TEXT for s in w.layout.segments))
        with_images += bool(w.layout.segments_of(Modality.IMAGE))
    assert 0 < with_images < 20
    assert counts >= {2, 5}


def test_mixed_reproducible_and_n_q_suffix():
    a, b = _mixed(7), _mixed(7, n_q=200)
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and a.layout == b.layout
    torch.testing.assert_close(a.q[-200:], b.q)
    assert a.params["mixed"] == b.params["mixed"]
    c = _mixed(8)
    assert not torch.equal(a.k[: min(a.k.shape[0], c.k.shape[0])], c.k[: min(a.k.shape[0], c.k.shape[0])])
    assert torch.isfinite(a.q).all() and torch.isfinite(a.k).all()


def test_mixed_question_rows_attend_the_needle():
    """The planted needle is visible: averaged over heads and dev seeds, the question's rows put far more mass on
    the needle tokens than their share of the keys."""
    ratios = []
    for seed in range(4):
        w = _mixed(seed)
        qa, qb = w.params["mixed"]["question"]
        needle = torch.tensor(w.params["mixed"]["needle_positions"])
        for h in range(3):
            s = w.q[qa:qb, h] @ w.k[:qb, h].T / 8.0
            s = s.masked_fill(torch.arange(qb)[None] > torch.arange(qa, qb)[:, None], float("-inf"))
            ratios.append(float(torch.softmax(s, -1)[:, needle].sum(-1).mean()) * qb / needle.numel())
    assert sum(ratios) / len(ratios) > 50


def test_mixed_video_rows_attend_their_subtitle():
    """In heads drawn with a subtitle strength, a video's rows put mass on the subtitle right before it."""
    masses = []
    for seed in range(6):
        w = _mixed(seed, n_q=None)
        mi = w.params["mixed"]
        for h in range(3):
            if mi["video_subtitle"][h] == 0:
                continue
            for a, b in mi["subtitle_segments"]:
                nxt = [s for s in w.layout.segments if s.start == b]
                if nxt and nxt[0].modality == Modality.VIDEO:
                    rows = torch.arange(b, nxt[0].end)[::11]
                    s = (w.q[rows, h] @ w.k[:, h].T / 8.0).masked_fill(
                        torch.arange(w.layout.num_tokens)[None] > rows[:, None], float("-inf")
                    )
                    masses.append(float(torch.softmax(s, -1)[:, a:b].sum(-1).mean()))
    assert masses and sum(masses) / len(masses) > 0.2


def test_mixed_needs_a_spec_with_the_section():
    spec = default_spec().model_copy(update={"mixed": {}})
    with pytest.raises(ValueError, match="mixed"):
        synthetic_workload(0, workload="mixed", spec=spec)
