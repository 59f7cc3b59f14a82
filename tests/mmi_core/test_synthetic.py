"""Synthetic VLM workloads: determinism, frozen spec, planted ground truth, layouts, bad inputs."""

from __future__ import annotations

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
