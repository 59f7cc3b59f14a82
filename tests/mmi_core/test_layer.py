"""Layer-level API: estimate_layer_selections / mmi_attention_reference against obvious constructions."""

from __future__ import annotations

import math

import pytest
import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Dense,
    Grid,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    ModalityLayout,
    VerticalSlash,
    VisualGrid,
    ashape_selection,
    estimate_layer_selections,
    keep_mask,
    mmi_attention_reference,
    sparse_attention_reference,
    vertical_slash_selection,
)

VG = VisualGrid(frames=6, rows=5, cols=7, row_extra=1)  # 40 tokens per frame
LAYOUT = ModalityLayout.from_parts([("text", 29), ("video", VG), ("text", 45)])  # 314 tokens, awkward on purpose
B = 16


def _qkv(n_q: int, hq: int = 4, hkv: int = 2, d: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = LAYOUT.num_tokens
    return (
        torch.randn(n_q, hq, d, generator=g),
        torch.randn(n, hkv, d, generator=g),
        torch.randn(n, hkv, d, generator=g),
    )


def _configs(patterns, gqa) -> HeadConfigs:
    heads = [HeadSpec(pattern=p) for p in patterns]
    return HeadConfigs(
        num_layers=1, num_q_heads=len(heads), num_kv_heads=len(gqa), layers=[LayerConfig(heads=heads, gqa=gqa)]
    )


def _vs_by_hand(q, k, h, cfg: VerticalSlash):
    """Column and diagonal sums of the last rows with explicit loops, then sorted by (-score, index)."""
    n_q, n_k = q.shape[0], k.shape[0]
    g = q.shape[1] // k.shape[1]
    n_last = min(cfg.last_q, n_q)
    vert, slash = torch.zeros(n_k), torch.zeros(n_k)
    for r in range(n_q - n_last, n_q):
        pos = n_k - n_q + r
        s = (q[r, h] @ k[: pos + 1, h // g].T) / math.sqrt(q.shape[2])
        p = torch.softmax(s, -1)
        vert[: pos + 1] += p
        for j in range(pos + 1):
            slash[pos - j] += p[j]

    def top(scores, budget, forced):
        ranked = sorted((i for i in range(n_k) if i >= forced), key=lambda i: (-float(scores[i]), i))
        return torch.tensor(ranked[:budget], dtype=torch.int64)

    return top(vert, cfg.vertical, cfg.sink), top(slash, cfg.slash, cfg.local)


@pytest.mark.parametrize("n_q", [1, 70, 314], ids=lambda n: f"nq{n}")
def test_vertical_slash_head_matches_hand_construction(n_q):
    cfg = VerticalSlash(vertical=23, slash=5, last_q=20, sink=3, local=2, block=B)
    q, k, _ = _qkv(n_q, hq=2, hkv=1)
    sels = estimate_layer_selections(q, k, LAYOUT, _configs([cfg, cfg], ["head"]), 0)
    for h in range(2):
        cols, offs = _vs_by_hand(q, k, h, cfg)
        want = vertical_slash_selection(n_q, LAYOUT.num_tokens, cfg, cols, offs)
        assert torch.equal(keep_mask(sels[h]), keep_mask(want))


def test_group_union_and_dense_group():
    vs = VerticalSlash(vertical=10, slash=3, block=B)
    ash = AShape(sink=16, local=32, block=B)
    q, k, v = _qkv(100)
    per_head = estimate_layer_selections(q, k, LAYOUT, _configs([vs, ash, vs, Dense()], ["head", "head"]), 0)
    grouped = estimate_layer_selections(q, k, LAYOUT, _configs([vs, ash, vs, Dense()], ["group", "group"]), 0)
    assert grouped[2] is None and grouped[3] is None  # a dense head makes its executing group dense
    assert grouped[0] is grouped[1]
    assert torch.equal(keep_mask(grouped[0]), keep_mask(per_head[0]) | keep_mask(per_head[1]))
    assert torch.equal(keep_mask(per_head[1]), keep_mask(ashape_selection(100, LAYOUT.num_tokens, ash)))
    out = mmi_attention_reference(q, k, v, LAYOUT, _configs([vs, ash, vs, Dense()], ["group", "group"]), 0)
    assert torch.equal(out, sparse_attention_reference(q, k, v, grouped))


def test_grid_group_shares_one_stride_and_phase():
    grid = Grid(stride="search", lines=2, block=B, sink=8)
    q, k, _ = _qkv(150)
    sels = estimate_layer_selections(q, k, LAYOUT, _configs([grid, grid, grid, grid], ["group", "head"]), 0)
    assert sels[0] is sels[1]
    for s in sels:
        assert s is not None and not s.k_perm.is_identity  # the video segment is permuted
    # a group mixing Grid with an identity-order pattern runs per head
    mixed = estimate_layer_selections(
        q, k, LAYOUT, _configs([grid, VerticalSlash(block=B), grid, grid], ["group", "group"]), 0
    )
    assert mixed[0] is not mixed[1] and mixed[1].k_perm.is_identity


def test_boundary_q_head_applies_its_modality_pattern():
    bs = BlockSparse(top_k=2, block=B)
    q, k, _v = _qkv(90)
    spec_q = HeadSpec(boundary="q", pattern=bs, by_modality={"video": AShape(block=B)})
    hc = HeadConfigs(
        num_layers=1,
        num_q_heads=2,
        num_kv_heads=1,
        layers=[LayerConfig(heads=[spec_q, HeadSpec(pattern=bs)], gqa=["head"])],
    )
    same = q[:, :1].expand(-1, 2, -1).contiguous()  # two identical heads
    sels = estimate_layer_selections(same, k[:, :1], LAYOUT, hc, 0)
    video = LAYOUT.token_modalities()[-same.shape[0] :] == 2
    a, b = keep_mask(sels[0]), keep_mask(sels[1])
    assert not torch.equal(a[video], b[video])  # video rows follow by_modality["video"] (A-shape), not block-sparse
    assert a[video].sum() > b[video].sum()


def test_zero_queries_and_bad_inputs():
    q, k, _v = _qkv(10)
    hc = _configs([VerticalSlash(block=B)] * 4, ["group", "group"])
    assert estimate_layer_selections(q[:0], k, LAYOUT, hc, 0) == [None] * 4
    with pytest.raises(ValueError, match="layout has"):
        estimate_layer_selections(q, k[:-1], LAYOUT, hc, 0)
    with pytest.raises(ValueError, match="layer 3"):
        estimate_layer_selections(q, k, LAYOUT, hc, 3)
    with pytest.raises(ValueError, match="heads"):
        estimate_layer_selections(q[:, :2], k, LAYOUT, hc, 0)
    with pytest.raises(ValueError, match="max_stride"):
        estimate_layer_selections(
            q, k, LAYOUT, _configs([Grid(stride="frame", max_stride=32, block=B)] * 4, ["head", "head"]), 0
        )


def test_short_sequences_and_empty_segments():
    """last_q larger than the chunk uses every row; empty segments in a layout are dropped; a Grid on a layout
    without video keeps sink + local only (documented in grid_selection)."""
    layout = ModalityLayout.from_parts([("text", 0), ("video", VisualGrid(frames=2, rows=2, cols=8)), ("text", 0)])
    assert len(layout.segments) == 1
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 2, 32, generator=g), torch.randn(32, 1, 32, generator=g)
    cfgs = [VerticalSlash(vertical=4, slash=2, last_q=64, block=B), Grid(stride="search", last_q=64, block=B)]
    sels = estimate_layer_selections(q, k, layout, _configs(cfgs, ["head"]), 0)
    assert all(s is not None and s.n_q == 3 for s in sels)
    text = ModalityLayout.text(32)
    sels = estimate_layer_selections(
        q, k, text, _configs([Grid(stride=4, block=B), Grid(stride=4, block=B)], ["group"]), 0
    )
    assert sels[0].k_perm.is_identity


def test_pooled_grid_group_recovers_planted_stride_and_phase():
    """End to end through the layer API on a synthetic workload (a dev seed): two grid query heads of one KV head
    executing as a group get one selection, permuted by the planted (stride, phase)."""
    from mmi_core import grid_permutation, synthetic_workload

    w = synthetic_workload(0, num_tokens=2500, num_q_heads=2, num_kv_heads=1, head_kinds=("grid", "grid"), n_q=300)
    hc = _configs([Grid(stride="search"), Grid(stride="search")], ["group"])
    sels = estimate_layer_selections(w.q, w.k, w.layout, hc, 0)
    assert sels[0] is sels[1]
    want = grid_permutation(w.layout, w.strides[0], w.phases[0])
    assert torch.equal(sels[0].k_perm.order, want.order)
