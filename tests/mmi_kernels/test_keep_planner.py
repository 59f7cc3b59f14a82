"""GPU keep planners (mmi_kernels.keep_planner / estimate) against mmi_core's builders: exact index equality."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from conftest_kernels import LAYOUTS, mixed_head_configs

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    Modality,
    VerticalSlash,
    ashape_selection,
    block_sparse_selection,
    estimate_layer_selections,
    grid_selection,
    vertical_slash_selection,
)
from mmi_core.estimation import grid_key_scores, last_query_scores, vertical_slash_scores
from mmi_kernels import (
    LayoutTensors,
    ashape_keep,
    block_sparse_keeps,
    estimate_layer_keeps,
    grid_keeps,
    index_from_keeps,
    index_from_selections,
    last_query_stats,
    layer_slots,
    vertical_slash_keeps,
)


def assert_same_index(a, b) -> None:
    """Equal indexes: every field equal (the ragged lists are canonical: ascending, back to back, no padding)."""
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        else:
            assert x == y, f.name


ONE_HEAD = {"num_q_heads": 1, "num_kv_heads": 1}


def assert_same_keep(keep, sel) -> None:
    assert_same_index(
        index_from_keeps([[keep]], block=sel.block, **ONE_HEAD), index_from_selections([[sel]], **ONE_HEAD)
    )


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("prefix_frac", [0.0, 0.4], ids=["no_prefix", "prefix"])
@pytest.mark.parametrize(
    "cfg",
    [
        Grid(stride=8, block=16, local=1, sink=4),
        Grid(stride=8, block=16, local=0, sink=0, hline=False),
        Grid(stride=8, block=32, local=2, sink=40, vline=False, slash=True, hline=True),
        Grid(stride=8, block=16, local=1, sink=0, vline=True, slash=False, hline=False),
    ],
    ids=["all", "no_hline", "b32_no_vline", "vline_only"],
)
@pytest.mark.parametrize("stride,residues", [(16, [3]), (17, [0, 5]), (7, [6, 1, 2])])
def test_grid_keep_equals_mmi_core(layout_name, prefix_frac, cfg, stride, residues) -> None:
    layout = LAYOUTS[layout_name]
    n_k = layout.num_tokens
    n_q = n_k - int(prefix_frac * n_k)
    sel = grid_selection(layout, n_q, cfg, stride, residues)
    keep = grid_keeps(LayoutTensors(layout, "cpu"), n_q, cfg, stride, torch.tensor([residues]))[0]
    assert_same_keep(keep, sel)


def _ids(mask: torch.Tensor, forced: int, pad: int) -> torch.Tensor:
    """Ascending id lists of bool rows ``mask [H, n]`` with ``[0, forced)`` added, -1 padded by ``pad`` beyond the
    widest row (`vertical_slash_keeps`' input, as `mmi_kernels.ranking.top_ids` makes it)."""
    mask = mask | (torch.arange(mask.shape[1]) < forced)
    width = int(mask.sum(1).max()) + pad
    out = torch.full((mask.shape[0], width), -1, dtype=torch.int64)
    for h, row in enumerate(mask):
        ids = torch.nonzero(row).flatten()
        out[h, : ids.numel()] = ids
    return out


@pytest.mark.parametrize("n_q,n_k", [(100, 100), (37, 150), (1, 65), (64, 64)])
@pytest.mark.parametrize("block", [16, 32])
def test_identity_order_keeps_equal_mmi_core(n_q, n_k, block) -> None:
    g = torch.Generator().manual_seed(n_q * 1000 + n_k)
    for cfg in [AShape(sink=5, local=20, block=block), AShape(sink=0, local=0, block=block)]:
        sel = ashape_selection(n_q, n_k, cfg)
        keep = ashape_keep(n_q, n_k, cfg, "cpu")
        assert_same_keep(keep, sel)
    vs = VerticalSlash(vertical=5, slash=4, sink=3, local=5, block=block)
    cols = torch.rand(n_k, generator=g) < 0.1
    offs = torch.rand(n_k, generator=g) < 0.1
    sel = vertical_slash_selection(n_q, n_k, vs, torch.nonzero(cols).flatten(), torch.nonzero(offs).flatten())
    for pad in (0, 4):  # exact and loose list widths
        part = (n_q, n_k, vs, _ids(cols[None], vs.sink, pad), _ids(offs[None], vs.local, pad))
        keep = vertical_slash_keeps([part])[0][0]
        assert_same_keep(keep, sel)
    bs = BlockSparse(top_k=2, block=block)
    nqb, nkb = -(-n_q // block), -(-n_k // block)
    top = torch.randint(-1, nkb, (3, nqb, 3), generator=g)  # three heads, one call
    for h, keep in enumerate(block_sparse_keeps(n_q, n_k, bs, top)):
        assert_same_keep(keep, block_sparse_selection(n_q, n_k, bs, top[h]))
    with pytest.raises(ValueError, match="top_blocks"):
        block_sparse_keeps(n_q, n_k, bs, top[0])


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("start_frac", [0.0, 0.3, 0.97])
def test_grid_order_closed_form_equals_mmi_core(layout_name, start_frac) -> None:
    """The sort-free order from a device stride/phase equals mmi_core's permutation for every stride and phase."""
    from mmi_core import grid_permutation
    from mmi_kernels.keep_planner import grid_order

    layout = LAYOUTS[layout_name]
    lt = LayoutTensors(layout, "cpu")
    n = layout.num_tokens
    start = int(start_frac * n)
    for stride in (2, 3, 7, 16, 17, 40, n + 3):
        for phase in sorted({0, 1, stride // 2, stride - 1}):
            ref = grid_permutation(layout, stride, phase, start=start).order
            got = grid_order(lt, torch.tensor(stride), torch.tensor(phase), start)
            assert torch.equal(got, ref), (stride, phase)
            assert torch.equal(grid_order(lt, stride, phase, start), ref)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("start_frac", [0.0, 0.45])
def test_grid_inverse_kernel_equals_reference(layout_name, start_frac) -> None:
    """The one-launch Triton grid order (several units, each its own stride and phase, negative phases and strides
    longer than a segment included) equals the PyTorch expression, inverse and order."""
    from mmi_kernels.keep_planner import _grid_inverse, grid_inverse_reference

    lt = LayoutTensors(LAYOUTS[layout_name], "cpu")
    n = lt.layout.num_tokens
    stride = torch.tensor([[2], [3], [7], [16], [17], [n + 3]])
    phase = torch.tensor([[0], [2], [-3], [15], [40], [5]])
    start = int(start_frac * n)
    got, ref = _grid_inverse(lt, stride, phase, start), grid_inverse_reference(lt, stride, phase, start)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert torch.equal(got[1].gather(1, got[0]), torch.arange(n - start).expand(6, -1))


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize(("slash", "local", "prefix_frac"), [(True, 0, 0.0), (True, 2, 0.3), (False, 1, 0.0)])
def test_grid_row_intervals_kernel_equals_reference(layout_name, slash, local, prefix_frac) -> None:
    """The one-launch row intervals (integer atomics) equal the scatter-add expression: units with their own
    strides and phases, a cached prefix, with and without the class runs (slash) and local blocks."""
    from mmi_kernels.keep_planner import _grid_inverse, grid_row_intervals, grid_row_intervals_reference

    lt = LayoutTensors(LAYOUTS[layout_name], "cpu")
    n_k, block = lt.layout.num_tokens, 16
    prefix = int(prefix_frac * n_k)
    stride, phase = torch.tensor([[3], [7], [16]]), torch.tensor([[1], [0], [5]])
    kinv, _ = _grid_inverse(lt, stride, phase, 0)
    q_pos = _grid_inverse(lt, stride, phase, prefix)[1] + prefix
    nkb = -(-n_k // block)
    got = grid_row_intervals(lt, kinv, q_pos, stride, slash, local, block, nkb)
    assert torch.equal(got, grid_row_intervals_reference(lt, kinv, q_pos, stride, slash, local, block, nkb))
    assert int(got.sum()) == 0 and bool((got.view(3, -1, nkb + 1).cumsum(2) >= 0).all())  # every interval closes


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize(
    ("cfg", "prefix_frac"),
    [
        (Grid(stride=8, block=16, sink=4), 0.0),
        (Grid(stride=8, block=32, sink=0, hline=False), 0.3),
        (Grid(stride=8, block=16, sink=40, vline=False), 0.0),
        (Grid(stride=8, block=24, sink=5, lines=2), 0.45),
    ],
    ids=["all", "no_sink_no_hline", "no_vline", "block24"],
)
def test_grid_block_bounds_kernel_equals_reference(layout_name, cfg, prefix_frac) -> None:
    """The one-launch block facts (key blocks' smallest position and smallest sink/line key, query blocks' largest
    row and largest line row) equal the padded block reductions: units with their own strides, several residues
    (negative and past the stride included), a cached prefix, a block that is not a power of two."""
    from mmi_kernels.keep_planner import _grid_inverse, grid_block_bounds, grid_block_bounds_reference

    lt = LayoutTensors(LAYOUTS[layout_name], "cpu")
    n_k = lt.layout.num_tokens
    prefix = int(prefix_frac * n_k)
    stride = torch.tensor([[3], [7], [16]])
    res = torch.tensor([[1, -2], [0, 9], [5, 3]])[:, : cfg.lines]
    ko = _grid_inverse(lt, stride, res[:, :1], 0)[1]
    q_pos = _grid_inverse(lt, stride, res[:, :1], prefix)[1] + prefix
    got = grid_block_bounds(lt, ko, q_pos, stride, res, cfg, cfg.block)
    ref = grid_block_bounds_reference(lt, ko, q_pos, stride, res, cfg, cfg.block)
    for name, a, b in zip(("k_min", "col_min", "q_max", "h_max"), got, ref, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("cfg", [Grid(stride=8, block=16, local=1, sink=4), Grid(stride=8, block=32, hline=False)])
def test_grid_keep_tensor_stride_equals_int_stride(cfg) -> None:
    layout = LAYOUTS["two_videos"]
    lt = LayoutTensors(layout, "cpu")
    n_q = layout.num_tokens - 20
    sel = grid_selection(layout, n_q, cfg, 14, [5, 2])
    assert_same_keep(grid_keeps(lt, n_q, cfg, torch.tensor([14]), torch.tensor([[5, 2]]))[0], sel)


@pytest.mark.parametrize("chunk", ["all", "one"])
@pytest.mark.parametrize("prefix", [0, 23])
def test_grid_keeps_units_each_equal_mmi_core(chunk, prefix, monkeypatch) -> None:
    """Units with their own strides and lines built in one call (or one unit per chunk) equal mmi_core unit by unit:
    a unit reading another's stride, phase or blocks would differ."""
    import mmi_kernels.keep_planner as kpl

    if chunk == "one":
        monkeypatch.setattr(kpl, "GRID_CHUNK_ELEMENTS", 1)
    layout = LAYOUTS["two_videos"]
    n_q = layout.num_tokens - prefix
    cfg = Grid(stride=8, block=16, local=1, sink=4)
    strides, residues = [16, 7, 17], [[3, 1], [0, 5], [6, 2]]
    got = grid_keeps(LayoutTensors(layout, "cpu"), n_q, cfg, torch.tensor(strides), torch.tensor(residues))
    assert len(got) == 3
    for keep, st, res in zip(got, strides, residues, strict=True):
        assert_same_keep(keep, grid_selection(layout, n_q, cfg, st, res))


@pytest.mark.parametrize("n_q,n_k,block", [(100, 100, 16), (37, 150, 32), (1, 65, 16), (130, 200, 64), (64, 64, 16)])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.5])
def test_slash_blocks_kernel_equals_reference(n_q, n_k, block, density) -> None:
    """The Triton diagonal-to-block pass equals its PyTorch expression (partial query and key blocks, a cached
    prefix, no kept offset at all) and, on one head, the brute force over every (row, key) pair."""
    from mmi_kernels.keep_planner import slash_blocks, slash_blocks_reference

    g = torch.Generator().manual_seed(n_q + n_k + int(100 * density))
    offs = torch.rand(3, n_k, generator=g) < density
    kept = torch.zeros(3, n_k + 1, dtype=torch.int32)
    kept[:, 1:] = torch.cumsum(offs, 1)
    (got,) = slash_blocks(kept, [(n_q, n_k, block, 3)])
    assert torch.equal(got, slash_blocks_reference(kept, n_q, block))
    rows = torch.arange(n_k - n_q, n_k)[:, None]
    d = rows - torch.arange(n_k)[None, :]  # offset of each (row, key) pair; causal: >= 0
    pairs = (d >= 0) & offs[0][d.clamp(min=0)]
    nqb, nkb = -(-n_q // block), -(-n_k // block)
    brute = torch.nn.functional.pad(pairs, (0, nkb * block - n_k, 0, nqb * block - n_q)).view(nqb, block, nkb, block)
    assert torch.equal(got[0], brute.any(3).any(1))


def test_vertical_slash_keeps_parts_of_one_call_each_equal_mmi_core() -> None:
    """Parts of different lengths, cached prefixes, block sizes, head counts and list widths in one call (a boundary
    layer's sub-problems): each head equals mmi_core."""
    g = torch.Generator().manual_seed(9)
    specs = [(100, 100, 16, 2), (37, 150, 32, 3), (1, 65, 16, 1), (60, 90, 16, 2)]
    parts, masks = [], []
    for n_q, n_k, block, heads in specs:
        vs = VerticalSlash(vertical=6, slash=5, sink=2, local=3, block=block)
        cols = torch.rand(heads, n_k, generator=g) < 0.05
        offs = torch.rand(heads, n_k, generator=g) < 0.06
        parts.append((n_q, n_k, vs, _ids(cols, vs.sink, n_q % 3), _ids(offs, vs.local, n_k % 4)))
        masks.append((cols, offs))
    got = vertical_slash_keeps(parts)
    assert [len(kps) for kps in got] == [h for *_, h in specs]
    for (n_q, n_k, vs, _, _), (cols, offs), kps in zip(parts, masks, got, strict=True):
        for h, keep in enumerate(kps):
            sel = vertical_slash_selection(
                n_q, n_k, vs, torch.nonzero(cols[h]).flatten(), torch.nonzero(offs[h]).flatten()
            )
            assert_same_keep(keep, sel)
    assert vertical_slash_keeps([]) == []


@pytest.mark.parametrize("n_q,n_k,block", [(100, 100, 16), (37, 150, 32), (1, 65, 16), (130, 200, 64)])
def test_vertical_slash_keeps_heads_each_equal_mmi_core(n_q, n_k, block) -> None:
    """Heads with their own columns and diagonals in one call equal mmi_core head by head (the block-diagonal view
    and the partial last query block included)."""
    g = torch.Generator().manual_seed(n_q + n_k)
    vs = VerticalSlash(vertical=8, slash=6, sink=2, local=3, block=block)
    cols = torch.rand(4, n_k, generator=g) < 0.05
    offs = torch.rand(4, n_k, generator=g) < 0.05
    offs[1] = False  # a head with the local diagonals only
    cols[2] = False
    (got,) = vertical_slash_keeps([(n_q, n_k, vs, _ids(cols, vs.sink, 3), _ids(offs, vs.local, 0))])
    for h, keep in enumerate(got):
        sel = vertical_slash_selection(n_q, n_k, vs, torch.nonzero(cols[h]).flatten(), torch.nonzero(offs[h]).flatten())
        assert_same_keep(keep, sel)


@pytest.mark.parametrize(
    "n_q,n_k,hq,hkv,d,last_q,dtype",
    [
        (300, 333, 4, 2, 64, 64, torch.float32),
        (20, 517, 6, 3, 80, 64, torch.float32),  # fewer rows than last_q, head_dim not a power of two
        (1, 70, 2, 2, 32, 64, torch.float32),  # one row
        (100, 100, 2, 1, 128, 7, torch.bfloat16),
        (10, 50, 2, 1, 32, 16, torch.float32),  # one key tile: one lse partial per head
        (64, 5000, 1, 1, 32, 64, torch.float32),  # one head, 79 tiles: partials capped by the combine tile
    ],
)
def test_last_query_stats_triton_matches_mmi_core(n_q, n_k, hq, hkv, d, last_q, dtype) -> None:
    """The Triton statistics kernel (interpreter on CPU) vs mmi_core's scores: fp32 rounding only."""
    from mmi_kernels.last_query import last_query_stats_triton

    g = torch.Generator().manual_seed(n_k)
    q = torch.randn(n_q, hq, d, generator=g).to(dtype)
    k = torch.randn(n_k, hkv, d, generator=g).to(dtype)
    p = last_query_scores(q, k, last_q)
    v_ref, s_ref = vertical_slash_scores(p)
    got = last_query_stats_triton(q, k, last_q)
    torch.testing.assert_close(got.vertical, v_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.slash, s_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.log_mean, grid_key_scores(p), rtol=1e-5, atol=1e-4)
    assert last_query_stats_triton(q, k, last_q, need_slash=False).slash is None
    with pytest.raises(ValueError, match="do not fit"):
        last_query_stats_triton(q, k[:, :, :-1], last_q)
    with pytest.raises(ValueError, match="last_q"):
        last_query_stats_triton(q, k, 0)


def test_last_query_stats_chunked_matches_exact(monkeypatch) -> None:
    """The PyTorch path (CPU without the interpreter): chunked two-pass statistics equal the one-shot ones."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the dispatch reads it per call
    g = torch.Generator().manual_seed(0)
    q = torch.randn(50, 4, 16, generator=g)
    k = torch.randn(130, 2, 16, generator=g)
    v_ref, s_ref = vertical_slash_scores(last_query_scores(q, k, 24))
    v, s, lm = last_query_stats(q, k, 24, chunk=32)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lm, grid_key_scores(last_query_scores(q, k, 24)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout_name", ["text_video_text", "two_videos"])
@pytest.mark.parametrize("prefix", [0, 30])
def test_estimate_layer_keeps_equals_mmi_core(layout_name, prefix) -> None:
    layout = LAYOUTS[layout_name]
    hq, hkv = 8, 2
    n_k = layout.num_tokens
    g = torch.Generator().manual_seed(prefix + n_k)
    q = torch.randn(n_k - prefix, hq, 16, generator=g)
    k = torch.randn(n_k, hkv, 16, generator=g)
    hc = mixed_head_configs(hq, hkv)
    sels = estimate_layer_selections(q, k, layout, hc, 0)
    slots = layer_slots(hc, 0)
    ref = index_from_selections([[sels[f] for f, _ in slots]], num_q_heads=hq, num_kv_heads=hkv, slot_heads=slots)
    keeps = estimate_layer_keeps(q, k, LayoutTensors(layout, "cpu"), hc, 0)
    got = index_from_keeps([keeps], block=16, num_q_heads=hq, num_kv_heads=hkv, slot_heads=slots)
    assert_same_index(got, ref)


@pytest.mark.slow
def test_bf16_estimation_keeps_the_fp32_selection() -> None:
    """bf16 inputs (as on the GPU) vs fp32 inputs: per slot the kept (query, key) sets overlap >= 99% and the kept
    dense-softmax mass differs by <= 1e-3 (issue #5's bf16 criterion), on a held-out synthetic video workload."""
    from mmi_core import Grid, HeadConfigs, HeadSpec, LayerConfig, VerticalSlash
    from mmi_core.synthetic import held_out_seeds, synthetic_workload
    from mmi_kernels import index_keep_mask

    w = synthetic_workload(held_out_seeds(2)[1], workload="video", num_tokens=3072, num_q_heads=4, num_kv_heads=2)
    layer = LayerConfig(
        heads=[HeadSpec(pattern=Grid(stride="frame", block=32, lines=2))] * 2
        + [HeadSpec(pattern=VerticalSlash(vertical=64, slash=32, block=32))] * 2,
        gqa=["group", "group"],
    )
    hc = HeadConfigs(num_layers=1, num_q_heads=4, num_kv_heads=2, layers=[layer])
    lt = LayoutTensors(w.layout, "cpu")
    slots = layer_slots(hc, 0)
    idx = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        keeps = estimate_layer_keeps(w.q.to(dt), w.k.to(dt), lt, hc, 0)
        idx[name] = index_from_keeps([keeps], block=32, num_q_heads=4, num_kv_heads=2, slot_heads=slots)
    rows = torch.arange(0, w.q.shape[0], 7)
    n_q, n_k = w.q.shape[0], w.k.shape[0]
    causal = torch.arange(n_k)[None, :] <= (rows + n_k - n_q)[:, None]
    for s, (first, count) in enumerate(slots):
        a, b = (index_keep_mask(idx[n], 0, s, rows) for n in ("fp32", "bf16"))
        overlap = (a & b).sum().item() / (a | b).sum().item()
        assert overlap >= 0.99, (s, overlap)
        for h in range(first, first + count):
            sc = (w.q[rows, h].float() @ w.k[:, h // 2].float().T) / w.q.shape[-1] ** 0.5
            p = torch.softmax(sc.masked_fill(~causal, float("-inf")), -1)
            diff = ((p * a).sum(-1) - (p * b).sum(-1)).abs().mean().item()
            assert diff <= 1e-3, (h, diff)


@pytest.mark.parametrize("nqb,nkb", [(1, 1), (5, 1030), (17, 9)])
def test_grid_blocks_kernel_equals_torch(nqb, nkb, monkeypatch) -> None:
    """The fused Triton block pass (interpreter) equals its PyTorch expression, chunk carries included."""
    from mmi_kernels.keep_planner import grid_blocks

    g = torch.Generator().manual_seed(nqb * nkb)
    units = 3  # per-unit facts: a unit reading another's would differ
    diff = torch.randint(-1, 2, (units, nqb, nkb + 1), generator=g, dtype=torch.int32)
    col_min = torch.randint(0, 5000, (units, nkb), generator=g)
    k_min = torch.randint(0, 5000, (units, nkb), generator=g)
    q_max, h_max = torch.randint(0, 5000, (units, nqb), generator=g), torch.randint(-1, 5000, (units, nqb), generator=g)
    got = grid_blocks(diff, col_min, q_max, k_min, h_max)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ref = grid_blocks(diff, col_min, q_max, k_min, h_max)
    assert got.dtype == torch.bool and torch.equal(got, ref)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_layout_query_rows_are_the_rows_of_those_modalities(layout_name) -> None:
    """`LayoutTensors.query_rows` (a boundary part's other rows, built once per batch from the segments) equals the
    rows whose modality is in the set, for every set of modalities and cached prefix."""
    layout = LAYOUTS[layout_name]
    lt = LayoutTensors(layout, "cpu")
    mods = layout.token_modalities()
    for prefix in (0, layout.num_tokens // 3, layout.num_tokens - 1):
        for group in ({Modality.TEXT}, {Modality.VIDEO}, {Modality.IMAGE, Modality.TEXT}, set(Modality)):
            want = torch.isin(mods[prefix:], torch.tensor([int(m) for m in group])).nonzero().flatten()
            got = lt.query_rows(frozenset(group), prefix)
            assert got.dtype == torch.int64 and torch.equal(got, want), (group, prefix)
