"""Metrics: recall of dense = 1, density of dense = 1, output error, recall on sampled rows, validation."""

from __future__ import annotations

import pytest
import torch

from mmi_core import (
    AShape,
    ashape_selection,
    attention_recall,
    dense_selection,
    density,
    keep_mask,
    output_error,
    sample_rows,
)

N_Q, N_K = 40, 70


@pytest.mark.parametrize("block", [16, 64, 128], ids=lambda b: f"block{b}")
def test_dense_selection_has_recall_and_density_one(block):
    q, k = torch.randn(N_Q, 4, 32), torch.randn(N_K, 2, 32)
    sel = dense_selection(N_Q, N_K, block)
    torch.testing.assert_close(attention_recall(q, k, [sel, None, sel, sel]), torch.ones(4), rtol=0, atol=1e-6)
    assert density(sel) == 1.0
    assert density(None) == 1.0
    assert density(sel, sample_rows(N_Q, 5)) == 1.0


def test_recall_and_density_of_a_sparse_selection_match_a_direct_count():
    q, k = torch.randn(N_Q, 2, 32) * 3, torch.randn(N_K, 1, 32)
    sel = ashape_selection(N_Q, N_K, AShape(sink=16, local=0, block=16))
    keep = keep_mask(sel)
    causal = torch.arange(N_K)[None, :] <= (torch.arange(N_Q) + N_K - N_Q)[:, None]
    assert density(sel) == keep.sum().item() / causal.sum().item() < 1.0
    p = torch.softmax((q[:, 0] @ k[:, 0].T / 32**0.5).masked_fill(~causal, float("-inf")), dim=-1)
    want = (p * keep).sum(-1).mean()
    recall = attention_recall(q, k, [sel, None])
    torch.testing.assert_close(recall[0], want, rtol=1e-5, atol=1e-6)
    assert 0.0 < recall[0] < 1.0 and recall[1] == 1.0
    rows = torch.tensor([3, 39])
    torch.testing.assert_close(
        attention_recall(q, k, [sel, None], rows=rows)[0], (p * keep)[rows].sum(-1).mean(), rtol=1e-5, atol=1e-6
    )


def test_output_error():
    ref = torch.randn(10, 3, 8)
    assert float(output_error(ref, ref)) == 0.0
    torch.testing.assert_close(output_error(ref * 1.1, ref), torch.tensor(0.1), rtol=1e-5, atol=0)
    scaled = ref.clone()
    scaled[:, 1] *= 1.5
    torch.testing.assert_close(output_error(scaled, ref, per_head=True), torch.tensor([0.0, 0.5, 0.0]))
    assert output_error(ref.bfloat16(), ref).dtype == torch.float32
    with pytest.raises(ValueError, match="output shapes differ"):
        output_error(ref, ref[:5])


def test_sample_rows():
    rows = sample_rows(100, 10, seed=3)
    assert rows.numel() == 10 and rows[-1] == 99 and torch.equal(rows, rows.unique())
    assert torch.equal(sample_rows(100, 10, seed=3), rows)
    assert torch.equal(sample_rows(5, 10), torch.arange(5))
    with pytest.raises(ValueError, match="count >= 1"):
        sample_rows(5, 0)


def test_recall_validation():
    q, k = torch.randn(N_Q, 2, 32), torch.randn(N_K, 1, 32)
    with pytest.raises(ValueError, match="1 selections for 2 query heads"):
        attention_recall(q, k, [None])
    with pytest.raises(ValueError, match="selection of head 1 is for"):
        attention_recall(q, k, [None, dense_selection(N_Q, N_Q)])
