"""Boundary heads (Q and 2D) on the kernel side: estimate_layer_keeps vs mmi_core through the index (exact), and
SparsePrefillWrapper vs mmi_attention_reference on mixed text/image/video layouts."""

from __future__ import annotations

import pytest
import torch
from test_keep_planner import assert_same_index

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
    dense_selection,
    estimate_layer_selections,
    mmi_attention_reference,
    output_error,
)
from mmi_kernels import LayoutTensors, SparsePrefillWrapper, estimate_layer_keeps, index_from_keeps, layer_slots
from mmi_kernels.index import index_from_selections

B = 16
VS = VerticalSlash(vertical=6, slash=5, last_q=24, sink=3, local=4, block=B)
AS = AShape(sink=8, local=20, block=B)
GR = Grid(stride="frame", last_q=24, sink=4, local=1, block=B)
BS = BlockSparse(top_k=2, block=B)
QB = HeadSpec(boundary="q", pattern=AS, by_modality={"video": GR, "text": VS, "image": BS})
D2 = HeadSpec(boundary="2d", pattern=VS, by_pair={"video->video": GR, "text->video": BS, "video->text": AS})
DENSE_Q = HeadSpec(boundary="q", pattern=Dense())
# no Grid for video rows: plain modality orders, so two of them share one executing group
QV = HeadSpec(boundary="q", pattern=AS, by_modality={"text": VS, "image": BS})
D2V = HeadSpec(boundary="2d", pattern=VS, by_pair={"video->video": BS, "video->text": AS})

MIXED = {
    "t_i_v_t_v_t": ModalityLayout.from_parts(
        [
            ("text", 11),
            ("image", VisualGrid(frames=1, rows=3, cols=3)),  # 9 tokens: shorter than a block
            ("video", VisualGrid(frames=3, rows=3, cols=5)),
            ("text", 7),
            ("video", VisualGrid(frames=2, rows=2, cols=7, row_extra=1)),
            ("text", 30),  # text at the very end
        ]
    ),
    "v_t": ModalityLayout.from_parts([("video", VisualGrid(frames=4, rows=3, cols=5)), ("text", 5)]),
}


def _configs() -> HeadConfigs:
    """8 q heads / 4 kv heads: a boundary group (modality orders), a boundary(Grid video)+VS group (split), a mixed
    'head' KV head, a group with an all-dense boundary head (dense slot)."""
    heads = [QV, D2V, QB, HeadSpec(pattern=VS), D2, HeadSpec(pattern=GR), DENSE_Q, QB]
    return HeadConfigs(
        num_layers=1,
        num_q_heads=8,
        num_kv_heads=4,
        layers=[LayerConfig(heads=heads, gqa=["group", "group", "head", "group"])],
    )


def test_layer_slots_split_boundary_from_other_orders() -> None:
    assert layer_slots(_configs(), 0) == [(0, 2), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2)]
    two_grid_video = HeadConfigs(
        num_layers=1, num_q_heads=2, num_kv_heads=1, layers=[LayerConfig(heads=[QB, D2], gqa=["group"])]
    )
    assert layer_slots(two_grid_video, 0) == [(0, 1), (1, 1)]  # each has its own grid orders


@pytest.mark.parametrize("name", list(MIXED))
@pytest.mark.parametrize("prefix", [0, 37])
def test_boundary_keeps_equal_mmi_core(name: str, prefix: int) -> None:
    layout = MIXED[name]
    n_k = layout.num_tokens
    g = torch.Generator().manual_seed(prefix + n_k)
    q = torch.randn(n_k - prefix, 8, 16, generator=g)
    k = torch.randn(n_k, 4, 16, generator=g)
    hc = _configs()
    sels = estimate_layer_selections(q, k, layout, hc, 0)
    slots = layer_slots(hc, 0)
    dense = dense_selection(n_k - prefix, n_k, B)  # a dense slot (the all-dense boundary group)
    ref = index_from_selections([[sels[f] or dense for f, _ in slots]], num_q_heads=8, num_kv_heads=4, slot_heads=slots)
    keeps = estimate_layer_keeps(q, k, LayoutTensors(layout, "cpu"), hc, 0)
    got = index_from_keeps([keeps], block=B, num_q_heads=8, num_kv_heads=4, slot_heads=slots)
    assert_same_index(got, ref)


def test_wrapper_on_mixed_layouts_matches_reference(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the PyTorch execution of the index
    layouts = list(MIXED.values())
    prefixes = [20, 0]
    g = torch.Generator().manual_seed(4)
    qs = [torch.randn(lay.num_tokens - p, 8, 16, generator=g) for lay, p in zip(layouts, prefixes, strict=True)]
    ks = [torch.randn(lay.num_tokens, 4, 16, generator=g) for lay in layouts]
    vs = [torch.randn(lay.num_tokens, 4, 16, generator=g) for lay in layouts]
    hc = _configs()
    w = SparsePrefillWrapper(hc, min_tokens=32)
    plan = w.plan(layouts, q_lens=[x.shape[0] for x in qs])
    assert plan.reasons == ("sparse", "sparse")
    o = w.run(torch.cat(qs), torch.cat(ks), torch.cat(vs), 0)
    ref = torch.cat([mmi_attention_reference(*t, lay, hc, 0) for *t, lay in zip(qs, ks, vs, layouts, strict=True)])
    assert output_error(o, ref) < 1e-5
