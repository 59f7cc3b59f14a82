"""Grouped last-query statistics (one launch set for several sub-problems of one request) vs one call per group and
vs mmi_core's reference. The Triton kernels run compiled where a GPU is, under the interpreter on a CPU (see
conftest.py); the references run on the CPU."""

from __future__ import annotations

import pytest
import torch

from mmi_core.estimation import grid_key_scores, last_query_scores, vertical_slash_scores
from mmi_kernels.last_query import last_query_stats_groups, last_query_stats_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # where the kernels run (the conftest's rule)


def assert_stats_close(got, vertical, slash, log_mean) -> None:
    """The tolerances of test_keep_planner's single-call test: fp32 rounding only."""
    torch.testing.assert_close(got.vertical.cpu(), vertical.cpu(), rtol=1e-5, atol=1e-6)
    if slash is None:
        assert got.slash is None
    else:
        torch.testing.assert_close(got.slash.cpu(), slash.cpu(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.log_mean.cpu(), log_mean.cpu(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("need_slash", [True, False], ids=["slash", "no_slash"])
@pytest.mark.parametrize(
    "n_q,n_k,d,dtype,groups",
    [
        (200, 300, 32, torch.float32, [(300, 64)]),
        # ends far apart (one well below n_k), last_q above the group's rows (130 - 100 = 30 < 64) and last_q = 1
        (200, 300, 32, torch.float32, [(300, 16), (210, 1), (130, 64)]),
        (250, 260, 16, torch.bfloat16, [(260, 64), (75, 5), (190, 1)]),
        # no prefix; a group of one query row; the longest group not first
        (150, 150, 16, torch.float32, [(1, 8), (97, 20), (150, 33)]),
        (40, 290, 32, torch.bfloat16, [(251, 1), (290, 64)]),  # one row of a group, ends on no tile edge
    ],
    ids=["one_group", "three_groups", "bf16_three", "no_prefix", "bf16_short_q"],
)
def test_groups_match_single_calls_and_mmi_core(n_q, n_k, d, dtype, groups, need_slash) -> None:
    hq, hkv = 4, 2
    g = torch.Generator().manual_seed(n_k * 7 + n_q)
    q = torch.randn(n_q, hq, d, generator=g).to(dtype)
    k = torch.randn(n_k, hkv, d, generator=g).to(dtype)
    prefix = n_k - n_q
    got = last_query_stats_groups(q.to(DEV), k.to(DEV), groups, need_slash=need_slash)
    assert got.vertical.shape == (len(groups), hq, max(end for end, _ in groups))
    for i, (end, last_q) in enumerate(groups):
        st = got.group(i, end)
        for t in (st.vertical, st.log_mean) + ((st.slash,) if need_slash else ()):
            assert t.shape == (hq, end) and t.dtype == torch.float32
        one = last_query_stats_triton(q[: end - prefix].to(DEV), k[:end].to(DEV), last_q, need_slash=need_slash)
        assert_stats_close(st, one.vertical, one.slash, one.log_mean)
        p = last_query_scores(q[: end - prefix], k[:end], last_q)
        v_ref, s_ref = vertical_slash_scores(p)
        assert_stats_close(st, v_ref, s_ref if need_slash else None, grid_key_scores(p))


def test_groups_strided_heads_and_scale() -> None:
    """q and k as views of wider tensors (strided heads and tokens), an explicit scale, small key tiles."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(180, 4 + 2 + 2, 16, generator=g)
    q, k = qkv[60:, :4], qkv[:, 4:6]
    groups = [(180, 12), (100, 64)]
    on_dev = qkv.to(DEV)  # the views taken on the kernels' device, so they stay strided there
    got = last_query_stats_groups(on_dev[60:, :4], on_dev[:, 4:6], groups, scale=0.3, block_n=32)
    for i, (end, last_q) in enumerate(groups):
        st = got.group(i, end)
        p = last_query_scores(q[: end - 60], k[:end], last_q, scale=0.3)
        v_ref, s_ref = vertical_slash_scores(p)
        assert_stats_close(st, v_ref, s_ref, grid_key_scores(p))


def test_groups_needs_per_head() -> None:
    """Per (group, head) needs: what is asked for equals the reference (column and log sums for 1, diagonal sums too
    for 2); a head that needs nothing in one group is still right in another; the diagonal sums of a head that did
    not ask for them stay untouched (zeros), so the kernel really skipped its atomics."""
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(120, 4, 16, generator=g), torch.randn(200, 2, 16, generator=g)
    groups = [(200, 16), (150, 8)]
    needs = [[2, 1, 0, 2], [0, 2, 1, 1]]
    got = last_query_stats_groups(q.to(DEV), k.to(DEV), groups, needs=needs, block_n=32)
    for i, (end, last_q) in enumerate(groups):
        p = last_query_scores(q[: end - 80], k[:end], last_q)
        v_ref, s_ref = vertical_slash_scores(p)
        lm_ref = grid_key_scores(p)
        st = got.group(i, end)
        for h, code in enumerate(needs[i]):
            if code == 0:
                continue
            torch.testing.assert_close(st.vertical[h].cpu(), v_ref[h], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(st.log_mean[h].cpu(), lm_ref[h], rtol=1e-5, atol=1e-4)
            assert st.slash is not None
            if code == 2:
                torch.testing.assert_close(st.slash[h].cpu(), s_ref[h], rtol=1e-5, atol=1e-6)
            else:
                assert not st.slash[h].any()
    with pytest.raises(ValueError, match="needs must hold 4 codes"):
        last_query_stats_groups(q, k, groups, needs=[[1, 1, 1, 1]])
    with pytest.raises(ValueError, match="needs codes"):
        last_query_stats_groups(q, k, groups, needs=[[2, 1, 0, 3], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="needs codes"):
        last_query_stats_groups(q, k, groups, need_slash=False, needs=[[2, 1, 0, 1], [0, 0, 0, 0]])


def test_groups_reject_bad_groups() -> None:
    q = torch.randn(30, 4, 16)
    k = torch.randn(100, 2, 16)  # prefix 70
    with pytest.raises(ValueError, match="end=70 must satisfy prefix=70"):
        last_query_stats_groups(q, k, [(100, 8), (70, 8)])
    with pytest.raises(ValueError, match="end=101"):
        last_query_stats_groups(q, k, [(101, 8)])
    with pytest.raises(ValueError, match="group 1: need last_q >= 1"):
        last_query_stats_groups(q, k, [(100, 8), (90, 0)])
    with pytest.raises(ValueError, match="non-empty"):
        last_query_stats_groups(q, k, [])
    with pytest.raises(ValueError, match="do not fit"):
        last_query_stats_groups(q, k[:, :, :-1], [(100, 8)])
