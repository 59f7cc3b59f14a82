"""Last-query statistics of all heads in three Triton launches: the input of every online estimate (vertical-slash
columns and diagonals, the Grid stride/phase fold).

The specification is mmi_core: `last_query_scores` (fp32 softmax of the last ``L`` query rows over all keys, causal
on original positions), then `vertical_slash_scores` (column sums, diagonal sums) and `grid_key_scores` (per-key mean
of ``log(max(p, 1e-30))``). Materialising ``p [Hq, L, n_k]`` costs 7 GB at 1M keys (28 heads, L = 64) and a dozen
elementwise passes over it; here it never exists.

Every launch has a group axis: group ``g`` is the sub-problem "keys ``[0, end_g)``, queries ending at ``end_g``, its
last ``last_q_g`` rows" of one request. A layer's boundary heads need the statistics of several such sub-problems;
one launch set for all of them costs 3 launches where separate calls cost 3 per group. A small int64 device table
(one host-to-device copy, no stream synchronisation) gives each group its first row inside ``q``, its row count and
its end; programs whose key tiles lie at or past ``end_g`` do nothing, so groups of very different lengths cost
what their keys cost.

1. `_lse_kernel`, grid ``(splits, Hq, G)``: each program walks a contiguous run of its group's key tiles and keeps a
   running (max, sum of exp) per row, written as up to ``splits`` partials per head; `_lse_combine_kernel` (one
   program per head and group) turns them into the rows' log-sum-exp.
2. `_stats_kernel`, grid ``(key tiles, Hq, G)``: recomputes the tile's scores, ``logp = s - lse``, and writes the
   column sum and the mean clamped log-probability of each key (one key belongs to one program: no atomics), and,
   only when a vertical-slash head needs it, adds each probability into its diagonal's sum (atomics: one diagonal
   collects up to L rows from L different tiles).

Each (group, head) carries a need (`last_query_stats_groups`' ``needs``): a head that needs nothing in a group (its
pattern there has no statistics) costs no program work, and only vertical-slash heads pay for the diagonal atomics
(a Grid head reads the log sums only; at 131K the atomics are most of the statistics kernel's time).

Scores are fp32 (`tl.dot` accumulates bf16/fp16 products in fp32, fp32 inputs use IEEE products), so results equal
mmi_core's to fp32 rounding (summation order differs). The diagonal sums use atomics and are not bitwise
deterministic on a GPU; the column and log sums are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mmi_core import to_device

__all__ = ["LastQueryStats", "last_query_stats_groups", "last_query_stats_triton"]

LOG_FLOOR = math.log(1e-30)  # mmi_core.grid_key_scores clamps probabilities at 1e-30 before the log
_TARGET_PROGRAMS = 1024  # lse pass: enough programs to fill a GPU, few enough partials to combine cheaply
_COMBINE_TILE = 4096  # lse partials (splits x padded rows) one combine program holds


@dataclass(frozen=True)
class LastQueryStats:
    """fp32 ``[Hq, n_k]`` each (one problem), or ``[G, Hq, W]`` (the groups of `last_query_stats_groups`; entries
    past a group's end, and those a (group, head)'s need left out, unspecified): column sums, diagonal sums (None
    when not asked for) and mean clamped log-probs."""

    vertical: torch.Tensor
    slash: torch.Tensor | None
    log_mean: torch.Tensor

    def group(self, i: int, end: int) -> LastQueryStats:
        """Group ``i``'s ``[Hq, end]`` statistics (views) of grouped tables."""
        slash = self.slash[i, :, :end] if self.slash is not None else None
        return LastQueryStats(self.vertical[i, :, :end], slash, self.log_mean[i, :, :end])


@triton.jit
def _group(META, grp):
    """Group ``grp``'s row in the ``[G, 3]`` table: first of its last rows inside q, their count, its key end."""
    return tl.load(META + grp * 3), tl.load(META + grp * 3 + 1), tl.load(META + grp * 3 + 2)


@triton.jit
def _scores(Q, K, h, gqa, n_k, n_last, stride_ql, stride_qh, stride_kn, stride_kh, start, scale,
            L_PAD: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
            UPCAST: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Scores ``[L_PAD, BLOCK_N]`` of head ``h``'s last rows (``Q`` points at the first) against keys ``start + [0,
    BLOCK_N)``, -inf where the row is padding, the key is past ``n_k`` (the group's end), or the key is after the
    row's position (causal)."""
    rows = tl.arange(0, L_PAD)
    keys = start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, D_PAD)
    q = tl.load(Q + rows[:, None] * stride_ql + h * stride_qh + d[None, :],
                mask=(rows[:, None] < n_last) & (d[None, :] < D), other=0.0)  # fmt: skip
    k = tl.load(K + keys[:, None].to(tl.int64) * stride_kn + (h // gqa) * stride_kh + d[None, :],
                mask=(keys[:, None] < n_k) & (d[None, :] < D), other=0.0)  # fmt: skip
    if UPCAST:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    row_pos = n_k - n_last + rows
    ok = (rows[:, None] < n_last) & (keys[None, :] < n_k) & (keys[None, :] <= row_pos[:, None])
    return tl.where(ok, s, float("-inf")), ok, rows, keys, row_pos


@triton.jit
def _lse_kernel(Q, K, META, NEED, M_OUT, L_OUT, hq, gqa, tiles_per_prog, splits,
                stride_ql, stride_qh, stride_kn, stride_kh, scale,
                L_PAD: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    split = tl.program_id(0)
    h = tl.program_id(1)
    grp = tl.program_id(2)
    q0, n_last, n_k = _group(META, grp)
    first = split * tiles_per_prog
    # splits are sized for the longest group: a shorter group's programs past its end write nothing (the combine
    # reads only the group's own splits); nor do the programs of a head that needs no statistics in this group
    if (first * BLOCK_N < n_k) & (tl.load(NEED + grp * hq + h) > 0):
        m_i = tl.full([L_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([L_PAD], tl.float32)
        for t in range(first, tl.minimum(first + tiles_per_prog, tl.cdiv(n_k, BLOCK_N))):
            s, _ok, _r, _k, _p = _scores(Q + q0 * stride_ql, K, h, gqa, n_k, n_last, stride_ql, stride_qh,
                                         stride_kn, stride_kh, t * BLOCK_N, scale, L_PAD, BLOCK_N, D, D_PAD, UPCAST,
                                         PREC)  # fmt: skip
            m_new = tl.maximum(m_i, tl.max(s, 1))
            safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: keep l at 0, not NaN
            l_i = l_i * tl.exp(m_i - safe) + tl.sum(tl.exp(s - safe[:, None]), 1)
            m_i = m_new
        rows = tl.arange(0, L_PAD)
        out = ((grp * hq + h) * splits + split) * L_PAD + rows
        tl.store(M_OUT + out, m_i)
        tl.store(L_OUT + out, l_i)


@triton.jit
def _lse_combine_kernel(META, M_PART, L_PART, LSE, hq, tiles_per_prog, splits,
                        L_PAD: tl.constexpr, BLOCK_N: tl.constexpr, S_PAD: tl.constexpr):  # fmt: skip
    """One head's rows of one group: lse = m* + log(sum_s l_s exp(m_s - m*)) over the partials the lse pass wrote
    for the group (one launch for what were a dozen host-launched ops; every real row has its own key, so m* is
    finite there)."""
    h = tl.program_id(0)
    grp = tl.program_id(1)
    _q0, _n_last, n_k = _group(META, grp)
    used = tl.cdiv(tl.cdiv(n_k, BLOCK_N), tiles_per_prog)  # the group's splits that saw keys; the rest are unwritten
    rows = tl.arange(0, L_PAD)
    sp = tl.arange(0, S_PAD)
    part = ((grp * hq + h) * splits + sp[:, None]) * L_PAD + rows[None, :]
    m_s = tl.load(M_PART + part, mask=sp[:, None] < used, other=float("-inf"))
    l_s = tl.load(L_PART + part, mask=sp[:, None] < used, other=0.0)
    m_star = tl.max(m_s, 0)
    m_safe = tl.where(m_star == float("-inf"), 0.0, m_star)
    tl.store(LSE + (grp * hq + h) * L_PAD + rows, m_safe + tl.log(tl.sum(l_s * tl.exp(m_s - m_safe[None, :]), 0)))


@triton.jit
def _stats_kernel(Q, K, META, NEED, LSE, VERT, SLASH, LOGM, hq, width, gqa,
                  stride_ql, stride_qh, stride_kn, stride_kh, scale, log_floor,
                  L_PAD: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                  UPCAST: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    tile = tl.program_id(0)
    h = tl.program_id(1)
    grp = tl.program_id(2)
    q0, n_last, n_k = _group(META, grp)
    need = tl.load(NEED + grp * hq + h)  # 0: nothing, 1: column and log sums, 2: also diagonal sums
    # the grid covers the longest group: tiles past this group's end do nothing, nor do heads without a need
    if (tile * BLOCK_N < n_k) & (need > 0):
        s, ok, rows, keys, row_pos = _scores(Q + q0 * stride_ql, K, h, gqa, n_k, n_last, stride_ql, stride_qh,
                                             stride_kn, stride_kh, tile * BLOCK_N, scale, L_PAD, BLOCK_N, D, D_PAD,
                                             UPCAST, PREC)  # fmt: skip
        head = grp * hq + h
        lse = tl.load(LSE + head * L_PAD + rows)
        lse = tl.where(rows < n_last, lse, 0.0)  # padding rows have lse -inf: keep -inf - -inf (NaN) out entirely
        logp = tl.where(ok, s - lse[:, None], float("-inf"))
        p = tl.exp(logp)
        real = rows[:, None] < n_last
        out = head.to(tl.int64) * width + keys
        kmask = keys < n_k
        tl.store(VERT + out, tl.sum(p, 0), mask=kmask)
        # masked (non-causal) entries have p = 0, which mmi_core clamps to the floor too
        clamped = tl.where(real, tl.maximum(logp, log_floor), 0.0)
        tl.store(LOGM + out, tl.sum(clamped, 0) / n_last.to(tl.float32), mask=kmask)
        if need > 1:  # the atomics are most of the kernel's cost: only for vertical-slash heads (never without SLASH)
            offs = row_pos[:, None] - keys[None, :]
            tl.atomic_add(SLASH + head.to(tl.int64) * width + offs, p, mask=ok, sem="relaxed")


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be 3-D token-major, got {tuple(q.shape)} and {tuple(k.shape)}")
    n_q, hq, d = q.shape
    n_k, hkv, dk = k.shape
    if dk != d or hkv == 0 or hq % hkv or n_q > n_k:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit (head_dim, GQA, n_q <= n_k)")
    if q.dtype != k.dtype or q.device != k.device:
        raise ValueError(f"q and k must share dtype and device, got {q.dtype}/{q.device} and {k.dtype}/{k.device}")


def last_query_stats_groups(
    q: torch.Tensor,
    k: torch.Tensor,
    groups: Sequence[tuple[int, int]],
    *,
    scale: float | None = None,
    need_slash: bool = True,
    needs: Sequence[Sequence[int]] | None = None,
    block_n: int = 64,
) -> LastQueryStats:
    """Statistics of several sub-problems of one request in one launch set. ``q [n_q, Hq, D]`` holds the queries of
    key positions ``[prefix, n_k)`` (``prefix = n_k - n_q``), ``k [n_k, Hkv, D]``, both token-major (any strides
    along tokens and heads, unit stride along D), same float dtype and device. Group ``(end, last_q)`` is keys
    ``[0, end)`` with the queries ending at ``end``: its statistics are those of ``last_query_stats_triton(q[:end -
    prefix], k[:end], last_q)``; returned as ``[G, Hq, W]`` tables (``W`` the longest end; `LastQueryStats.group`
    gives one group's ``[Hq, end]`` views), so a caller can gather rows of every group in one op. ``needs``: per
    group, one code per query head: 0 nothing, 1 column and log sums, 2 also diagonal sums (needs ``need_slash``);
    default 2 for every head (1 without ``need_slash``). Raises ValueError for shapes that do not fit, no groups, an
    end outside ``(prefix, n_k]`` (a group needs a query row), ``last_q < 1`` or malformed needs."""
    _check_qk(q, k)
    n_q, hq, d = q.shape
    n_k, hkv, _ = k.shape
    prefix = n_k - n_q
    groups = [(int(end), int(lq)) for end, lq in groups]
    if not groups:
        raise ValueError("groups must be a non-empty list of (end, last_q)")
    for i, (end, lq) in enumerate(groups):
        if not prefix < end <= n_k:
            raise ValueError(f"group {i}: end={end} must satisfy prefix={prefix} < end <= n_k={n_k} (a query row)")
        if lq < 1:
            raise ValueError(f"group {i}: need last_q >= 1, got last_q={lq}")
    if needs is None:
        needs = [[2 if need_slash else 1] * hq for _ in groups]
    needs = [[int(c) for c in row] for row in needs]
    if len(needs) != len(groups) or any(len(row) != hq for row in needs):
        raise ValueError(f"needs must hold {hq} codes for each of the {len(groups)} groups")
    if any(c not in (0, 1, 2) or (c == 2 and not need_slash) for row in needs for c in row):
        raise ValueError("needs codes are 0 (none), 1 (column and log sums) or 2 (also diagonal sums: need_slash)")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    n_last = [min(lq, end - prefix) for end, lq in groups]
    ends = [end for end, _ in groups]
    first = [end - prefix - nl for end, nl in zip(ends, n_last, strict=True)]  # of the group's last rows, inside q
    width = max(ends)
    # only the rows some group reads travel to the kernels (and are copied if D is strided)
    lo, hi = min(first), width - prefix
    q_rows = q[lo:hi]
    if q_rows.stride(2) != 1:
        q_rows = q_rows.contiguous()
    if k.stride(2) != 1:
        k = k.contiguous()
    dev = q.device
    # one host-to-device copy (no stream synchronisation) of the [G, 3] table the kernels read per group and the
    # [G, Hq] needs
    n_groups = len(groups)
    table = [v for f, nl, end in zip(first, n_last, ends, strict=True) for v in (f - lo, nl, end)]
    both = to_device(table + [c for row in needs for c in row], dev, torch.int64)
    meta, need = both[: 3 * n_groups].view(n_groups, 3), both[3 * n_groups :]
    l_pad = max(16, triton.next_power_of_2(max(n_last)))
    d_pad = max(16, triton.next_power_of_2(d))
    interp = not isinstance(_stats_kernel, triton.runtime.jit.JITFunction)
    consts = dict(
        L_PAD=l_pad,
        BLOCK_N=block_n,
        D=d,
        D_PAD=d_pad,
        UPCAST=interp and q.dtype != torch.float32,  # the interpreter's bf16/fp16 dot is wrong (kernels NOTES.md)
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )
    strides = (q_rows.stride(0), q_rows.stride(1), k.stride(0), k.stride(1))
    tiles = triton.cdiv(width, block_n)
    # the combine holds a head's [splits, L] partials in registers: at most `_COMBINE_TILE` of them. Splits are
    # sized as a single call of the longest group would size them; a shorter group uses only the first few
    splits = max(1, min(tiles, _TARGET_PROGRAMS // hq, _COMBINE_TILE // l_pad))
    per_prog = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, per_prog)
    m_part = torch.empty(n_groups, hq, splits, l_pad, dtype=torch.float32, device=dev)
    l_part = torch.empty_like(m_part)
    _lse_kernel[(splits, hq, n_groups)](q_rows, k, meta, need, m_part, l_part, hq, hq // hkv, per_prog, splits,
                                        *strides, scale, **consts)  # fmt: skip
    vertical = torch.empty(n_groups, hq, width, dtype=torch.float32, device=dev)
    log_mean = torch.empty_like(vertical)
    slash = torch.zeros_like(vertical) if need_slash else vertical  # a dummy pointer when not needed
    lse = torch.empty(n_groups, hq, l_pad, dtype=torch.float32, device=dev)
    _lse_combine_kernel[(hq, n_groups)](meta, m_part, l_part, lse, hq, per_prog, splits, L_PAD=l_pad, BLOCK_N=block_n,
                                        S_PAD=triton.next_power_of_2(splits))  # fmt: skip
    _stats_kernel[(tiles, hq, n_groups)](q_rows, k, meta, need, lse, vertical, slash, log_mean, hq, width, hq // hkv,
                                         *strides, scale, LOG_FLOOR, **consts)  # fmt: skip
    return LastQueryStats(vertical, slash if need_slash else None, log_mean)


def last_query_stats_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    last_q: int,
    *,
    scale: float | None = None,
    need_slash: bool = True,
    block_n: int = 64,
) -> LastQueryStats:
    """Statistics of the last ``L = min(last_q, n_q)`` query rows of every head: ``q [n_q, Hq, D]``, ``k [n_k, Hkv,
    D]`` token-major (any strides along tokens and heads, unit stride along D), same float dtype and device.
    Raises ValueError for shapes that do not fit, zero queries or ``last_q < 1``. The one-group case of
    `last_query_stats_groups`."""
    _check_qk(q, k)
    if last_q < 1 or q.shape[0] == 0:
        raise ValueError(f"need last_q >= 1 and queries, got last_q={last_q}, n_q={q.shape[0]}")
    groups = [(k.shape[0], last_q)]
    return last_query_stats_groups(q, k, groups, scale=scale, need_slash=need_slash, block_n=block_n).group(
        0, k.shape[0]
    )
