"""The Triton sparse prefill kernel against mmi_core.sparse_attention_reference on identical selections.

Runs under TRITON_INTERPRET=1 without a GPU (conftest.py). Outputs are poisoned with NaN before every launch.
Tolerances: fp32 relative RMS error <= 1e-5 against an fp64 reference; bf16/fp16 at most 2x the error of the same
reference computed in that dtype (both against fp64).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import group_selections, selection, video_layout

from mmi_core import (
    AShape,
    BlockSparse,
    Selection,
    ashape_selection,
    block_sparse_selection,
    sparse_attention_reference,
)
from mmi_kernels import KernelConfig, index_from_selections, sparse_attention

pytestmark = [pytest.mark.interpret, pytest.mark.filterwarnings("ignore::DeprecationWarning:triton.*")]


def _err(o: torch.Tensor, ref: torch.Tensor) -> float:
    return float((o.double() - ref.double()).norm() / ref.double().norm())


def _reference(q, k, v, per_head: list[Selection], dtype: torch.dtype) -> torch.Tensor:
    return sparse_attention_reference(q.to(dtype), k.to(dtype), v.to(dtype), per_head, compute_dtype=dtype)


# Inputs are built on the CPU; where CUDA exists the kernel is compiled (no interpreter), so run it there.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _run(q, k, v, idx, cfg=None, **kw) -> torch.Tensor:
    """Launch on DEVICE with a NaN-poisoned output; return the output on the CPU."""
    dev = lambda t: None if t is None else t.to(DEVICE)
    q = q.to(DEVICE)
    out = torch.full_like(q, float("nan"))
    kw = {name: dev(t) for name, t in kw.items()}
    res = sparse_attention(q, dev(k), dev(v), idx.to(DEVICE), out=out, config=cfg, **kw)
    assert res is out
    assert not out.isnan().any(), "unwritten or NaN output rows"
    return out.cpu()


CASES = [
    # (kind, D, Hq, Hkv, prefix, frames)
    pytest.param("grid", 64, 4, 1, 0, 5, id="grid-d64-gqa4"),
    pytest.param("grid", 80, 7, 1, 23, 3, id="grid-d80-gqa7-prefix"),
    pytest.param("grid", 32, 2, 2, 0, 1, id="grid-one-frame-gqa1"),
    pytest.param("vs", 80, 4, 1, 37, 5, id="vs-d80-gqa4-prefix"),
    pytest.param("blocks", 64, 2, 2, 0, 5, id="blocks-gqa1"),
    pytest.param("ashape", 128, 4, 2, 11, 3, id="ashape-d128-gqa2-prefix"),
]


@pytest.mark.parametrize(("kind", "d", "hq", "hkv", "prefix", "frames"), CASES)
def test_fp32_matches_reference(kind: str, d: int, hq: int, hkv: int, prefix: int, frames: int) -> None:
    layout = video_layout(frames=frames)
    n_k = layout.num_tokens
    n_q = n_k - prefix
    g = hq // hkv
    sels = group_selections(kind, n_q, n_k, hkv, g, seed=2, layout=layout)
    idx = index_from_selections([sels], num_q_heads=hq, num_kv_heads=hkv)
    q, k, v = torch.randn(n_q, hq, d), torch.randn(n_k, hkv, d), torch.randn(n_k, hkv, d)
    out = _run(q, k, v, idx)
    ref = _reference(q, k, v, [sels[h // g] for h in range(hq)], torch.float64)
    assert _err(out, ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_within_twice_reference_error(dtype: torch.dtype) -> None:
    layout = video_layout(frames=4)
    n_k = layout.num_tokens
    n_q = n_k - 19
    sels = group_selections("grid", n_q, n_k, 2, 2, seed=3, layout=layout)
    idx = index_from_selections([sels], num_q_heads=4, num_kv_heads=2)
    q, k, v = (torch.randn(n, h, 64).to(dtype) for n, h in ((n_q, 4), (n_k, 2), (n_k, 2)))
    per_head = [sels[h // 2] for h in range(4)]
    out = _run(q, k, v, idx)
    ref64 = _reference(q, k, v, per_head, torch.float64)
    ref_low = _reference(q, k, v, per_head, dtype)
    assert _err(out, ref64) <= 2 * _err(ref_low, ref64)


def test_varlen_two_requests_paged_shuffled_and_query_head_slots() -> None:
    """Two requests of different lengths and prefixes in one launch; K/V read from a shuffled pool through a
    page table; one slot per query head (each with its own grid phase)."""
    hq, hkv, d = 4, 2, 32
    lays = [video_layout(frames=3), video_layout(frames=2, text_before=9, text_after=40)]
    prefixes = [0, 31]
    reqs, qs, ks, vs = [], [], [], []
    for lay, p in zip(lays, prefixes, strict=True):
        n_k = lay.num_tokens
        reqs.append([selection("grid", n_k - p, n_k, seed=h, layout=lay, phase=h) for h in range(hq)])
        qs.append(torch.randn(n_k - p, hq, d))
        ks.append(torch.randn(n_k, hkv, d))
        vs.append(torch.randn(n_k, hkv, d))
    idx = index_from_selections(reqs, num_q_heads=hq, num_kv_heads=hkv)
    q = torch.cat(qs)
    # the pool: every request's keys at shuffled slots among unused garbage rows
    n_keys = sum(k.shape[0] for k in ks)
    pool = n_keys + 57
    slots = torch.randperm(pool)[:n_keys]
    k_cache, v_cache = torch.randn(pool, hkv, d) * 100, torch.randn(pool, hkv, d) * 100
    k_cache[slots], v_cache[slots] = torch.cat(ks), torch.cat(vs)
    max_len = max(k.shape[0] for k in ks) + 5
    page_table = torch.full((2, max_len), -7, dtype=torch.int32)
    page_table[0, : ks[0].shape[0]] = slots[: ks[0].shape[0]].to(torch.int32)
    page_table[1, : ks[1].shape[0]] = slots[ks[0].shape[0] :].to(torch.int32)
    out = _run(q, None, None, idx, k_cache=k_cache, v_cache=v_cache, page_table=page_table)
    packed = _run(q, torch.cat(ks), torch.cat(vs), idx)
    assert torch.equal(out, packed)
    start = 0
    for r in range(2):
        n_q = qs[r].shape[0]
        ref = _reference(qs[r], ks[r], vs[r], reqs[r], torch.float64)
        assert _err(out[start : start + n_q], ref) <= 1e-5, f"request {r}"
        start += n_q


@pytest.mark.parametrize(
    "cfg",
    [KernelConfig(heads_per_tile=2, block_n=32), KernelConfig(heads_per_tile=4, block_n=16)],
    ids=["packed2-pairs", "packed4"],
)
def test_group_packed_along_m(cfg: KernelConfig) -> None:
    """The GQA group stacked along M (7 heads: the last tile is partly empty) and key blocks taken in pairs."""
    layout = video_layout(frames=3)
    n_k = layout.num_tokens
    sels = group_selections("vs", n_k - 5, n_k, 1, 7, seed=4)
    idx = index_from_selections([sels], num_q_heads=7, num_kv_heads=1)
    q, k, v = torch.randn(n_k - 5, 7, 64), torch.randn(n_k, 1, 64), torch.randn(n_k, 1, 64)
    out = _run(q, k, v, idx, cfg)
    assert _err(out, _reference(q, k, v, [sels[0]] * 7, torch.float64)) <= 1e-5


@pytest.mark.parametrize("paged", [False, True], ids=["packed", "paged"])
def test_key_block_in_two_steps(paged: bool) -> None:
    """Index block 32 computed 16 keys per step (block_n < block), identity key order, packed or paged keys."""
    n_k, n_q, d = 150, 131, 64
    top = torch.randint(-1, 5, (-(-n_q // 32), 2))
    sels = [
        block_sparse_selection(n_q, n_k, BlockSparse(top_k=2, block=32), top),
        ashape_selection(n_q, n_k, AShape(sink=20, local=30, block=32)),
    ]
    idx = index_from_selections([sels], num_q_heads=4, num_kv_heads=2)
    assert idx.keys_identity
    q, k, v = torch.randn(n_q, 4, d), torch.randn(n_k, 2, d), torch.randn(n_k, 2, d)
    kw = {}
    if paged:
        slots = torch.randperm(n_k + 9)[:n_k]
        kc, vc = torch.randn(n_k + 9, 2, d), torch.randn(n_k + 9, 2, d)
        kc[slots], vc[slots] = k, v
        kw = {"k_cache": kc, "v_cache": vc, "page_table": slots[None, :].to(torch.int32)}
    out = _run(q, None if paged else k, None if paged else v, idx, KernelConfig(block_n=16), **kw)
    assert _err(out, _reference(q, k, v, [sels[h // 2] for h in range(4)], torch.float64)) <= 1e-5


def test_bad_inputs_name_the_problem() -> None:
    n = 70
    sels = [selection("blocks", n, n, seed=0)]
    idx = index_from_selections([sels], num_q_heads=2, num_kv_heads=1, slot_heads=[(0, 2)])
    q, k, v = torch.randn(n, 2, 32), torch.randn(n, 1, 32), torch.randn(n, 1, 32)
    with pytest.raises(ValueError, match="2 heads but the index was built for 1 KV heads"):
        sparse_attention(q, torch.randn(n, 2, 32), torch.randn(n, 2, 32), idx)
    with pytest.raises(ValueError, match="dtypes differ"):
        sparse_attention(q, k.half(), v.half(), idx)
    with pytest.raises(ValueError, match="tokens but the index"):
        sparse_attention(q[:-1], k, v, idx)
    with pytest.raises(ValueError, match="contiguous in head_dim"):
        sparse_attention(q, k.transpose(0, 2).contiguous().transpose(0, 2), v, idx)
    with pytest.raises(ValueError, match="int32"):
        sparse_attention(q, None, None, idx, k_cache=k, v_cache=v, page_table=torch.zeros(1, n, dtype=torch.int64))
    with pytest.raises(ValueError, match="not both"):
        sparse_attention(q, k, v, idx, k_cache=k, v_cache=v, page_table=torch.zeros(1, n, dtype=torch.int32))
    with pytest.raises(ValueError, match="page_table has"):
        sparse_attention(q, None, None, idx, k_cache=k, v_cache=v, page_table=torch.zeros(1, n - 1, dtype=torch.int32))


@pytest.mark.parametrize("materialize", [True, False], ids=["keys-copied-in-order", "keys-gathered"])
def test_permuted_keys_copied_or_gathered(materialize: bool) -> None:
    """Grid keys (permuted): copied into key order once per call, or gathered row by row in every tile (there with
    the branch-free mask)."""
    layout = video_layout(frames=3)
    n_k = layout.num_tokens
    sels = group_selections("grid", n_k - 8, n_k, 2, 2, seed=6, layout=layout)
    idx = index_from_selections([sels], num_q_heads=4, num_kv_heads=2)
    assert not idx.keys_identity
    q, k, v = torch.randn(n_k - 8, 4, 32), torch.randn(n_k, 2, 32), torch.randn(n_k, 2, 32)
    out = _run(q, k, v, idx, KernelConfig(materialize_keys=materialize, always_mask=not materialize))
    assert _err(out, _reference(q, k, v, [sels[h // 2] for h in range(4)], torch.float64)) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("block", [64, 128])
def test_gpu_bf16_qwen_heads(block: int) -> None:
    """The compiled kernel on a GPU: Qwen2.5-VL-7B heads (28 / 4, D=128), bf16, grid keys with a cached prefix."""
    from mmi_core import Grid, VisualGrid, grid_selection, union_selections
    from mmi_core import ModalityLayout as Layout

    layout = Layout.from_parts(
        [("text", 300), ("video", VisualGrid(frames=8, rows=8, cols=12, row_extra=1)), ("text", 77)]
    )
    n_k = layout.num_tokens
    n_q = n_k - 200
    cfg = Grid(stride="frame", lines=2, block=block)
    tpf = layout.tokens_per_frame
    sels = [
        union_selections([grid_selection(layout, n_q, cfg, tpf, [s, (s + 7 * h + 3) % tpf]) for h in range(7)])
        for s in range(4)
    ]
    idx = index_from_selections([sels], num_q_heads=28, num_kv_heads=4, device="cuda")
    q = torch.randn(n_q, 28, 128, device="cuda").bfloat16()
    k, v = (torch.randn(n_k, 4, 128, device="cuda").bfloat16() for _ in range(2))
    out = _run(q, k, v, idx)
    per_head = [sels[h // 7] for h in range(28)]
    ref64 = _reference(q.cpu(), k.cpu(), v.cpu(), per_head, torch.float64)
    ref_low = _reference(q.cpu(), k.cpu(), v.cpu(), per_head, torch.bfloat16)
    assert _err(out.cpu(), ref64) <= 2 * _err(ref_low, ref64)
