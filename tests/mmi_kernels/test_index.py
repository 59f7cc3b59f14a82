"""SparseIndex: exact conversion from mmi_core selections (keep masks equal), BSR view, capacities, bad input."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import BLOCK, group_selections, selection, video_layout

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    VerticalSlash,
    dense_selection,
    keep_mask,
)
from mmi_kernels import (
    IndexCapacityError,
    SlotKeep,
    index_from_keeps,
    index_from_selections,
    index_keep_mask,
    index_to_bsr,
    pattern_capacity,
)

KINDS = ["grid", "vs", "blocks", "ashape"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefix", [0, 37], ids=["no_prefix", "prefix37"])
def test_index_keep_mask_equals_mmi_core(kind: str, prefix: int) -> None:
    layout = video_layout()
    n_k = layout.num_tokens
    n_q = n_k - prefix
    sels = group_selections(kind, n_q, n_k, hkv=2, g=3, seed=1, layout=layout)
    idx = index_from_selections([sels], num_q_heads=6, num_kv_heads=2)
    for s, sel in enumerate(sels):
        assert torch.equal(index_keep_mask(idx, 0, s), keep_mask(sel)), f"slot {s}"


def test_two_requests_and_query_head_slots() -> None:
    """Two requests of different lengths (one with a prefix), one slot per query head (separate grid phases)."""
    lay_a, lay_b = video_layout(frames=4), video_layout(frames=2, text_before=5, text_after=50)
    reqs = []
    for lay, prefix in ((lay_a, 0), (lay_b, 29)):
        n_k = lay.num_tokens
        reqs.append([selection("grid", n_k - prefix, n_k, seed=h, layout=lay, phase=h) for h in range(4)])
    idx = index_from_selections(reqs, num_q_heads=4, num_kv_heads=2)
    assert idx.seqlens_q == (lay_a.num_tokens, lay_b.num_tokens - 29)
    assert idx.slot_kv_head.tolist() == [0, 0, 1, 1]
    for r, req in enumerate(reqs):
        for s, sel in enumerate(req):
            assert torch.equal(index_keep_mask(idx, r, s), keep_mask(sel)), f"request {r} slot {s}"


@pytest.mark.parametrize("chunk_bytes", [1, 30_000], ids=["slot_per_chunk", "some_slots_per_chunk"])
def test_chunked_build_equals_one_pass(chunk_bytes: int, monkeypatch) -> None:
    """The list pass over slots in chunks of INDEX_CHUNK_BYTES (each chunk one contiguous range of the ragged
    arrays, its own host read) builds the same index as one pass over all slots: two requests, column and
    grid slots mixed, every field equal."""
    import dataclasses

    import mmi_kernels.index as index_mod

    lay_a, lay_b = video_layout(frames=4), video_layout(frames=2, text_before=5, text_after=50)
    reqs = []
    for lay, prefix in ((lay_a, 0), (lay_b, 29)):
        n_k = lay.num_tokens
        kinds = ["vs", "grid", "blocks", "vs", "ashape", "grid"]
        reqs.append([selection(k, n_k - prefix, n_k, seed=h, layout=lay, phase=h % 2) for h, k in enumerate(kinds)])
    one = index_from_selections(reqs, num_q_heads=6, num_kv_heads=2)
    monkeypatch.setattr(index_mod, "INDEX_CHUNK_BYTES", chunk_bytes)
    chunks = index_mod._slot_chunks([[SlotKeep.from_selection(x) for x in r] for r in reqs], 6)
    assert len(chunks) == 6 if chunk_bytes == 1 else 1 < len(chunks) < 6
    many = index_from_selections(reqs, num_q_heads=6, num_kv_heads=2)
    for f in dataclasses.fields(one):
        a, b = getattr(one, f.name), getattr(many, f.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f.name
    assert int(one.column_count.sum()) > 0  # the column path ran
    for r, req in enumerate(reqs):
        for s, sel in enumerate(req):
            assert torch.equal(index_keep_mask(many, r, s), keep_mask(sel)), f"request {r} slot {s}"


def test_bsr_matches_selection_blocks_and_columns() -> None:
    layout = video_layout()
    n_k = layout.num_tokens
    sels = [selection("vs", n_k - 20, n_k, seed=3), selection("grid", n_k - 20, n_k, seed=4, layout=layout)]
    idx = index_from_selections([sels], num_q_heads=2, num_kv_heads=2)
    bsr = index_to_bsr(idx)
    nqb = idx.total_qblocks
    for s, sel in enumerate(sels):
        for qb in range(nqb):
            row = s * nqb + qb
            got = bsr.indices[bsr.indptr[row] : bsr.indptr[row + 1]].tolist()
            assert got == torch.nonzero(sel.blocks[qb]).flatten().tolist()
            got_c = bsr.column_indices[bsr.column_indptr[row] : bsr.column_indptr[row + 1]].tolist()
            want_c = [] if sel.columns is None else torch.nonzero(sel.columns[qb]).flatten().tolist()
            assert got_c == want_c


def test_hline_blocks_are_leading_runs_not_lists() -> None:
    """A Grid query block on a kept line keeps every causal key: stored as a count, so capacity stays small."""
    layout = video_layout(frames=12, rows=2, cols=3, text_before=40, text_after=3)
    n_k = layout.num_tokens
    sel = selection("grid", n_k, n_k, seed=5, layout=layout)
    idx = index_from_selections([[sel]], num_q_heads=1, num_kv_heads=1)
    lead = idx.block_prefix[0]
    assert int(lead.max()) >= 8  # the late hline blocks keep (almost) every key block
    assert idx.block_capacity < int(lead.max())
    assert torch.equal(index_keep_mask(idx, 0, 0), keep_mask(sel))


def test_lists_are_ragged_and_hold_only_kept_entries() -> None:
    """One slot with long lists beside short ones: the index stores each list's own entries back to back (a fixed
    width would store the longest list for every (slot, query block)); starts are the counts' prefix sums."""
    n = 300
    nqb = -(-n // BLOCK)
    order = torch.arange(n)
    long = torch.zeros(nqb, nqb, dtype=torch.bool)
    long[:, 1::2] = True  # every other key block: never a leading run
    long |= torch.eye(nqb, dtype=torch.bool)
    keeps = [SlotKeep(order, order, torch.eye(nqb, dtype=torch.bool)), SlotKeep(order, order, long)]
    idx = index_from_keeps([keeps], block=BLOCK, num_q_heads=2, num_kv_heads=2)
    count = idx.block_count.long().flatten()
    assert idx.block_ids.numel() == int(count.sum()) < idx.num_slots * idx.total_qblocks * idx.block_capacity
    assert torch.equal(idx.block_start.flatten(), torch.cumsum(count, 0) - count)
    for s, kp in enumerate(keeps):
        want = kp.blocks & torch.tril(torch.ones(nqb, nqb, dtype=torch.bool))
        got = index_to_bsr(idx)
        for qb in range(nqb):
            row = s * nqb + qb
            assert got.indices[got.indptr[row] : got.indptr[row + 1]].tolist() == want[qb].nonzero().flatten().tolist()


def test_dense_selection_needs_no_list() -> None:
    sel = dense_selection(75, 120, block=BLOCK)
    idx = index_from_selections([[sel]], num_q_heads=1, num_kv_heads=1)
    assert int(idx.block_count.sum()) == 0 and idx.block_capacity == 1
    assert torch.equal(index_keep_mask(idx, 0, 0), keep_mask(sel))


def test_capacity_is_fixed_or_raises() -> None:
    n = 150
    sel = selection("vs", n, n, seed=6)
    exact = index_from_selections([[sel]], num_q_heads=1, num_kv_heads=1)
    big = index_from_selections([[sel]], num_q_heads=1, num_kv_heads=1, block_capacity=40, column_capacity=50)
    assert (big.block_capacity, big.column_capacity) == (40, 50)
    assert torch.equal(index_keep_mask(big, 0, 0), keep_mask(sel))
    with pytest.raises(IndexCapacityError, match="block capacity"):
        index_from_selections([[sel]], num_q_heads=1, num_kv_heads=1, block_capacity=exact.block_capacity - 1)
    with pytest.raises(IndexCapacityError, match="column capacity"):
        index_from_selections([[sel]], num_q_heads=1, num_kv_heads=1, column_capacity=exact.column_capacity - 1)


@pytest.mark.parametrize(
    ("kind", "cfg"),
    [
        ("ashape", AShape(sink=16, local=40, block=BLOCK)),
        ("vs", VerticalSlash(vertical=6, slash=3, block=BLOCK, local=5, sink=3)),
        ("blocks", BlockSparse(top_k=2, block=BLOCK)),
        ("grid", Grid(stride="frame", lines=2, block=BLOCK, sink=8)),
    ],
)
@pytest.mark.parametrize("prefix", [0, 33])
def test_pattern_capacity_bounds_exact_lists(kind: str, cfg, prefix: int) -> None:
    layout = video_layout(frames=6)
    n_k = layout.num_tokens
    cap_b, cap_c = pattern_capacity(cfg, n_k)
    for seed in range(3):
        sel = selection(kind, n_k - prefix, n_k, seed=seed, layout=layout)
        idx = index_from_selections([[sel]], num_q_heads=1, num_kv_heads=1, block_capacity=cap_b, column_capacity=cap_c)
        assert torch.equal(index_keep_mask(idx, 0, 0), keep_mask(sel))


def test_keeps_with_raw_column_ids_dedupe_and_drop() -> None:
    """Column ids may repeat, fall inside kept blocks or after every row of the block: all removed."""
    n = 64
    order = torch.arange(n)
    blocks = torch.zeros(4, 4, dtype=torch.bool)
    blocks[torch.arange(4), torch.arange(4)] = True
    cols = torch.tensor([[3, 3, 20, -1], [3, 20, 20, 60], [0, 5, 40, 40], [1, 1, 1, 1]])
    idx = index_from_keeps([[SlotKeep(order, order, blocks, cols)]], block=BLOCK, num_q_heads=1, num_kv_heads=1)
    count, ids = idx.lists("column", 0)
    assert count.tolist() == [0, 1, 2, 1]
    assert ids.tolist() == [[-1, -1], [3, -1], [0, 5], [1, -1]]
    assert idx.column_ids.tolist() == [3, 0, 5, 1]  # ragged: back to back, nothing else stored


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_column_lists_may_stop_before_the_last_query_block(rows: int) -> None:
    """Column lists of the first ``rows`` query blocks only (a boundary head's part) build the index of the same
    lists padded with empty rows, beside slots with full lists; more rows than query blocks are refused."""
    import dataclasses

    n = 64
    order = torch.arange(n)
    blocks = torch.eye(4, dtype=torch.bool)
    cols = torch.tensor([[3, 3, 20, -1], [3, 20, 20, 60], [0, 5, 40, 40], [1, 1, 1, 1]])
    padded = torch.where(torch.arange(4)[:, None] < rows, cols, -1)
    kw = dict(block=BLOCK, num_q_heads=2, num_kv_heads=1, slot_heads=[(0, 1), (1, 1)])
    short = index_from_keeps(
        [[SlotKeep(order, order, blocks, cols[:rows]), SlotKeep(order, order, blocks, cols)]], **kw
    )
    full = index_from_keeps([[SlotKeep(order, order, blocks, padded), SlotKeep(order, order, blocks, cols)]], **kw)
    for f in dataclasses.fields(full):
        a, b = getattr(short, f.name), getattr(full, f.name)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f.name
    assert int(short.column_count[0].sum()) == [0, 0, 1, 3][rows]
    with pytest.raises(ValueError, match="column_ids must be"):
        index_from_keeps([[SlotKeep(order, order, blocks, torch.cat([cols, cols[:1]]))]], block=BLOCK,
                         num_q_heads=1, num_kv_heads=1)  # fmt: skip


def test_bad_inputs_name_the_problem() -> None:
    n = 80
    sel = selection("blocks", n, n, seed=0)
    with pytest.raises(ValueError, match="neither"):
        index_from_selections([[sel, sel, sel]], num_q_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="exactly once"):
        index_from_selections([[sel, sel]], num_q_heads=4, num_kv_heads=2, slot_heads=[(0, 2), (0, 2)])
    with pytest.raises(ValueError, match="one GQA group"):
        index_from_selections([[sel, sel]], num_q_heads=4, num_kv_heads=2, slot_heads=[(0, 1), (1, 3)])
    other = dense_selection(n, n, block=32)
    with pytest.raises(ValueError, match="block size"):
        index_from_selections([[sel, other]], num_q_heads=2, num_kv_heads=2)
    with pytest.raises(ValueError, match="same number"):
        index_from_selections([[sel, sel], [sel]], num_q_heads=2, num_kv_heads=2)


@pytest.mark.parametrize("slots,nqb,nkb,gap", [(1, 1, 1, 0), (2, 6, 1500, 7), (3, 13, 40, 0)])
def test_block_lists_kernels_equal_torch(slots, nqb, nkb, gap, monkeypatch) -> None:
    """The index builder's Triton row scans (interpreter, one program per (query block, slot)) equal their PyTorch
    expressions: leading run, counts and ascending ids written at each list's start of the ragged array (``gap``
    unused entries between lists stay untouched), chunk boundaries included."""
    from mmi_kernels.block_lists import block_ids, lead_and_count

    g = torch.Generator().manual_seed(nqb * nkb)
    blocks = torch.rand(slots, nqb, nkb, generator=g) < 0.7
    k_min = torch.randint(0, 9000, (slots, nkb), generator=g)
    q_max = torch.randint(0, 9000, (slots, nqb), generator=g)
    q_max[:, 1::3] = -1  # query blocks without a computed row (past a row-group slot's rows)
    rank = torch.empty(slots, nkb, dtype=torch.int64)
    rank.scatter_(1, torch.sort(k_min, dim=1, stable=True).indices, torch.arange(nkb).expand(slots, nkb))
    lead, count = lead_and_count(blocks, k_min, q_max, rank)
    start = (torch.cumsum((count + gap).flatten(), 0) - count.flatten() - gap).view_as(count)
    out = torch.full((int((count + gap).sum()) + 1,), -7, dtype=torch.int32)
    block_ids(blocks, k_min, q_max, rank, lead, start, out)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ref_lead, ref_count = lead_and_count(blocks, k_min, q_max, rank)
    assert torch.equal(lead, ref_lead) and torch.equal(count, ref_count)
    ref = torch.full_like(out, -7)
    block_ids(blocks, k_min, q_max, rank, ref_lead, start, ref)
    assert torch.equal(out, ref)
    assert int((ref == -7).sum()) == gap * nqb * slots + 1
