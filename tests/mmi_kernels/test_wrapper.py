"""SparsePrefillWrapper / sparse_prefill: estimation in the loop vs mmi_core.mmi_attention_reference."""

from __future__ import annotations

import os

import pytest
import torch
from conftest_kernels import LAYOUTS, mixed_head_configs

from mmi_core import (
    HeadConfigs,
    ModalityLayout,
    dense_attention_reference,
    mmi_attention_reference,
    output_error,
)
from mmi_kernels import SparsePrefillWrapper, sparse_prefill

# two video layouts (sparse) and a short text-only one (dense)
BATCH = [LAYOUTS["text_video_text"], LAYOUTS["two_videos"], ModalityLayout.text(40)]


def _inputs(layouts, prefixes, hq, hkv, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = [torch.randn(lay.num_tokens - p, hq, d, generator=g) for lay, p in zip(layouts, prefixes, strict=True)]
    ks = [torch.randn(lay.num_tokens, hkv, d, generator=g) for lay in layouts]
    vs = [torch.randn(lay.num_tokens, hkv, d, generator=g) for lay in layouts]
    return qs, ks, vs


def _expected(qs, ks, vs, layouts, hc, wrapper_reasons):
    out = []
    for q, k, v, lay, reason in zip(qs, ks, vs, layouts, wrapper_reasons, strict=True):
        if reason == "sparse":
            out.append(mmi_attention_reference(q, k, v, lay, hc, 0))
        else:
            out.append(dense_attention_reference(q, k, v))
    return torch.cat(out)


@pytest.mark.parametrize("paged", [False, True], ids=["packed", "paged"])
def test_wrapper_batch_matches_reference(paged, monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the PyTorch execution of the index: fast on CPU
    hq, hkv, d = 8, 2, 16
    prefixes = [0, 30, 0]
    qs, ks, vs = _inputs(BATCH, prefixes, hq, hkv, d)
    hc = mixed_head_configs(hq, hkv)
    w = SparsePrefillWrapper(hc, min_tokens=64)
    q = torch.cat(qs)
    if paged:
        total = sum(k.shape[0] for k in ks)
        slots = torch.randperm(total + 7, generator=torch.Generator().manual_seed(1))[:total]
        k_cache = torch.zeros(total + 7, hkv, d)
        v_cache = torch.zeros(total + 7, hkv, d)
        pt = torch.zeros(len(ks), max(k.shape[0] for k in ks), dtype=torch.int32)
        at = 0
        for r, (k, v) in enumerate(zip(ks, vs, strict=True)):
            s = slots[at : at + k.shape[0]]
            k_cache[s], v_cache[s] = k, v
            pt[r, : k.shape[0]] = s.int()
            at += k.shape[0]
        plan = w.plan(BATCH, q_lens=[x.shape[0] for x in qs], page_table=pt)
        o = w.run(q, None, None, 0, k_cache=k_cache, v_cache=v_cache)
    else:
        plan = w.plan(BATCH, q_lens=[x.shape[0] for x in qs])
        o = w.run(q, torch.cat(ks), torch.cat(vs), 0)
    assert plan.reasons == ("sparse", "sparse", "short")
    ref = _expected(qs, ks, vs, BATCH, hc, plan.reasons)
    assert output_error(o, ref) < 1e-5
    assert w.counts["sparse"] == 2 and w.counts["dense:short"] == 1


def test_wrapper_errors() -> None:
    hc = mixed_head_configs(8, 2)
    w = SparsePrefillWrapper(hc)
    with pytest.raises(RuntimeError, match="before plan"):
        w.run(torch.zeros(1, 8, 16), torch.zeros(1, 2, 16), torch.zeros(1, 2, 16), 0)
    with pytest.raises(ValueError, match="q_len"):
        w.plan(BATCH[:1], q_lens=[10_000])
    w.plan(BATCH[:1])
    with pytest.raises(ValueError, match="q must be"):
        w.run(torch.zeros(3, 8, 16), torch.zeros(3, 2, 16), torch.zeros(3, 2, 16), 0)
    with pytest.raises(ValueError, match="layer"):
        w.run(torch.zeros(1, 8, 16), torch.zeros(1, 2, 16), torch.zeros(1, 2, 16), 5)


@pytest.mark.interpret
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (make test sets it)")
def test_sparse_prefill_triton_matches_reference() -> None:
    hq, hkv, d = 8, 2, 16
    lay = BATCH[0]
    qs, ks, vs = _inputs([lay], [20], hq, hkv, d, seed=3)
    hc: HeadConfigs = mixed_head_configs(hq, hkv)
    o = sparse_prefill(qs[0], ks[0], vs[0], lay, hc, 0)
    ref = mmi_attention_reference(qs[0], ks[0], vs[0], lay, hc, 0)
    assert not torch.isnan(o).any()
    assert output_error(o, ref) < 1e-5
