"""Reference attention against torch SDPA with the same boolean mask, GQA, sampled rows, and input validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmi_core import (
    AShape,
    VerticalSlash,
    ashape_selection,
    dense_attention_reference,
    keep_mask,
    output_error,
    sparse_attention_reference,
    union_selections,
    vertical_slash_selection,
)

N_Q, N_K, HKV, BLOCK = 45, 77, 2, 16  # awkward sizes: prefix 32, neither n_q nor n_k a multiple of the block


def sdpa(q, k, v, masks):
    """SDPA on [1, Hq, n, D] with one bool mask per query head (True = attend); k/v expanded to the q heads."""
    g = q.shape[1] // k.shape[1]
    kx, vx = (t.repeat_interleave(g, dim=1).transpose(0, 1)[None] for t in (k, v))
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], kx, vx, attn_mask=torch.stack(masks)[None])
    return o[0].transpose(0, 1)


def head_selections(hq: int, group_size: int):
    """Per query head: alternating A-shape and vertical-slash; the heads of KV group 1 execute together (union)."""
    cfg_a = AShape(sink=16, local=16, block=BLOCK)
    sels = []
    for h in range(hq):
        if h % 2:
            cfg = VerticalSlash(sink=3, local=1, block=BLOCK)
            sels.append(vertical_slash_selection(N_Q, N_K, cfg, torch.tensor([5 + h, 40]), torch.tensor([17 + h])))
        else:
            sels.append(ashape_selection(N_Q, N_K, cfg_a))
    group = union_selections(sels[group_size : 2 * group_size])
    return sels[:group_size] + [group] * group_size


@pytest.mark.parametrize("head_dim", [64, 80, 128], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("ratio", [1, 4, 7], ids=lambda r: f"gqa{r}")
def test_sparse_reference_equals_sdpa_with_the_keep_mask(ratio, head_dim):
    hq = HKV * ratio
    q, k, v = torch.randn(N_Q, hq, head_dim), torch.randn(N_K, HKV, head_dim), torch.randn(N_K, HKV, head_dim)
    sels = head_selections(hq, ratio)
    out = sparse_attention_reference(q, k, v, sels)
    want = sdpa(q, k, v, [keep_mask(s) for s in sels])
    assert out.shape == (N_Q, hq, head_dim) and out.dtype == torch.float32
    assert float(output_error(out, want)) <= 1e-5
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [1, 4, 7], ids=lambda r: f"gqa{r}")
def test_dense_reference_equals_causal_sdpa_with_a_prefix(ratio):
    hq = HKV * ratio
    q, k, v = torch.randn(N_Q, hq, 80), torch.randn(N_K, HKV, 80), torch.randn(N_K, HKV, 80)
    causal = torch.arange(N_K)[None, :] <= (torch.arange(N_Q) + N_K - N_Q)[:, None]
    out = dense_attention_reference(q, k, v)
    assert float(output_error(out, sdpa(q, k, v, [causal] * hq))) <= 1e-5


def test_scale_rows_and_low_precision():
    q, k, v = torch.randn(N_Q, 4, 64), torch.randn(N_K, 2, 64), torch.randn(N_K, 2, 64)
    full = dense_attention_reference(q, k, v, scale=0.3)
    rows = torch.tensor([0, 7, 44])
    torch.testing.assert_close(dense_attention_reference(q, k, v, scale=0.3, rows=rows), full[rows])
    half = dense_attention_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=0.3)
    assert half.dtype == torch.bfloat16
    assert float(output_error(half, full)) < 1e-2  # bf16 inputs, fp32 accumulation


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((N_Q, 64), (N_K, 2, 64), (N_K, 2, 64)), "must be 3-D token-major"),
        (((N_Q, 4, 64), (N_K, 2, 64), (N_K, 1, 64)), "v shape .* differs from k shape"),
        (((N_Q, 4, 64), (N_K, 2, 80), (N_K, 2, 80)), "q head_dim 64 differs from k head_dim 80"),
        (((N_Q, 5, 64), (N_K, 2, 64), (N_K, 2, 64)), "5 query heads are not a multiple of 2 kv heads"),
        (((N_K + 1, 4, 64), (N_K, 2, 64), (N_K, 2, 64)), "queries must be the last n_q of the keys"),
    ],
    ids=["q_2d", "v_shape", "head_dim", "gqa_ratio", "more_queries"],
)
def test_bad_qkv_shapes(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        dense_attention_reference(q, k, v)


def test_bad_qkv_dtypes_devices_and_selections():
    q, k, v = torch.randn(N_Q, 4, 64), torch.randn(N_K, 2, 64), torch.randn(N_K, 2, 64)
    with pytest.raises(ValueError, match="dtypes differ"):
        dense_attention_reference(q.half(), k, v)
    with pytest.raises(ValueError, match="must be floating point"):
        dense_attention_reference(q.int(), k.int(), v.int())
    with pytest.raises(ValueError, match="devices differ"):
        dense_attention_reference(q.to("meta"), k, v)
    with pytest.raises(ValueError, match="3 selections for 4 query heads"):
        sparse_attention_reference(q, k, v, [None] * 3)
    other = ashape_selection(N_Q - 1, N_K, AShape(block=16))
    with pytest.raises(ValueError, match=r"selection of head 0 is for \(n_q, n_k\)=\(44, 77\)"):
        sparse_attention_reference(q, k, v, [other] + [None] * 3)
    with pytest.raises(ValueError, match="rows must be query-row ids"):
        dense_attention_reference(q, k, v, rows=torch.tensor([-1]))
