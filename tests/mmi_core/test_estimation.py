"""Online estimation building blocks against obvious constructions, ties, budgets and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mmi_core import (
    BlockSparse,
    Coverage,
    Grid,
    ModalityLayout,
    VerticalSlash,
    VisualGrid,
    estimate_block_sparse,
    estimate_stride_phase,
    estimate_vertical_slash,
    estimation,
    grid_stride_candidates,
    last_query_scores,
    stable_top,
)
from mmi_core.estimation import block_scores, grid_fold_excess, grid_key_mask, vertical_slash_scores


def _rand(n_q, n_k, hq, hkv, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_q, hq, d, generator=g), torch.randn(n_k, hkv, d, generator=g)


@pytest.mark.parametrize(("n_q", "n_k", "last_q"), [(1, 1, 64), (37, 100, 64), (100, 100, 7), (5, 300, 64)])
def test_last_query_scores_matches_rowwise_softmax(n_q, n_k, last_q):
    q, k = _rand(n_q, n_k, 6, 2)
    p = last_query_scores(q, k, last_q)
    n_last = min(last_q, n_q)  # fewer rows when the sequence is shorter
    assert p.shape == (6, n_last, n_k) and p.dtype == torch.float32
    for h in range(6):
        for i in range(n_last):
            pos = n_k - n_last + i
            want = torch.softmax(q[n_q - n_last + i, h] @ k[: pos + 1, h // 3].T / math.sqrt(16), -1)
            torch.testing.assert_close(p[h, i, : pos + 1], want)
            assert float(p[h, i, pos + 1 :].abs().sum()) == 0.0


def test_last_query_scores_bad_inputs():
    q, k = _rand(4, 10, 2, 1)
    with pytest.raises(ValueError, match="zero query rows"):
        last_query_scores(q[:0], k)
    with pytest.raises(ValueError, match="last_q"):
        last_query_scores(q, k, 0)
    with pytest.raises(ValueError, match="queries"):
        last_query_scores(*_rand(11, 10, 2, 1))
    with pytest.raises(ValueError, match="do not fit"):
        last_query_scores(*_rand(4, 10, 3, 2))


def test_slash_scores_sum_diagonals():
    q, k = _rand(9, 20, 1, 1)
    p = last_query_scores(q, k, 5)
    vert, slash = vertical_slash_scores(p)
    torch.testing.assert_close(vert[0], p[0].sum(0))
    want = torch.zeros(20)
    for i in range(5):
        for j in range(20 - 5 + i + 1):
            want[20 - 5 + i - j] += p[0, i, j]
    torch.testing.assert_close(slash[0], want)


def test_stable_top_breaks_ties_to_lowest_index():
    s = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    keep = stable_top(s, 2)
    assert keep[0].nonzero().flatten().tolist() == [1, 2]
    assert keep[1].nonzero().flatten().tolist() == [0, 1]
    forced = torch.tensor([True, False, True, False, False, False]).expand(2, 6)
    keep = stable_top(s, 2, forced=forced)  # forced entries are excluded from ranking (kept by the caller)
    assert keep[0].nonzero().flatten().tolist() == [1, 4]
    valid = torch.tensor([True, True, False, True, True, True]).expand(2, 6)
    assert stable_top(s, 10, valid=valid).sum(-1).tolist() == [5, 5]  # never more than the rankable entries
    with pytest.raises(ValueError, match="budget"):
        stable_top(s, -1)


@pytest.mark.parametrize("budget", [0, 1, 3, 7, 40])
@pytest.mark.parametrize("seed", [0, 1])
def test_stable_top_equals_sorted_ranking_on_ties(budget: int, seed: int, monkeypatch):
    """Without a coverage `stable_top` cuts at the k-th largest value (topk) instead of sorting rows; it must keep
    exactly the first ``budget`` rankable entries of the order (-score, index): tie-heavy small integer scores,
    random valid/forced masks, budgets from 0 to more than a row."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 4, (3, 5, 33), generator=g).float()
    valid = torch.rand(3, 5, 33, generator=g) < 0.8
    forced = torch.rand(3, 5, 33, generator=g) < 0.2
    keep = stable_top(s, budget, valid=valid, forced=forced)
    monkeypatch.setattr(estimation, "TOPK_MAX", -1)  # the sort path (budgets over TOPK_MAX) ranks the same
    assert torch.equal(stable_top(s, budget, valid=valid, forced=forced), keep)
    want = torch.zeros_like(keep)
    for i in range(3):
        for j in range(5):
            ranked = sorted((-float(s[i, j, c]), c) for c in range(33) if valid[i, j, c] and not forced[i, j, c])
            for _, c in ranked[:budget]:
                want[i, j, c] = True
    assert torch.equal(keep, want)


def test_stable_top_coverage_counts_and_bounds():
    s = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]])
    keep = stable_top(s, 4, coverage=Coverage(threshold=0.8, min_fraction=0.0, max_fraction=1.0))
    assert keep.sum(-1).tolist() == [2, 4]  # 0.5+0.3 reaches 0.8; uniform needs 4 of 5
    keep = stable_top(s, 4, coverage=Coverage(threshold=0.8, min_fraction=0.0, max_fraction=0.5))
    assert keep.sum(-1).tolist() == [2, 2]  # clamped at floor(0.5 * 4)
    keep = stable_top(s, 4, coverage=Coverage(threshold=0.3, min_fraction=0.75, max_fraction=1.0))
    assert keep.sum(-1).tolist() == [3, 3]  # at least ceil(0.75 * 4)
    forced = torch.tensor([True, False, False, False, False]).expand(2, 5)
    keep = stable_top(s, 4, forced=forced, coverage=Coverage(threshold=0.8, min_fraction=0.0))
    assert keep.sum(-1).tolist() == [1, 3]  # forced mass counts towards the target


def test_vertical_slash_estimate_keeps_planted_columns_and_diagonals():
    n = 256
    probs = torch.full((1, 8, n), 1e-4)
    rows = torch.arange(n - 8, n)
    probs[0, :, 100] = 0.3  # a vertical line
    probs[0, torch.arange(8), rows - 40] = 0.2  # a slash at offset 40
    probs[0, :, 3] = 0.5  # inside the sinks: never ranked
    probs = probs.masked_fill(torch.arange(n)[None, None, :] > rows[None, :, None], 0.0)
    cols, offs = estimate_vertical_slash(probs, VerticalSlash(vertical=1, slash=1, sink=4, local=2, block=16))
    assert cols[0].nonzero().flatten().tolist() == [100]
    assert offs[0].nonzero().flatten().tolist() == [40]


def test_block_sparse_matches_pooled_scores():
    q, k = _rand(70, 150, 2, 1, seed=3)
    cfg = BlockSparse(top_k=2, block=16)
    top = estimate_block_sparse(q, k, cfg)
    p = block_scores(q, k, 16)
    nqb, nkb = 5, 10
    assert top.shape[:2] == (2, nqb)
    for h in range(2):
        for qb in range(nqb):
            first = 80 + qb * 16
            last = min(first + 15, 149)
            forced = set(range(first // 16, last // 16 + 1)) | {0}
            ranked = sorted(
                (kb for kb in range(nkb) if kb * 16 <= last and kb not in forced),
                key=lambda kb: (-float(p[h, qb, kb]), kb),
            )
            row = top[h, qb].tolist()  # the kept ids ascending, then -1 padding
            assert row == sorted(ranked[:2]) + [-1] * (len(row) - 2)
            qr = q[qb * 16 : min(qb * 16 + 16, 70), h].mean(0)
            kp = torch.stack([k[kb * 16 : kb * 16 + 16, 0].mean(0) for kb in range(nkb)])
            s = (kp @ qr) / 4.0
            s[torch.arange(nkb) * 16 > last] = float("-inf")
            torch.testing.assert_close(p[h, qb], torch.softmax(s, -1))


@pytest.mark.parametrize("chunk", [1, 50, 150])
def test_block_sparse_in_head_chunks_equals_all_heads(chunk, monkeypatch):
    """Heads are ranked in chunks of about ``_CHUNK_ELEMENTS`` scores (memory at 1M tokens): one head, one and a half
    heads and every head per chunk give the same ids, GQA groups split across chunks included; bf16 inputs pool in
    fp32."""
    import mmi_core.estimation as est

    q, k = _rand(70, 150, 6, 2, seed=4)
    q, k = q.bfloat16(), k.bfloat16()
    cfg = BlockSparse(top_k=3, block=16)
    want = estimate_block_sparse(q, k, cfg)
    monkeypatch.setattr(est, "_CHUNK_ELEMENTS", chunk)  # 5 x 10 = 50 scores per head
    assert torch.equal(estimate_block_sparse(q, k, cfg), want)
    torch.testing.assert_close(est._mean_pool(q, 16), est._mean_pool(q.float(), 16), rtol=0, atol=0)


VG = VisualGrid(frames=12, rows=4, cols=6, frame_prefix=1)  # 25 tokens per frame
LAYOUT = ModalityLayout.from_parts([("text", 13), ("video", VG), ("text", 20)])


def test_stride_candidates():
    assert grid_stride_candidates(LAYOUT, Grid(stride="search")) == [5, 25, 50, 75, 100]
    assert grid_stride_candidates(LAYOUT, Grid(stride="search", max_stride=60)) == [5, 25, 50]
    assert grid_stride_candidates(LAYOUT, Grid(stride="frame")) == [25]
    assert grid_stride_candidates(LAYOUT, Grid(stride=7)) == [7]
    assert grid_stride_candidates(ModalityLayout.text(50), Grid(stride="search", max_stride=5)) == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="needs a video segment"):
        grid_stride_candidates(ModalityLayout.text(50), Grid(stride="frame"))
    with pytest.raises(ValueError, match="max_stride"):
        grid_stride_candidates(LAYOUT, Grid(stride="frame", max_stride=20))
    with pytest.raises(ValueError, match="no stride candidate"):
        grid_stride_candidates(LAYOUT, Grid(stride="search", max_stride=4))
    with pytest.raises(ValueError, match="at least one stride candidate"):
        estimate_stride_phase(torch.zeros(1, 10), torch.ones(10, dtype=torch.bool), [], 1)


def _planted_scores(phase: int, strength: float = 3.0, secondary: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(phase)
    n = LAYOUT.num_tokens
    s = torch.randn(1, n, generator=g) * 0.5
    pos = torch.arange(n)
    s[0, pos % 25 == phase] += strength
    if secondary is not None:
        s[0, pos % 25 == secondary] += strength * 0.5
    return s


@pytest.mark.parametrize("phase", [1, 7, 24])
def test_stride_phase_finds_planted_lines_not_multiples_or_halves(phase):
    fold, neutral = grid_key_mask(LAYOUT, LAYOUT.num_tokens - 20)
    cands = grid_stride_candidates(LAYOUT, Grid(stride="search"))
    stride, res = estimate_stride_phase(
        _planted_scores(phase, secondary=(phase + 9) % 25), fold, cands, 2, neutral=neutral
    )
    assert int(stride[0]) == 25
    assert res[0].tolist() == [phase, (phase + 9) % 25]


def test_uniform_scores_fall_back_to_default():
    fold, neutral = grid_key_mask(LAYOUT, LAYOUT.num_tokens)
    stride, res = estimate_stride_phase(torch.zeros(2, LAYOUT.num_tokens), fold, [5, 25, 50], 3, default=25)
    assert stride.tolist() == [25, 25] and res.tolist() == [[0, 1, 2]] * 2
    excess = grid_fold_excess(torch.zeros(1, LAYOUT.num_tokens), fold, 50, neutral)
    assert torch.allclose(excess, torch.zeros(1, 50))  # uniform: 0 whatever the stride


@pytest.mark.parametrize(("cands", "lines"), [([25], 2), ([5, 25, 50], 3), ([2], 3)])
def test_grid_fold_equals_masks_and_one_candidate_rule(cands, lines):
    """A kept `GridFold` (its per-stride tables reused across calls) gives the masks' results bit for bit, and with
    one candidate (the shortcut) the documented rule: that stride, the best residues by excess (ties to the lowest,
    the phase repeated past the stride), or 0 … lines-1 for a unit without a positive excess."""
    from mmi_core import GridFold

    n = LAYOUT.num_tokens
    fold, neutral = grid_key_mask(LAYOUT, n - 20)
    g = torch.Generator().manual_seed(len(cands) + lines)
    scores = torch.cat([_planted_scores(7), torch.zeros(1, n), torch.randn(1, n, generator=g)])
    gf = GridFold.from_masks(fold, neutral)
    want = estimate_stride_phase(scores, fold, cands, lines, neutral=neutral, default=25)
    for _ in range(2):
        got = estimate_stride_phase(scores, gf, cands, lines, default=25)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for s in cands:
        assert torch.equal(grid_fold_excess(scores, gf, s), grid_fold_excess(scores, fold, s, neutral))
    if len(cands) == 1:
        s = cands[0]
        excess = grid_fold_excess(scores, fold, s, neutral)
        for u in range(scores.shape[0]):
            if excess[u].max() > 0:
                top = sorted(range(s), key=lambda r: (-float(excess[u, r]), r))[: min(lines, s)]
                top += [top[0]] * (lines - len(top))
            else:
                top = [i % s for i in range(lines)]
            assert int(want[0][u]) == s and want[1][u].tolist() == top, u


def test_grid_key_mask_folds_video_only_and_neutralises_off_grid():
    n = LAYOUT.num_tokens
    fold, neutral = grid_key_mask(LAYOUT, n - 20)
    assert not fold[:13].any() and not fold[13 + VG.num_tokens :].any()
    assert not fold[n - 20 - 25 :].any()  # one frame before the estimation rows is excluded
    assert neutral[13 : 13 + 25 * 11 : 25].all() and int(neutral.sum()) == 11  # the per-frame prefix tokens
    fold_all, _ = grid_key_mask(ModalityLayout.from_parts([("video", VG)]), 10)  # nothing early: no exclusion
    assert int(fold_all.sum()) == VG.num_tokens


def test_estimate_grid_without_video_skips_the_search():
    from mmi_core import estimate_grid

    stride, res = estimate_grid(torch.zeros(2, 40), ModalityLayout.text(40), Grid(stride="search", lines=3), 30)
    assert stride.tolist() == [2, 2] and res.tolist() == [[0, 1, 0]] * 2


def test_block_sparse_coverage_reaches_pooled_target():
    q, k = _rand(200, 400, 2, 1, seed=5)
    q = q * 4  # sharper pooled scores
    cov = Coverage(threshold=0.9, min_fraction=0.0, max_fraction=1.0)
    top = estimate_block_sparse(q, k, BlockSparse(top_k=25, block=16, coverage=cov))
    p = block_scores(q, k, 16)
    nqb, _nkb = p.shape[1:]
    for h in range(2):
        for qb in range(nqb):
            first = 200 + qb * 16
            last = min(first + 15, 399)
            kept = {0, *range(first // 16, last // 16 + 1), *(t for t in top[h, qb].tolist() if t >= 0)}
            mass = float(p[h, qb, sorted(kept)].sum())
            assert mass >= 0.9 - 1e-5
            extra = [t for t in top[h, qb].tolist() if t >= 0]
            assert top[h, qb].tolist() == sorted(extra) + [-1] * (top.shape[2] - len(extra))  # rows of any count
            if extra:  # tight: without its weakest chosen block the target is missed
                assert mass - float(p[h, qb, extra].min()) < 0.9
