"""Last-query statistics of all heads in three Triton launches: the input of every online estimate (vertical-slash
columns and diagonals, the Grid stride/phase fold).

The specification is mmi_core: `last_query_scores` (fp32 softmax of the last ``L`` query rows over all keys, causal
on original positions), then `vertical_slash_scores` (column sums, diagonal sums) and `grid_key_scores` (per-key mean
of ``log(max(p, 1e-30))``). Materialising ``p [Hq, L, n_k]`` costs 7 GB at 1M keys (28 heads, L = 64) and a dozen
elementwise passes over it; here it never exists:

1. `_lse_kernel`, grid ``(splits, Hq)``: each program walks a contiguous run of key tiles and keeps a running
   (max, sum of exp) per row, written as ``splits`` partials per head; `_lse_combine_kernel` (one program per
   head) turns them into the rows' log-sum-exp.
2. `_stats_kernel`, grid ``(key tiles, Hq)``: recomputes the tile's scores, ``logp = s - lse``, and writes the
   column sum and the mean clamped log-probability of each key (one key belongs to one program: no atomics), and,
   only when a vertical-slash head needs it, adds each probability into its diagonal's sum (atomics: one diagonal
   collects up to L rows from L different tiles).

Scores are fp32 (`tl.dot` accumulates bf16/fp16 products in fp32, fp32 inputs use IEEE products), so results equal
mmi_core's to fp32 rounding (summation order differs). The diagonal sums use atomics and are not bitwise
deterministic on a GPU; the column and log sums are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["LastQueryStats", "last_query_stats_triton"]

LOG_FLOOR = math.log(1e-30)  # mmi_core.grid_key_scores clamps probabilities at 1e-30 before the log
_TARGET_PROGRAMS = 1024  # lse pass: enough programs to fill a GPU, few enough partials to combine cheaply
_COMBINE_TILE = 4096  # lse partials (splits x padded rows) one combine program holds


@dataclass(frozen=True)
class LastQueryStats:
    """fp32 ``[Hq, n_k]`` each: column sums, diagonal sums (None when not asked for) and mean clamped log-probs."""

    vertical: torch.Tensor
    slash: torch.Tensor | None
    log_mean: torch.Tensor


@triton.jit
def _scores(Q, K, h, g, n_k, n_last, stride_ql, stride_qh, stride_kn, stride_kh, start, scale,
            L_PAD: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
            UPCAST: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Scores ``[L_PAD, BLOCK_N]`` of head ``h``'s last rows against keys ``start + [0, BLOCK_N)``, -inf where the
    row is padding, the key is past the end, or the key is after the row's position (causal)."""
    rows = tl.arange(0, L_PAD)
    keys = start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, D_PAD)
    q = tl.load(Q + rows[:, None] * stride_ql + h * stride_qh + d[None, :],
                mask=(rows[:, None] < n_last) & (d[None, :] < D), other=0.0)  # fmt: skip
    k = tl.load(K + keys[:, None].to(tl.int64) * stride_kn + (h // g) * stride_kh + d[None, :],
                mask=(keys[:, None] < n_k) & (d[None, :] < D), other=0.0)  # fmt: skip
    if UPCAST:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    row_pos = n_k - n_last + rows
    ok = (rows[:, None] < n_last) & (keys[None, :] < n_k) & (keys[None, :] <= row_pos[:, None])
    return tl.where(ok, s, float("-inf")), ok, rows, keys, row_pos


@triton.jit
def _lse_kernel(Q, K, M_OUT, L_OUT, n_k, n_last, g, tiles_per_prog, splits,
                stride_ql, stride_qh, stride_kn, stride_kh, scale,
                L_PAD: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                UPCAST: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    split = tl.program_id(0)
    h = tl.program_id(1)
    m_i = tl.full([L_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([L_PAD], tl.float32)
    for t in range(split * tiles_per_prog, (split + 1) * tiles_per_prog):
        s, _ok, _r, _k, _p = _scores(Q, K, h, g, n_k, n_last, stride_ql, stride_qh, stride_kn, stride_kh,
                                     t * BLOCK_N, scale, L_PAD, BLOCK_N, D, D_PAD, UPCAST, PREC)  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: keep l at 0, not NaN
        l_i = l_i * tl.exp(m_i - safe) + tl.sum(tl.exp(s - safe[:, None]), 1)
        m_i = m_new
    rows = tl.arange(0, L_PAD)
    out = (h * splits + split) * L_PAD + rows
    tl.store(M_OUT + out, m_i)
    tl.store(L_OUT + out, l_i)


@triton.jit
def _lse_combine_kernel(M_PART, L_PART, LSE, splits, L_PAD: tl.constexpr, S_PAD: tl.constexpr):
    """One head's rows: lse = m* + log(sum_s l_s exp(m_s - m*)) over the lse pass's ``splits`` partials (one
    launch for what were a dozen host-launched ops; every real row has its own key, so m* is finite there)."""
    h = tl.program_id(0)
    rows = tl.arange(0, L_PAD)
    sp = tl.arange(0, S_PAD)
    part = (h * splits + sp[:, None]) * L_PAD + rows[None, :]
    m_s = tl.load(M_PART + part, mask=sp[:, None] < splits, other=float("-inf"))
    l_s = tl.load(L_PART + part, mask=sp[:, None] < splits, other=0.0)
    m_star = tl.max(m_s, 0)
    m_safe = tl.where(m_star == float("-inf"), 0.0, m_star)
    tl.store(LSE + h * L_PAD + rows, m_safe + tl.log(tl.sum(l_s * tl.exp(m_s - m_safe[None, :]), 0)))


@triton.jit
def _stats_kernel(Q, K, LSE, VERT, SLASH, LOGM, n_k, n_last, g,
                  stride_ql, stride_qh, stride_kn, stride_kh, scale, log_floor,
                  L_PAD: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                  UPCAST: tl.constexpr, PREC: tl.constexpr, NEED_SLASH: tl.constexpr):  # fmt: skip
    tile = tl.program_id(0)
    h = tl.program_id(1)
    s, ok, rows, keys, row_pos = _scores(Q, K, h, g, n_k, n_last, stride_ql, stride_qh, stride_kn, stride_kh,
                                         tile * BLOCK_N, scale, L_PAD, BLOCK_N, D, D_PAD, UPCAST, PREC)  # fmt: skip
    lse = tl.load(LSE + h * L_PAD + rows)
    lse = tl.where(rows < n_last, lse, 0.0)  # padding rows have lse -inf: keep -inf - -inf (NaN) out entirely
    logp = tl.where(ok, s - lse[:, None], float("-inf"))
    p = tl.exp(logp)
    real = rows[:, None] < n_last
    out = h.to(tl.int64) * n_k + keys
    kmask = keys < n_k
    tl.store(VERT + out, tl.sum(p, 0), mask=kmask)
    # masked (non-causal) entries have p = 0, which mmi_core clamps to the floor too
    clamped = tl.where(real, tl.maximum(logp, log_floor), 0.0)
    tl.store(LOGM + out, tl.sum(clamped, 0) / n_last, mask=kmask)
    if NEED_SLASH:
        offs = row_pos[:, None] - keys[None, :]
        tl.atomic_add(SLASH + h.to(tl.int64) * n_k + offs, p, mask=ok, sem="relaxed")


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
    Raises ValueError for shapes that do not fit, zero queries or ``last_q < 1``."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be 3-D token-major, got {tuple(q.shape)} and {tuple(k.shape)}")
    n_q, hq, d = q.shape
    n_k, hkv, dk = k.shape
    if dk != d or hkv == 0 or hq % hkv or n_q > n_k:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit (head_dim, GQA, n_q <= n_k)")
    if q.dtype != k.dtype or q.device != k.device:
        raise ValueError(f"q and k must share dtype and device, got {q.dtype}/{q.device} and {k.dtype}/{k.device}")
    if last_q < 1 or n_q == 0:
        raise ValueError(f"need last_q >= 1 and queries, got last_q={last_q}, n_q={n_q}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    n_last = min(last_q, n_q)
    q_last = q[n_q - n_last :]
    if q_last.stride(2) != 1:
        q_last = q_last.contiguous()
    if k.stride(2) != 1:
        k = k.contiguous()
    dev = q.device
    l_pad = max(16, triton.next_power_of_2(n_last))
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
    strides = (q_last.stride(0), q_last.stride(1), k.stride(0), k.stride(1))
    tiles = triton.cdiv(n_k, block_n)
    # the combine holds a head's [splits, L] partials in registers: at most `_COMBINE_TILE` of them
    splits = max(1, min(tiles, _TARGET_PROGRAMS // hq, _COMBINE_TILE // l_pad))
    per_prog = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, per_prog)
    m_part = torch.empty(hq, splits, l_pad, dtype=torch.float32, device=dev)
    l_part = torch.empty_like(m_part)
    _lse_kernel[(splits, hq)](q_last, k, m_part, l_part, n_k, n_last, hq // hkv, per_prog, splits, *strides, scale,
                              **consts)  # fmt: skip
    vertical = torch.empty(hq, n_k, dtype=torch.float32, device=dev)
    log_mean = torch.empty_like(vertical)
    slash = torch.zeros_like(vertical) if need_slash else vertical  # a dummy pointer when not needed
    lse = torch.empty(hq, l_pad, dtype=torch.float32, device=dev)
    _lse_combine_kernel[(hq,)](m_part, l_part, lse, splits, L_PAD=l_pad, S_PAD=triton.next_power_of_2(splits))
    _stats_kernel[(tiles, hq)](q_last, k, lse, vertical, slash, log_mean, n_k, n_last, hq // hkv, *strides, scale,
                               LOG_FLOOR, NEED_SLASH=need_slash, **consts)  # fmt: skip
    return LastQueryStats(vertical, slash if need_slash else None, log_mean)
