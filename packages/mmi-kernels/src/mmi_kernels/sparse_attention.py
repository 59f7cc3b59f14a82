"""Sparse prefill attention on a `SparseIndex`: FlashAttention-2-style online softmax over kept key blocks, then kept
key columns, with permuted Q/K/V gathers, causal masks on original positions and K/V read through a page table.

Three layers (Liger style): the private Triton kernel `_sparse_attn_fwd_kernel`, the launcher `sparse_attention_fwd`
(validates inputs, allocates, computes the grid) and the public `sparse_attention`.

One program computes one row tile of one (head slot, query block): ``HEADS_PER_TILE`` query heads of the slot's GQA
group stacked along M (``BLOCK_M = HEADS_PER_TILE * block`` rows; 1 head by default, measured fastest). The tiles of
one (slot, query block) have adjacent program ids and read the same key blocks, so the group's K/V re-reads come
from L2 rather than HBM. Key rows are gathered through the slot's key order and the page table, read contiguously
when keys are in original order, or copied into key order once per call when the keys are permuted and unpaged
(docs/kernels/NOTES.md has the measurements behind each choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mmi_kernels.index import SparseIndex

__all__ = ["KernelConfig", "sparse_attention", "sparse_attention_fwd"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_last_compiled = None  # the last launch's compiled kernel (registers, spills, asm) for tools/kernel_bench.py


def _interpreting() -> bool:
    """Whether the kernel was wrapped for the interpreter (TRITON_INTERPRET=1 when this module was imported); the
    environment variable itself may have changed since."""
    return not isinstance(_sparse_attn_fwd_kernel, triton.runtime.jit.JITFunction)


@triton.jit
def _attend_keys(
    acc,
    m_i,
    l_i,
    q,
    qpos,
    kidx,
    loc,
    m_key,
    need_mask,
    K,
    V,
    kv_off_k,
    kv_off_v,
    stride_kt,
    stride_vt,
    o_d,
    m_d,
    qk_scale,
    UPCAST_DOT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    ALWAYS_MASK: tl.constexpr,
):
    """One online-softmax step over the key rows ``loc`` (int64 [BLOCK_N] row of the K/V pool); keys at original
    positions ``kidx``. Masks (causal on original positions, key validity) only when ``need_mask``."""
    b_k = tl.load(K + loc[:, None] * stride_kt + kv_off_k + o_d[None, :], mask=m_key[:, None] & m_d[None, :], other=0.0)
    if UPCAST_DOT:
        b_k = b_k.to(tl.float32)
    b_s = tl.dot(q, tl.trans(b_k), input_precision=DOT_PREC) * qk_scale
    if ALWAYS_MASK or need_mask:  # no branch: cheaper when nearly every tile needs the mask (permuted keys)
        b_s = tl.where(m_key[None, :] & (kidx[None, :] <= qpos[:, None]), b_s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(b_s, 1))
    alpha = tl.exp2(m_i - m_new)
    b_p = tl.exp2(b_s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(b_p, 1)
    b_v = tl.load(V + loc[:, None] * stride_vt + kv_off_v + o_d[None, :], mask=m_key[:, None] & m_d[None, :], other=0.0)
    b_p = b_p.to(V.dtype.element_ty)
    if UPCAST_DOT:
        b_p = b_p.to(tl.float32)
        b_v = b_v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(b_p, b_v, input_precision=DOT_PREC)
    return acc, m_new, l_i


@triton.jit
def _key_rows(
    K_ORDER, PT, k_order_base, pt_row, k_tok0, kperm, m_key,
    PAGED: tl.constexpr, WIDE: tl.constexpr, KEY_ROWS: tl.constexpr,
):  # fmt: skip
    """Key-permuted ids -> (request-local original key index, row of the K/V pool; int64 when WIDE).

    KEY_ROWS: 0 = gather through the key order (and the page table); 1 = identity key order (no order gather;
    contiguous rows when not PAGED); 2 = K/V materialised in key-permuted order (contiguous rows; the order is read
    only for the causal positions, off the load path)."""
    if KEY_ROWS == 1:  # noqa: SIM108 (a constexpr branch)
        kidx = kperm
    else:
        kidx = tl.load(K_ORDER + k_order_base + kperm, mask=m_key, other=0)
    if KEY_ROWS == 2:
        loc = k_tok0 + kperm
    elif PAGED:
        loc = tl.load(PT + pt_row + kidx, mask=m_key, other=0)
    else:
        loc = k_tok0 + kidx
    if WIDE:
        loc = loc.to(tl.int64)
    return kidx, loc


@triton.jit
def _block_step(
    acc, m_i, l_i, q, qpos, q_min, LIST, j, n, K_POS_MAX, kmeta, K_ORDER, PT, k_order_base, pt_row, k_tok0, n_k,
    K, V, kv_off_k, kv_off_v, stride_kt, stride_vt, o_d, m_d, qk_scale,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, PAGED: tl.constexpr, WIDE: tl.constexpr, KEY_ROWS: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PREC: tl.constexpr, ALWAYS_MASK: tl.constexpr,
):  # fmt: skip
    """One BLOCK_N-key step of the list ``LIST[:n]``: BLOCK_N = 2 * BLOCK takes entries j and j + 1; BLOCK_N = BLOCK
    entry j; BLOCK_N < BLOCK the (j % SUB)-th part of entry j // SUB. The causal mask is evaluated only when a key
    block reaches past the query block's first position, is partial or missing."""
    o_n = tl.arange(0, BLOCK_N)
    # scalar loads of the ids: measured faster than vector loads (results/kernels/v3), which cost registers
    if BLOCK_N < BLOCK:
        SUB: tl.constexpr = BLOCK // BLOCK_N
        kb_a = tl.load(LIST + j // SUB)
        kperm = kb_a * BLOCK + (j % SUB) * BLOCK_N + o_n
        m_key = kperm < n_k
    else:
        kb_a = tl.load(LIST + j)
        if BLOCK_N > BLOCK:
            has_b = j + 1 < n
            kb_b = tl.load(LIST + j + 1, mask=has_b, other=0)
            kb = tl.where(o_n < BLOCK, kb_a, kb_b)
            m_key = (o_n < BLOCK) | has_b
        else:
            kb = kb_a + o_n * 0
            m_key = o_n < BLOCK
        kperm = kb * BLOCK + o_n % BLOCK
        m_key = m_key & (kperm < n_k)
    need_mask = (tl.load(K_POS_MAX + kmeta + kb_a) > q_min) | (kb_a * BLOCK + BLOCK > n_k)
    if BLOCK_N > BLOCK:
        need_mask = (
            need_mask | (j + 1 >= n) | (tl.load(K_POS_MAX + kmeta + kb_b) > q_min) | (kb_b * BLOCK + BLOCK > n_k)
        )
    kidx, loc = _key_rows(K_ORDER, PT, k_order_base, pt_row, k_tok0, kperm, m_key, PAGED, WIDE, KEY_ROWS)
    return _attend_keys(
        acc, m_i, l_i, q, qpos, kidx, loc, m_key, need_mask, K, V, kv_off_k, kv_off_v,
        stride_kt, stride_vt, o_d, m_d, qk_scale, UPCAST_DOT, DOT_PREC, ALWAYS_MASK,
    )  # fmt: skip


@triton.jit
def _sparse_attn_fwd_kernel(
    Q,
    K,
    V,
    O,
    PT,
    Q_ORDER,
    K_ORDER,
    Q_ROWS,
    CU_Q,
    CU_K,
    CU_QB,
    CU_KB,
    QB_REQ,
    Q_POS_MIN,
    K_POS_MAX,
    K_BY_POS,
    B_PREFIX,
    B_COUNT,
    B_START,
    B_IDS,
    C_COUNT,
    C_START,
    C_IDS,
    SLOT_QH,
    SLOT_NH,
    SLOT_KVH,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_pt,
    total_q,
    total_k,
    n_req,
    total_qb,
    total_kb,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEADS_PER_TILE: tl.constexpr,
    PAGED: tl.constexpr,
    WIDE: tl.constexpr,
    KEY_ROWS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    ALWAYS_MASK: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_qb = total_qb - 1 - tl.program_id(1)  # late query blocks hold the longest lists: start them first
    i_s = tl.program_id(2)
    n_heads = tl.load(SLOT_NH + i_s)
    if i_m * HEADS_PER_TILE >= n_heads:
        return
    q_head0 = tl.load(SLOT_QH + i_s) + i_m * HEADS_PER_TILE
    kv_head = tl.load(SLOT_KVH + i_s)
    i_r = tl.load(QB_REQ + i_qb)
    q_tok0 = tl.load(CU_Q + i_r)
    n_q = tl.load(CU_Q + i_r + 1) - q_tok0
    k_tok0 = tl.load(CU_K + i_r)
    n_k = tl.load(CU_K + i_r + 1) - k_tok0
    i_qb_loc = i_qb - tl.load(CU_QB + i_r)
    s64 = i_s.to(tl.int64)
    n_rows = tl.load(Q_ROWS + s64 * n_req + i_r)  # fewer than n_q for one part of a boundary head
    if i_qb_loc * BLOCK >= n_rows:
        return
    kb0 = tl.load(CU_KB + i_r)
    row = s64 * total_qb + i_qb  # (slot, query block) row of the lists

    BLOCK_M: tl.constexpr = HEADS_PER_TILE * BLOCK
    o_m = tl.arange(0, BLOCK_M)
    h_loc = o_m // BLOCK
    prow = i_qb_loc * BLOCK + o_m % BLOCK
    m_row = (prow < n_rows) & (i_m * HEADS_PER_TILE + h_loc < n_heads)
    qidx = tl.load(Q_ORDER + s64 * total_q + q_tok0 + prow, mask=m_row, other=0)
    qpos = qidx + (n_k - n_q)  # original positions: queries are the last n_q keys
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    q_tok = q_tok0 + qidx
    q_head = q_head0 + h_loc
    if WIDE:
        q_tok = q_tok.to(tl.int64)
        q_head = q_head.to(tl.int64)
    q = tl.load(
        Q + q_tok[:, None] * stride_qt + q_head[:, None] * stride_qh + o_d[None, :],
        mask=m_row[:, None] & m_d[None, :],
        other=0.0,
    )
    if UPCAST_DOT:
        q = q.to(tl.float32)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: a fully masked tile must not make exp2(nan)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    q_min = tl.load(Q_POS_MIN + row)
    kv_off_k = kv_head * stride_kh
    kv_off_v = kv_head * stride_vh
    k_order_base = s64 * total_k + k_tok0
    kmeta = s64 * total_kb + kb0
    pt_row = i_r.to(tl.int64) * stride_pt
    o_n = tl.arange(0, BLOCK_N)
    SUBS: tl.constexpr = max(1, BLOCK // BLOCK_N)  # steps per key block (BLOCK_N < BLOCK)
    STEP: tl.constexpr = max(1, BLOCK_N // BLOCK)  # key blocks per step (BLOCK_N > BLOCK)

    # 1) the leading run of key blocks in order of their first original position, 2) the block list; two loops
    # without a branch on the list so the compiler can pipeline the index and K/V loads
    n_lead = tl.load(B_PREFIX + row)
    for j in range(0, n_lead * SUBS, STEP):
        acc, m_i, l_i = _block_step(
            acc, m_i, l_i, q, qpos, q_min, K_BY_POS + kmeta, j, n_lead, K_POS_MAX, kmeta, K_ORDER, PT,
            k_order_base, pt_row, k_tok0, n_k, K, V, kv_off_k, kv_off_v, stride_kt, stride_vt, o_d, m_d, qk_scale,
            BLOCK, BLOCK_N, PAGED, WIDE, KEY_ROWS, UPCAST_DOT, DOT_PREC, ALWAYS_MASK,
        )  # fmt: skip
    n_list = tl.load(B_COUNT + row)
    for j in range(0, n_list * SUBS, STEP):
        acc, m_i, l_i = _block_step(
            acc, m_i, l_i, q, qpos, q_min, B_IDS + tl.load(B_START + row), j, n_list, K_POS_MAX, kmeta, K_ORDER, PT,
            k_order_base, pt_row, k_tok0, n_k, K, V, kv_off_k, kv_off_v, stride_kt, stride_vt, o_d, m_d, qk_scale,
            BLOCK, BLOCK_N, PAGED, WIDE, KEY_ROWS, UPCAST_DOT, DOT_PREC, ALWAYS_MASK,
        )  # fmt: skip

    # 3) single key columns (key-permuted ids), BLOCK_N at a time, always masked
    n_col = tl.load(C_COUNT + row)
    c_start = tl.load(C_START + row)
    for j in range(0, n_col, BLOCK_N):
        m_key = j + o_n < n_col
        kperm = tl.load(C_IDS + c_start + j + o_n, mask=m_key, other=0)
        kidx, loc = _key_rows(K_ORDER, PT, k_order_base, pt_row, k_tok0, kperm, m_key, PAGED, WIDE, KEY_ROWS)
        acc, m_i, l_i = _attend_keys(
            acc, m_i, l_i, q, qpos, kidx, loc, m_key, True, K, V, kv_off_k, kv_off_v,
            stride_kt, stride_vt, o_d, m_d, qk_scale, UPCAST_DOT, DOT_PREC, True,
        )  # fmt: skip

    l_i = tl.where(l_i > 0.0, l_i, 1.0)  # a row with no kept key (impossible for mmi_core builders) writes zeros
    b_o = acc / l_i[:, None]
    tl.store(
        O + q_tok[:, None] * stride_ot + q_head[:, None] * stride_oh + o_d[None, :],
        b_o.to(O.dtype.element_ty),
        mask=m_row[:, None] & m_d[None, :],
    )


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters. ``heads_per_tile``: query heads of the slot's group stacked along M per program (None: 1;
    the group's tiles then run as adjacent programs sharing K/V through L2); ``block_n``: keys per inner step
    (block / 2, block or 2 * block; None: min(block, 64)); ``num_warps`` / ``num_stages``: None = chosen from the
    tile size; ``materialize_keys``: with permuted keys, one slot per KV head and no page table, copy K/V into key
    order once per call instead of gathering rows in every tile; ``always_mask``: evaluate the causal mask on every
    tile without a branch (measured no faster, even with permuted keys: results/kernels/v9)."""

    heads_per_tile: int | None = None
    block_n: int | None = None
    materialize_keys: bool = True
    always_mask: bool = False
    num_warps: int | None = None
    num_stages: int | None = None


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: SparseIndex,
    page_table: torch.Tensor | None,
) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check(t.dim() == 3, f"{name} must be 3-D [tokens, heads, head_dim], got shape {tuple(t.shape)}")
        _check(t.dtype in _DTYPES, f"{name} dtype {t.dtype} is not one of float16, bfloat16, float32")
        _check(t.device == index.device, f"{name} is on {t.device} but the index is on {index.device}")
        _check(t.stride(-1) == 1, f"{name} must be contiguous in head_dim (stride(-1) == 1), got {t.stride()}")
    _check(q.dtype == k.dtype == v.dtype, f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    _check(k.shape == v.shape, f"k shape {tuple(k.shape)} differs from v shape {tuple(v.shape)}")
    _check(q.shape[2] == k.shape[2], f"q head_dim {q.shape[2]} differs from k head_dim {k.shape[2]}")
    _check(1 <= q.shape[2] <= 256, f"head_dim {q.shape[2]} is outside [1, 256]")
    _check(
        q.shape[1] == index.num_q_heads,
        f"q has {q.shape[1]} heads but the index was built for {index.num_q_heads} query heads",
    )
    _check(
        k.shape[1] == index.num_kv_heads,
        f"k/v have {k.shape[1]} heads but the index was built for {index.num_kv_heads} KV heads",
    )
    tq = sum(index.seqlens_q)
    _check(q.shape[0] == tq, f"q has {q.shape[0]} tokens but the index's requests hold {tq} queries")
    if page_table is None:
        tk = sum(index.seqlens_k)
        _check(k.shape[0] == tk, f"k/v have {k.shape[0]} tokens but the index's requests hold {tk} keys")
    else:
        _check(page_table.dtype == torch.int32, f"page_table must be int32, got {page_table.dtype}")
        _check(page_table.device == index.device, f"page_table is on {page_table.device}, index on {index.device}")
        _check(
            page_table.dim() == 2 and page_table.shape[0] == index.num_requests,
            f"page_table must be [{index.num_requests} requests, max_len], got {tuple(page_table.shape)}",
        )
        _check(page_table.stride(1) == 1, "page_table rows must be contiguous")
        longest = max(index.seqlens_k)
        _check(page_table.shape[1] >= longest, f"page_table has {page_table.shape[1]} columns, need {longest}")


def _permute_keys(x: torch.Tensor, index: SparseIndex) -> torch.Tensor:
    """[TK, Hkv, D] -> the same with KV head ``slot_kv_head[s]`` in slot s's key order (request by request)."""
    req = torch.repeat_interleave(
        torch.arange(index.num_requests, device=x.device), (index.cu_seqlens_k[1:] - index.cu_seqlens_k[:-1]).long()
    )
    rows = index.k_order.long() + index.cu_seqlens_k.long()[req][None, :]  # [S, TK] global source rows
    out = torch.empty((x.shape[0], x.shape[1], x.shape[2]), dtype=x.dtype, device=x.device)
    kvh = index.slot_kv_head.long()
    out[:, kvh] = x[rows.T, kvh[None, :]]  # [TK, S, D]
    return out


def sparse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: SparseIndex,
    *,
    page_table: torch.Tensor | None = None,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Launcher: validate, allocate and launch `_sparse_attn_fwd_kernel`. Arguments as `sparse_attention`, with
    ``k``/``v`` either packed keys (``page_table`` None) or the K/V pool (``page_table`` given)."""
    _validate(q, k, v, index, page_table)
    cfg = config or KernelConfig()
    d = q.shape[2]
    block = index.block
    hpt = cfg.heads_per_tile or 1  # one head per tile measured fastest on H200 (docs/kernels/NOTES.md)
    hpt = max(1, min(hpt, index.max_heads_per_slot))
    block_m = hpt * block
    _check(block_m <= 512, f"heads_per_tile * block = {block_m} rows per tile is over 512")
    if out is None:
        out = torch.empty_like(q)
    else:
        _check(out.shape == q.shape and out.dtype == q.dtype, "out must have q's shape and dtype")
        _check(out.stride(-1) == 1 and out.device == q.device, "out must be on q's device, contiguous in head_dim")
    if q.shape[0] == 0:
        return out
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    block_d = max(16, triton.next_power_of_2(d))
    block_n = cfg.block_n or min(block, 64)
    _check(
        block_n in (block // 2, block, 2 * block) and block_n >= 16,
        f"block_n must be block/2, block or 2*block (>= 16), got {block_n} for block {block}",
    )
    key_rows = 1 if index.keys_identity else 0
    if key_rows == 0 and page_table is None and cfg.materialize_keys and index.one_slot_per_kv_head:
        # one slot per KV head (its whole group): copy K/V into each slot's key order once per call, so that every
        # tile loads contiguous rows; measured faster than the gather (docs/kernels/NOTES.md). Never for paged KV.
        k, v = _permute_keys(k, index), _permute_keys(v, index)
        key_rows = 2
    num_warps = cfg.num_warps or (8 if block_m * block_d > 64 * 128 else 4)
    num_stages = cfg.num_stages or 3
    interp = _interpreting()
    pt = page_table if page_table is not None else index.cu_seqlens_k  # any int32 tensor: never read
    # 32-bit element offsets where every q/k/v/out element is addressable with them: fewer registers per address
    wide = max(t.shape[0] * t.stride(0) for t in (q, k, v, out)) >= 2**31
    grid = (triton.cdiv(index.max_heads_per_slot, hpt), index.total_qblocks, index.num_slots)
    global _last_compiled
    _last_compiled = _sparse_attn_fwd_kernel[grid](
        q, k, v, out, pt,
        index.q_order, index.k_order, index.q_rows, index.cu_seqlens_q, index.cu_seqlens_k, index.cu_qblocks,
        index.cu_kblocks,
        index.qblock_request, index.q_pos_min, index.k_pos_max, index.k_blocks_by_pos,
        index.block_prefix, index.block_count, index.block_start, index.block_ids, index.column_count,
        index.column_start, index.column_ids,
        index.slot_q_head, index.slot_num_heads, index.slot_kv_head,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        pt.stride(0) if page_table is not None else 0,
        q.shape[0], index.k_order.shape[1], index.num_requests, index.total_qblocks, index.k_pos_max.shape[1],
        scale * math.log2(math.e),
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK=block, BLOCK_N=block_n, HEADS_PER_TILE=hpt,
        PAGED=page_table is not None, WIDE=wide, KEY_ROWS=key_rows,
        UPCAST_DOT=interp and q.dtype != torch.float32,  # the interpreter's bf16/fp16 dot is wrong (NOTES.md)
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        ALWAYS_MASK=cfg.always_mask,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    index: SparseIndex,
    *,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    page_table: torch.Tensor | None = None,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Attention of every query head restricted to the index's keep sets (causal on original positions).

    q: [TQ, Hq, D] float16/bfloat16/float32, the requests' queries packed in index order (``index.cu_seqlens_q``);
    request r's queries are the last ``n_q[r]`` of its ``n_k[r]`` keys (a cached prefix of ``n_k - n_q``).
    Keys, one of:
      - ``k``, ``v``: [TK, Hkv, D] packed like ``index.cu_seqlens_k`` (every key of every request, prefix included);
      - ``k_cache``, ``v_cache``: [slots, Hkv, D] a KV pool and ``page_table``: int32 [R, >= max n_k] with
        ``page_table[r, j]`` the pool slot of request r's key j (SGLang's ``req_to_token``); nothing is copied.
    scale: softmax scale (default 1/sqrt(D)). out: optional [TQ, Hq, D] to write into (every row is written).
    Returns [TQ, Hq, D] in q's dtype. Raises ValueError naming the problem for wrong shapes, dtypes, devices,
    head counts or token counts that disagree with the index. The cu_seqlens live in the index (built at plan time).
    """
    paged = k_cache is not None or v_cache is not None or page_table is not None
    if paged:
        _check(k is None and v is None, "pass either k/v or k_cache/v_cache + page_table, not both")
        _check(
            k_cache is not None and v_cache is not None and page_table is not None,
            "paged KV needs k_cache, v_cache and page_table",
        )
        return sparse_attention_fwd(
            q, k_cache, v_cache, index, page_table=page_table, scale=scale, out=out, config=config
        )
    _check(k is not None and v is not None, "k and v are required (or k_cache, v_cache and page_table)")
    return sparse_attention_fwd(q, k, v, index, scale=scale, out=out, config=config)
