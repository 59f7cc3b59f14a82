"""Boundary heads (Q and 2D) in mmi-core: the per-modality parts (`RowGroups`) and their rounding rule vs a
brute-force per-row construction, estimation from the last rows of each modality only, and the layer dispatch."""

from __future__ import annotations

import pytest
import torch

from mmi_core.boundary import _sub_selection, boundary_selection, modality_last_rows
from mmi_core.head_configs import HeadConfigs, HeadSpec
from mmi_core.layer import estimate_layer_selections, mmi_attention_reference
from mmi_core.layout import Modality, ModalityLayout, VisualGrid
from mmi_core.patterns import AShape, BlockSparse, Dense, Grid, VerticalSlash
from mmi_core.reference import sparse_attention_reference
from mmi_core.selection import Selection, keep_mask

B = 16
VS = VerticalSlash(vertical=6, slash=5, last_q=24, sink=3, local=4, block=B)
AS = AShape(sink=8, local=20, block=B)
BS = BlockSparse(top_k=2, block=B)
GR = Grid(stride="frame", last_q=24, sink=4, local=1, block=B)

V1 = VisualGrid(frames=3, rows=3, cols=5)  # 15 tokens per frame, 45 tokens
V2 = VisualGrid(frames=2, rows=2, cols=7, row_extra=1)  # 16 per frame
IM = VisualGrid(frames=1, rows=3, cols=3)  # 9 tokens: an image shorter than a block
LAYOUTS = {
    "t_v_t": [("text", 21), ("video", V1), ("text", 37)],  # 2 modalities, text at the very end
    "i_t_v_t_v": [("image", IM), ("text", 13), ("video", V1), ("text", 7), ("video", V2)],  # 5 segments, video last
    "t_i_v_t": [("text", 5), ("image", IM), ("video", V2), ("text", 3)],  # tiny segments, all pairs present
    "v_t": [("video", V1), ("text", 50)],
}
SPECS = {
    "q_vs": HeadSpec(boundary="q", pattern=VS, by_modality={"text": AS, "video": VS, "image": BS}),
    "q_grid": HeadSpec(boundary="q", pattern=AS, by_modality={"video": GR}),
    "2d": HeadSpec(
        boundary="2d",
        pattern=VS,
        by_pair={"text->video": BS, "video->text": AS, "video->video": GR, "image->text": Dense(), "text->text": VS},
    ),
}


def _inputs(layout: ModalityLayout, n_q: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = layout.num_tokens
    return torch.randn(n_q, 1, 16, generator=g), torch.randn(n, 1, 16, generator=g)


def _brute(q, k, layout, spec, sel):
    """Expected keep mask, row by row and tile by tile with plain loops over original positions."""
    n_q, n_k = q.shape[0], k.shape[0]
    prefix = n_k - n_q
    mods = layout.token_modalities()
    pb = torch.zeros(n_q, n_k, dtype=torch.bool)
    pc = torch.zeros(n_q, n_k, dtype=torch.bool)
    for m, (end, rows) in modality_last_rows(layout, n_q).items():
        for n in layout.modalities():
            cfg = spec.for_query(m) if spec.boundary == "q" else spec.for_pair(m, n)
            sub = _sub_selection(q, k, layout, cfg, end, rows, B, None)
            blocks_only = keep_mask(type(sub)(sub.block, sub.q_perm, sub.k_perm, sub.blocks, None))
            full = keep_mask(sub)
            for i in range(end - prefix):
                if int(mods[prefix + i]) != int(m):
                    continue
                for j in range(end):
                    if int(mods[j]) == int(n):
                        pb[i, j] |= bool(blocks_only[i, j])
                        pc[i, j] |= bool(full[i, j]) and not bool(blocks_only[i, j])
    for i in range(n_q):
        pb[i, prefix + i] = True
    # each row is computed by the part of its modality, in that part's orders
    qmods = mods[prefix:]
    want = torch.zeros(n_q, n_k, dtype=torch.bool)
    for m, part in zip(Modality, sel.parts, strict=True):
        qblock = {int(r): t // B for t, r in enumerate(part.q_perm.order[: part.num_rows])}
        kblock = {int(c): t // B for t, c in enumerate(part.k_perm.order)}
        tiles, cols = set(), set()
        for i in qblock:
            for j in range(n_k):
                if pb[i, j]:
                    tiles.add((qblock[i], kblock[j]))
                if pc[i, j]:
                    cols.add((qblock[i], j))
        for i in range(n_q):
            if int(qmods[i]) != int(m):
                continue
            for j in range(prefix + i + 1):
                want[i, j] = (qblock[i], kblock[j]) in tiles or (qblock[i], j) in cols
    return want, pb | pc


@pytest.mark.parametrize("lname", list(LAYOUTS))
@pytest.mark.parametrize("sname", list(SPECS))
@pytest.mark.parametrize("prefix_frac", [0.0, 0.4])
def test_boundary_selection_matches_brute_force(lname: str, sname: str, prefix_frac: float) -> None:
    layout = ModalityLayout.from_parts(LAYOUTS[lname])
    n_k = layout.num_tokens
    n_q = n_k - int(prefix_frac * n_k)
    q, k = _inputs(layout, n_q, seed=len(lname) * 7 + len(sname))
    sel = boundary_selection(q, k, layout, SPECS[sname])
    assert sel is not None
    got = keep_mask(sel)
    want, pairs = _brute(q, k, layout, SPECS[sname], sel)
    assert torch.equal(got, want)
    assert bool((got | ~pairs).all())  # every group's pairs are kept (superset)
    assert bool(got[torch.arange(n_q), n_k - n_q + torch.arange(n_q)].all())  # own position
    # one part per modality, computing exactly that modality's rows (each row: one softmax over all keys)
    qmods = layout.token_modalities()[n_k - n_q :]
    for m, part in zip(Modality, sel.parts, strict=True):
        assert part.num_rows == int((qmods == int(m)).sum())
        assert bool((qmods[part.q_perm.order[: part.num_rows]] == int(m)).all())


def test_q_boundary_estimates_from_own_modality_rows_only() -> None:
    """Changing every non-text query row leaves the text rows' keep set unchanged (VS estimated on text rows)."""
    layout = ModalityLayout.from_parts([("text", 40), ("video", V1), ("text", 6), ("video", V2)])
    n = layout.num_tokens
    spec = HeadSpec(boundary="q", pattern=AS, by_modality={"text": VS})
    q, k = _inputs(layout, n, seed=3)
    text = layout.token_modalities() == int(Modality.TEXT)
    q2 = q.clone()
    q2[~text] = torch.randn(int((~text).sum()), 1, 16, generator=torch.Generator().manual_seed(9)) * 5
    a = keep_mask(boundary_selection(q, k, layout, spec))
    b = keep_mask(boundary_selection(q2, k, layout, spec))
    assert torch.equal(a[text], b[text])
    # the text estimate used its last segment's 6 rows (< last_q = 24): last_q clamped, not rows of video
    assert modality_last_rows(layout, n)[Modality.TEXT] == (40 + 45 + 6, 6)


def test_transfer_video_params_to_earlier_segment_and_not_text_to_vision() -> None:
    v = VisualGrid(frames=8, rows=3, cols=5)  # 120 tokens
    layout = ModalityLayout.from_parts([("video", v), ("text", 20), ("video", v), ("text", 20)])
    n = layout.num_tokens
    q, k = _inputs(layout, n, seed=5)
    spec = HeadSpec(boundary="q", pattern=Dense(), by_modality={"video": VS})
    m = keep_mask(boundary_selection(q, k, layout, spec))
    mods = layout.token_modalities()
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    assert torch.equal(m[mods == int(Modality.TEXT)], causal[mods == int(Modality.TEXT)])  # text rows dense
    first = m[:120]  # rows of the first video segment use the parameters estimated in the last one
    assert int(first.sum()) < 0.9 * int(causal[:120].sum())  # sparse (measured 6140 of 7260 pairs)
    sub = _sub_selection(q, k, layout, VS, 260, 120, B, None)  # last video segment [140, 260)
    assert bool((first[:, :260] | ~keep_mask(sub)[:120]).all())  # ... and keep all of its pairs


def test_errors_and_dense() -> None:
    layout = ModalityLayout.from_parts([("text", 20), ("video", V1)])
    q, k = _inputs(layout, 65, seed=1)
    with pytest.raises(ValueError, match="boundary 'q' or '2d'"):
        boundary_selection(q, k, layout, HeadSpec(pattern=VS))
    with pytest.raises(ValueError, match="tokens"):
        boundary_selection(q, k[:-1], layout, HeadSpec(boundary="q", pattern=VS))
    assert boundary_selection(q, k, layout, HeadSpec(boundary="q", pattern=Dense())) is None
    assert boundary_selection(q[:0], k, layout, HeadSpec(boundary="q", pattern=VS)) is None


def test_layer_dispatch_and_reference_attention() -> None:
    layout = ModalityLayout.from_parts(LAYOUTS["i_t_v_t_v"])
    n = layout.num_tokens
    heads = [SPECS["q_vs"], SPECS["2d"], HeadSpec(pattern=VS), SPECS["q_grid"]]
    from mmi_core.head_configs import LayerConfig

    hc = HeadConfigs(num_layers=1, num_q_heads=4, num_kv_heads=2, layers=[LayerConfig(heads=heads, gqa=["head"] * 2)])
    g = torch.Generator().manual_seed(11)
    n_q = n - 17
    q, k, v = (torch.randn(t, h, 16, generator=g) for t, h in ((n_q, 4), (n, 2), (n, 2)))
    sels = estimate_layer_selections(q, k, layout, hc, 0)
    assert sels[0] == boundary_selection(q[:, :1], k[:, :1], layout, heads[0])
    assert sels[1] == boundary_selection(q[:, 1:2], k[:, :1], layout, heads[1])
    assert isinstance(sels[2], Selection) and sels[2].q_perm.is_identity
    out = mmi_attention_reference(q, k, v, layout, hc, 0)
    assert torch.allclose(out, sparse_attention_reference(q, k, v, sels))
