"""FlashInfer BSR folding, checked exactly on CPU: the pairs FlashInfer's BlockSparseAttentionWrapper would keep for
the folded BSR (its causal rule or the explicit mask, `bsr_attention_reference`'s semantics) equal mmi_core.keep_mask,
and attention through the fold equals sparse_attention_reference. The real wrapper runs only on a GPU."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import group_selections, selection, video_layout

from mmi_core import keep_mask, sparse_attention_reference
from mmi_kernels import (
    FlashInferBlockSparse,
    bsr_attention_reference,
    flashinfer_available,
    index_from_selections,
    index_keep_mask,
    index_to_flashinfer_bsr,
)

HQ, HKV, G, D = 6, 2, 3, 32


def _index(kind: str, prefix: int, seed: int = 1, frames: int = 5):
    layout = video_layout(frames=frames)
    n_k = layout.num_tokens
    sels = group_selections(kind, n_k - prefix, n_k, hkv=HKV, g=G, seed=seed, layout=layout)
    return index_from_selections([sels], num_q_heads=HQ, num_kv_heads=HKV), sels


def _folded_pairs(bsr) -> torch.Tensor:
    """bool [M, N]: the (folded query row, folded key row) pairs FlashInfer keeps for ``bsr``."""
    m = torch.zeros(bsr.M, bsr.N, dtype=torch.bool)
    ptr, ind = bsr.indptr.long().tolist(), bsr.indices.long()
    for i in range(len(ptr) - 1):
        a, z = ptr[i], ptr[i + 1]
        keys = (ind[a:z, None] * bsr.C + torch.arange(bsr.C)[None, :]).reshape(-1)
        if bsr.causal:
            n = (z - a) * bsr.C
            allowed = torch.arange(n)[None, :] <= torch.arange(bsr.R)[:, None] + n - bsr.R
        else:
            allowed = bsr.mask[a:z].permute(1, 0, 2).reshape(bsr.R, -1)
        m[i * bsr.R : (i + 1) * bsr.R, keys] = allowed
    return m


def _unfolded(bsr, pairs: torch.Tensor, unit: int, tq: int, tk: int) -> torch.Tensor:
    """bool [TQ, TK] in packed original rows, for one unit."""
    rq = bsr.q_rows.shape[1]
    rk = bsr.k_rows.shape[1]
    sub = pairs[unit * rq : (unit + 1) * rq, unit * rk : (unit + 1) * rk]
    qr, kr = bsr.q_rows[unit], bsr.k_rows[unit]
    out = torch.zeros(tq, tk, dtype=torch.bool)
    qok, kok = qr >= 0, kr >= 0
    assert not sub[qok][:, ~kok].any(), "padding keys must never be kept by a real row (padding rows are dropped)"
    out[qr[qok][:, None], kr[kok][None, :]] = sub[qok][:, kok]
    return out


def _check_format(bsr) -> None:
    assert bsr.indptr.dtype == torch.int32 and bsr.indices.dtype == torch.int32
    assert bsr.R == bsr.C and bsr.M % bsr.R == 0 and bsr.N % bsr.C == 0 and bsr.num_kv_heads == 1
    assert bsr.indptr.numel() == bsr.M // bsr.R + 1 and int(bsr.indptr[-1]) == bsr.indices.numel()
    assert int(bsr.indices.max()) < bsr.N // bsr.C
    ptr = bsr.indptr.long().tolist()
    for i in range(len(ptr) - 1):
        row = bsr.indices[ptr[i] : ptr[i + 1]]
        assert row.numel() >= 1 and bool((row[1:] > row[:-1]).all()), f"row {i} must be strictly ascending"
    assert (bsr.mask is None) == bsr.causal


@pytest.mark.parametrize("kind", ["grid", "blocks", "ashape"])
@pytest.mark.parametrize("prefix", [0, 32, 37], ids=["no_prefix", "prefix32", "prefix37"])
def test_bsr_pairs_equal_keep_mask(kind: str, prefix: int) -> None:
    idx, sels = _index(kind, prefix)
    bsr = index_to_flashinfer_bsr(idx)
    _check_format(bsr)
    assert bsr.num_qo_heads == G and bsr.unit_heads.tolist() == [[0, 1, 2], [3, 4, 5]]
    # identity orders with a block-aligned prefix use FlashInfer's own causal mode (diagonal block last)
    assert bsr.causal == (kind != "grid" and prefix % idx.block == 0)
    pairs = _folded_pairs(bsr)
    n_q, n_k = idx.seqlens_q[0], idx.seqlens_k[0]
    for u in range(HKV):
        assert torch.equal(_unfolded(bsr, pairs, u, n_q, n_k), keep_mask(sels[u])), f"unit {u}"


@pytest.mark.parametrize("n_q", [1, 3, 17])
def test_short_query_chunks_over_a_block_aligned_cache(n_q: int) -> None:
    """n_k a multiple of the block and a few queries: the last query block's own key tile may be fully causal (one
    row at the end of a complete block); FlashInfer's bottom-right causal rule would cut it, so it must not be used
    unless exact."""
    layout = video_layout(text_after=17)
    n_k = layout.num_tokens
    assert n_k % 16 == 0
    sels = group_selections("blocks", n_q, n_k, hkv=HKV, g=G, seed=4, layout=layout)
    idx = index_from_selections([sels], num_q_heads=HQ, num_kv_heads=HKV)
    bsr = index_to_flashinfer_bsr(idx)
    _check_format(bsr)
    pairs = _folded_pairs(bsr)
    for u in range(HKV):
        assert torch.equal(_unfolded(bsr, pairs, u, n_q, n_k), keep_mask(sels[u])), f"unit {u}"


def test_two_requests_and_mixed_slots() -> None:
    """Two requests (one with a prefix); slots of mixed size (a GQA group together, the other per query head): the
    fold uses one unit per query head."""
    lay_a, lay_b = video_layout(frames=4), video_layout(frames=2, text_before=5, text_after=50)
    reqs = []
    for lay, prefix in ((lay_a, 0), (lay_b, 29)):
        n_k = lay.num_tokens
        n_q = n_k - prefix
        grp = group_selections("ashape", n_q, n_k, hkv=1, g=2, seed=3)[0]
        reqs.append([grp] + [selection("grid", n_q, n_k, seed=h, layout=lay, phase=h) for h in range(2)])
    idx = index_from_selections(reqs, num_q_heads=4, num_kv_heads=2, slot_heads=[(0, 2), (2, 1), (3, 1)])
    bsr = index_to_flashinfer_bsr(idx)
    _check_format(bsr)
    assert bsr.num_qo_heads == 1 and bsr.unit_slot.tolist() == [0, 0, 1, 2] and not bsr.causal
    pairs = _folded_pairs(bsr)
    tq, tk = sum(idx.seqlens_q), sum(idx.seqlens_k)
    for u in range(4):
        got = _unfolded(bsr, pairs, u, tq, tk)
        s = int(bsr.unit_slot[u])
        for r in range(2):
            q0, q1 = int(idx.cu_seqlens_q[r]), int(idx.cu_seqlens_q[r + 1])
            k0, k1 = int(idx.cu_seqlens_k[r]), int(idx.cu_seqlens_k[r + 1])
            assert torch.equal(got[q0:q1, k0:k1], index_keep_mask(idx, r, s)), f"unit {u} request {r}"
            assert not got[q0:q1, :k0].any() and not got[q0:q1, k1:].any(), "no pair across requests"


@pytest.mark.parametrize(("kind", "prefix"), [("grid", 37), ("blocks", 0), ("ashape", 32)])
def test_fold_attention_matches_reference(kind: str, prefix: int) -> None:
    idx, sels = _index(kind, prefix, seed=2, frames=3)
    n_q, n_k = idx.seqlens_q[0], idx.seqlens_k[0]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(n_q, HQ, D, generator=g)
    k = torch.randn(n_k, HKV, D, generator=g)
    v = torch.randn(n_k, HKV, D, generator=g)
    bsr = index_to_flashinfer_bsr(idx)
    qf, kf, vf = bsr.fold(q, k, v)
    assert qf.shape == (bsr.M, G, D) and kf.shape == (bsr.N, 1, D)
    out = bsr.unfold(bsr_attention_reference(bsr, qf, kf, vf), torch.full_like(q, float("nan")))
    ref = sparse_attention_reference(q, k, v, [sels[h // G] for h in range(HQ)])
    assert not out.isnan().any()
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_columns_refused_or_widened() -> None:
    idx, sels = _index("vs", 0)
    with pytest.raises(ValueError, match="single key columns"):
        index_to_flashinfer_bsr(idx)
    bsr = index_to_flashinfer_bsr(idx, columns="widen")
    _check_format(bsr)
    assert bsr.widened_tiles > 0
    pairs = _folded_pairs(bsr)
    n_q, n_k = idx.seqlens_q[0], idx.seqlens_k[0]
    extra = 0
    for u in range(HKV):
        got, kept = _unfolded(bsr, pairs, u, n_q, n_k), keep_mask(sels[u])
        assert bool((got | ~kept).all()), f"unit {u}: widening must keep a superset"
        extra += int((got & ~kept).sum())
    assert extra > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_backend_refuses_without_cuda() -> None:
    ok, why = flashinfer_available()
    assert not ok and why
    with pytest.raises(RuntimeError, match="FlashInfer backend unavailable"):
        FlashInferBlockSparse()


@pytest.mark.gpu
@pytest.mark.skipif(not flashinfer_available()[0], reason="needs flashinfer and CUDA")
@pytest.mark.parametrize(("kind", "prefix"), [("grid", 37), ("blocks", 0)])
def test_flashinfer_matches_reference_on_gpu(kind: str, prefix: int) -> None:
    idx, sels = _index(kind, prefix, seed=2)
    idx = idx.to("cuda")
    n_q, n_k = idx.seqlens_q[0], idx.seqlens_k[0]
    q = torch.randn(n_q, HQ, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n_k, HKV, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n_k, HKV, 64, device="cuda", dtype=torch.bfloat16)
    fb = FlashInferBlockSparse()
    fb.plan(idx, head_dim=64, dtype=torch.bfloat16)
    out = fb.run(q, k, v, out=torch.full_like(q, float("nan")))
    ref = sparse_attention_reference(
        q.cpu().float(), k.cpu().float(), v.cpu().float(), [sels[h // G] for h in range(HQ)]
    )
    assert not out.isnan().any()
    assert float((out.cpu().float() - ref).norm() / ref.norm()) < 2e-2
