"""FlexAttention export: the BlockMask's tiles and pairs equal the index and mmi_core.keep_mask exactly (full tiles
only where every pair is causal), and compiled FlexAttention on CPU agrees with sparse_attention_reference.

Eager flex_attention ignores the block lists (torch 2.11 materialises all scores and applies only mask_mod), so the
output tests compile it (Inductor's CPU template honours kv_num_blocks/kv_indices; it needs trim=False)."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import group_selections, selection, video_layout

from mmi_core import keep_mask, sparse_attention_reference
from mmi_kernels import (
    flex_permute,
    flex_sparse_attention,
    flex_unpermute,
    index_from_selections,
    index_keep_mask,
    index_to_block_mask,
    index_to_bsr,
)

HQ, HKV, G, D = 6, 2, 3, 32
BLOCK_KINDS = ["grid", "blocks", "ashape"]


def _index(kind: str, prefix: int, seed: int = 1):
    layout = video_layout()
    n_k = layout.num_tokens
    sels = group_selections(kind, n_k - prefix, n_k, hkv=HKV, g=G, seed=seed, layout=layout)
    return index_from_selections([sels], num_q_heads=HQ, num_kv_heads=HKV), sels


def _tiles(num: torch.Tensor, ids: torch.Tensor, nkb: int) -> torch.Tensor:
    """bool [H, nqb, nkb] from BlockMask lists [1, H, nqb] / [1, H, nqb, W]."""
    h, nqb = num.shape[1], num.shape[2]
    t = torch.zeros(h, nqb, nkb, dtype=torch.bool)
    valid = torch.arange(ids.shape[-1])[None, None, :] < num[0, :, :, None]
    hh, qq, _ = torch.meshgrid(torch.arange(h), torch.arange(nqb), torch.arange(ids.shape[-1]), indexing="ij")
    t[hh[valid], qq[valid], ids[0].long()[valid]] = True
    return t


def _pairs(ex, h: int, block: int) -> torch.Tensor:
    """bool [n_q, n_k] in original order: what a correct FlexAttention kernel keeps for export head ``h`` (every pair
    of a full tile, mask_mod on a partial tile)."""
    bm = ex.block_mask
    n_q, n_k = ex.q_order.shape[1], ex.k_order.shape[1]
    nkb = -(-n_k // block)
    full = _tiles(bm.full_kv_num_blocks, bm.full_kv_indices, nkb)[h]
    part = _tiles(bm.kv_num_blocks, bm.kv_indices, nkb)[h]
    qi, ki = torch.arange(n_q), torch.arange(n_k)
    hh = torch.tensor(h)
    mod = bm.mask_mod(torch.tensor(0), hh, qi[:, None], ki[None, :])
    perm = full[qi // block][:, ki // block] | (part[qi // block][:, ki // block] & mod)
    # permuted (row p, key c) -> original (q_order[p], k_order[c]); key rows follow the head's own key order
    qo = ex.q_order[h]
    krow = h if ex.k_order.shape[0] == ex.q_order.shape[0] else int((ex.k_heads == ex.heads[h] // G).nonzero()[0])
    ko = ex.k_order[krow]
    out = torch.zeros(n_q, n_k, dtype=torch.bool)
    out[qo[:, None], ko[None, :]] = perm
    return out


@pytest.mark.parametrize("kind", BLOCK_KINDS)
@pytest.mark.parametrize("prefix", [0, 37], ids=["no_prefix", "prefix37"])
@pytest.mark.parametrize("trim", [True, False], ids=["trim", "full_width"])
def test_block_mask_equals_index_and_keep_mask(kind: str, prefix: int, trim: bool) -> None:
    idx, sels = _index(kind, prefix)
    ex = index_to_block_mask(idx, trim=trim)
    bm = ex.block_mask
    b = idx.block
    n_q, n_k = idx.seqlens_q[0], idx.seqlens_k[0]
    nqb, nkb = -(-n_q // b), -(-n_k // b)
    assert bm.shape == (1, HQ, n_q, n_k) and bm.q_indices is None  # compute_q_blocks=False
    full = _tiles(bm.full_kv_num_blocks, bm.full_kv_indices, nkb)
    part = _tiles(bm.kv_num_blocks, bm.kv_indices, nkb)
    width = bm.kv_indices.shape[-1]
    most = max(int(bm.kv_num_blocks.max()), int(bm.full_kv_num_blocks.max()))
    assert width == (max(most, 1) if trim else nkb)
    assert not (full & part).any()
    bsr = index_to_bsr(idx)
    tqb = idx.total_qblocks
    for h in range(HQ):
        s = h // G
        want = torch.zeros(nqb, nkb, dtype=torch.bool)
        for qb in range(nqb):
            row = s * tqb + qb
            want[qb, bsr.indices[bsr.indptr[row] : bsr.indptr[row + 1]].long()] = True
        assert torch.equal(full[h] | part[h], want), f"head {h}: tile set"
        all_causal = idx.k_pos_max[s][None, :] <= idx.q_pos_min[s][:, None]
        assert torch.equal(full[h], want & all_causal), f"head {h}: full tiles are exactly the all-causal ones"
        assert torch.equal(_pairs(ex, h, b), keep_mask(sels[s])), f"head {h}: pairs"
    assert ex.full_tiles == int(full.sum()) and ex.partial_tiles == int(part.sum())
    ids, num = bm.kv_indices[0], bm.kv_num_blocks[0]
    for h in range(HQ):
        for qb in range(nqb):
            row = ids[h, qb, : int(num[h, qb])]
            assert torch.equal(row, torch.sort(row).values)


@pytest.mark.parametrize("n_q", [1, 17])
def test_short_query_chunk_over_a_block_aligned_cache(n_q: int) -> None:
    layout = video_layout(text_after=17)
    n_k = layout.num_tokens
    sels = group_selections("grid", n_q, n_k, hkv=HKV, g=G, seed=5, layout=layout)
    idx = index_from_selections([sels], num_q_heads=HQ, num_kv_heads=HKV)
    ex = index_to_block_mask(idx)
    for h in range(HQ):
        assert torch.equal(_pairs(ex, h, idx.block), keep_mask(sels[h // G])), f"head {h}"


def test_single_slot_export_and_query_head_slots() -> None:
    """slot=s exports H=1 over the slot's heads; slots per query head with different grid phases (key orders differ
    inside one KV head) export one key row per query head (no GQA in Flex)."""
    idx, sels = _index("grid", 29)
    ex = index_to_block_mask(idx, slot=1)
    assert ex.block_mask.shape[1] == 1 and ex.heads.tolist() == [3, 4, 5] and ex.gqa
    assert torch.equal(_pairs(ex, 0, idx.block), keep_mask(sels[1]))

    layout = video_layout(frames=3)
    n_k = layout.num_tokens
    per_head = [selection("grid", n_k, n_k, seed=h, layout=layout, phase=h) for h in range(4)]
    idx2 = index_from_selections([per_head], num_q_heads=4, num_kv_heads=2)
    ex2 = index_to_block_mask(idx2)
    assert not ex2.gqa and ex2.k_order.shape[0] == 4 and ex2.k_heads.tolist() == [0, 0, 1, 1]
    for h in range(4):
        assert torch.equal(_pairs(ex2, h, idx2.block), index_keep_mask(idx2, 0, h))


def test_second_request_of_a_batch() -> None:
    lay_a, lay_b = video_layout(frames=4), video_layout(frames=2, text_before=5, text_after=50)
    reqs = []
    for lay, prefix in ((lay_a, 0), (lay_b, 29)):
        n_k = lay.num_tokens
        reqs.append(group_selections("grid", n_k - prefix, n_k, hkv=HKV, g=G, seed=6, layout=lay))
    idx = index_from_selections(reqs, num_q_heads=HQ, num_kv_heads=HKV)
    for r in range(2):
        ex = index_to_block_mask(idx, request=r)
        assert ex.block_mask.shape[2:] == (idx.seqlens_q[r], idx.seqlens_k[r])
        for h in range(HQ):
            assert torch.equal(_pairs(ex, h, idx.block), index_keep_mask(idx, r, h // G)), f"request {r} head {h}"


def test_columns_refused_or_widened() -> None:
    idx, sels = _index("vs", 0)
    with pytest.raises(ValueError, match="single key columns"):
        index_to_block_mask(idx)
    ex = index_to_block_mask(idx, columns="widen")
    assert ex.widened_tiles > 0
    for h in range(HQ):
        kept = keep_mask(sels[h // G])
        got = _pairs(ex, h, idx.block)
        assert bool((got | ~kept).all()), "widened export must keep a superset"


def test_bad_arguments() -> None:
    idx, _ = _index("blocks", 0)
    with pytest.raises(ValueError, match="request 1"):
        index_to_block_mask(idx, request=1)
    with pytest.raises(ValueError, match="slot 5"):
        index_to_block_mask(idx, slot=5)
    ex = index_to_block_mask(idx)
    q = torch.randn(10, HQ, D)
    with pytest.raises(ValueError, match="expected q"):
        flex_permute(ex, q, q, q)


def test_permute_roundtrip() -> None:
    idx, _ = _index("grid", 37)
    ex = index_to_block_mask(idx)
    n_q, n_k = idx.seqlens_q[0], idx.seqlens_k[0]
    q, k = torch.randn(n_q, HQ, D), torch.randn(n_k, HKV, D)
    qf, kf, _ = flex_permute(ex, q, k, k)
    assert qf.shape == (1, HQ, n_q, D) and kf.shape == (1, HKV, n_k, D)
    assert torch.equal(flex_unpermute(ex, qf), q)
    s = 0
    ko = idx.k_order[s].long()
    assert torch.equal(kf[0, 0], k[ko, 0])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "prefix"), [("grid", 0), ("grid", 37), ("ashape", 37), ("blocks", 0)], ids=lambda x: str(x)
)
def test_compiled_flex_on_cpu_matches_reference(kind: str, prefix: int) -> None:
    idx, sels = _index(kind, prefix, seed=3)
    n_q, n_k = idx.seqlens_q[0], idx.seqlens_k[0]
    g = torch.Generator().manual_seed(7)
    q = torch.randn(n_q, HQ, D, generator=g)
    k = torch.randn(n_k, HKV, D, generator=g)
    v = torch.randn(n_k, HKV, D, generator=g)
    ex = index_to_block_mask(idx, trim=False)  # Inductor's CPU template needs full-width lists
    o = flex_sparse_attention(q, k, v, ex)
    ref = sparse_attention_reference(q, k, v, [sels[h // G] for h in range(HQ)])
    dense = sparse_attention_reference(q, k, v, [None] * HQ)
    assert not o.isnan().any()
    err = float((o - ref).norm() / ref.norm())
    assert err < 1e-5, err
    assert float((o - dense).norm() / dense.norm()) > 1e-2  # the sparsity was applied (eager would be dense)


@pytest.mark.slow
def test_compiled_flex_without_gqa_on_cpu() -> None:
    """Per-query-head Grid slots with different phases: one key row per query head, enable_gqa=False."""
    layout = video_layout(frames=3)
    n_k = layout.num_tokens
    per_head = [selection("grid", n_k, n_k, seed=h, layout=layout, phase=h) for h in range(4)]
    idx = index_from_selections([per_head], num_q_heads=4, num_kv_heads=2)
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(n_k, h, D, generator=g) for h in (4, 2, 2))
    ex = index_to_block_mask(idx, trim=False)
    assert not ex.gqa
    o = flex_sparse_attention(q, k, v, ex)
    ref = sparse_attention_reference(q, k, v, per_head)
    assert float((o - ref).norm() / ref.norm()) < 1e-5
