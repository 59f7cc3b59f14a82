"""The boundary planner's rounding core on few slots: which final tiles of a boundary part hold a kept pair, for a
batch of heads in one pass.

Per head ``h``, final row block ``X`` and final column block ``Y`` (`mmi_kernels.boundary_planner` explains the
identity and where the slots come from):

    T[h, X, Y] = OR over slots w, v of  S[h, r_slot[h, X, w], c_slot[h, Y, v]]  and  c_val[h, Y, v] <= r_val[h, X, w]

``S`` is the head's sub-problem blocks ``[nr, nc]``; id ``nr`` (rows) or ``nc`` (columns) is an empty slot, whose
entries are False (the kernel masks them, so the planner passes its stacked sub blocks as they are; the PyTorch
expression pads ``S`` with one all-False row and column). One Triton program per (head, tile of rows, tile of
columns) on CUDA or under ``TRITON_INTERPRET=1`` (the ``Wr · Wc`` comparisons per output happen in registers; ``T``
is written once, nothing of size ``R · nc`` is materialised); the PyTorch expression below otherwise (per-row reach
``A[h, X, c] = max r_val over X's slots keeping c``, then one gather per column slot), the reference of the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmi_kernels.dispatch import triton_runs

__all__ = ["slot_tiles"]

_BR, _BC = 16, 64


@triton.jit
def _slot_tiles_kernel(
    S, RS, RV, CS, CV, OUT,
    n_rows, n_cols, nr, nc,  # rows / columns of T, and of S (ids nr / nc: empty slots)
    s_h, s_r, s_c,  # strides of S (any layout: the transposed problem passes a transposed view)
    o_h, o_r, o_c,  # strides of OUT (any layout, e.g. a transposed slice of the part's blocks)
    rs_h, rv_h, cs_h, cv_h,  # head strides of the slot tables (0: one table shared by every head)
    wr, wc,  # slots per row / column (runtime: one compiled kernel for every width)
    ACCUMULATE: tl.constexpr, REVERSE: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0).to(tl.int64)
    x = tl.program_id(1).to(tl.int64) * BR + tl.arange(0, BR)
    y = tl.program_id(2).to(tl.int64) * BC + tl.arange(0, BC)
    mx, my = x < n_rows, y < n_cols
    m = mx[:, None] & my[None, :]
    at = OUT + h * o_h + x[:, None] * o_r + y[None, :] * o_c
    acc = tl.zeros([BR, BC], tl.int32)
    if ACCUMULATE:  # OR into what is there
        acc = (tl.load(at, mask=m, other=0) != 0).to(tl.int32)
    # column slots outside: the planner's many-slot case is many row slots against one column slot (scattered
    # rows), whose column ids and values are then loaded once
    for v in range(wc):
        cs = tl.load(CS + h * cs_h + y * wc + v, mask=my, other=0)
        cv = tl.load(CV + h * cv_h + y * wc + v, mask=my, other=0)
        for w in range(wr):
            rs = tl.load(RS + h * rs_h + x * wr + w, mask=mx, other=0)
            rv = tl.load(RV + h * rv_h + x * wr + w, mask=mx, other=0)
            hit = m & (rs[:, None] < nr) & (cs[None, :] < nc)
            s = tl.load(S + h * s_h + rs[:, None] * s_r + cs[None, :] * s_c, mask=hit, other=0)
            if REVERSE:  # the transposed problem: c_val >= r_val (no negated copies of the value tables)
                acc = acc | ((s != 0) & (cv[None, :] >= rv[:, None])).to(tl.int32)
            else:
                acc = acc | ((s != 0) & (cv[None, :] <= rv[:, None])).to(tl.int32)
    tl.store(at, acc.to(tl.uint8), mask=m)


def _check(
    s: torch.Tensor, r_slot: torch.Tensor, r_val: torch.Tensor, c_slot: torch.Tensor, c_val: torch.Tensor
) -> None:
    if s.dim() != 3 or s.dtype != torch.bool:
        raise ValueError(f"s must be bool [H, nr, nc], got {s.dtype} {tuple(s.shape)}")
    heads = s.shape[0]
    for name, t in (("r_slot", r_slot), ("r_val", r_val), ("c_slot", c_slot), ("c_val", c_val)):
        if t.dim() != 3 or t.shape[0] != heads or t.device != s.device:
            raise ValueError(f"{name} must be [{heads}, N, W] on {s.device}, got {tuple(t.shape)} on {t.device}")
    if r_slot.shape != r_val.shape or c_slot.shape != c_val.shape:
        raise ValueError(
            f"slot ids and values must match: rows {tuple(r_slot.shape)} / {tuple(r_val.shape)}, "
            f"columns {tuple(c_slot.shape)} / {tuple(c_val.shape)}"
        )
    if r_slot.dtype != torch.int64 or c_slot.dtype != torch.int64 or r_val.dtype != c_val.dtype:
        raise ValueError(
            f"slot ids must be int64 and both value tables one dtype, got {r_slot.dtype}, {c_slot.dtype}, "
            f"{r_val.dtype}, {c_val.dtype}"
        )


def _head_stride(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A slot table with contiguous rows; head stride 0 kept (one table expanded over the heads: not copied)."""
    if t.shape[0] > 1 and t.stride(0) == 0 and t[0].is_contiguous():
        return t, 0
    t = t.contiguous()
    return t, t.stride(0)


def slot_tiles(
    s: torch.Tensor,
    r_slot: torch.Tensor,
    r_val: torch.Tensor,
    c_slot: torch.Tensor,
    c_val: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    reverse: bool = False,
) -> torch.Tensor:
    """bool ``[H, R, C]``: ``T[h, X, Y]`` as in the module docstring, ORed into ``out`` when given (bool
    ``[H, R, C]``, any strides, e.g. a slice of a larger tensor: no temporary of its size), which is returned.
    ``reverse``: the test is ``c_val >= r_val`` (the planner's transposed problem, without negated value tables).

    ``s`` bool ``[H, nr, nc]`` (any strides); ``r_slot`` int64 / ``r_val`` ``[H, R, Wr]``; ``c_slot`` int64 /
    ``c_val`` ``[H, C, Wc]`` (ids in ``[0, nr]`` / ``[0, nc]``, ``nr`` / ``nc``: an empty slot; values int32 or
    int64, one dtype). A table expanded over the heads (head stride 0) is read in place.
    Raises ValueError for other shapes, dtypes or devices. The work is ``H · R · C · Wr · Wc``: meant for few slots
    on one side (the planner's ``SLOT_LOOP_MAX``) and, where the kernel runs, up to ``block`` on the other.
    """
    _check(s, r_slot, r_val, c_slot, c_val)
    heads, n_rows, n_cols = s.shape[0], r_slot.shape[1], c_slot.shape[1]
    if out is not None and (out.shape != (heads, n_rows, n_cols) or out.dtype != torch.bool or out.device != s.device):
        raise ValueError(
            f"out must be bool [{heads}, {n_rows}, {n_cols}] on {s.device}, got {out.dtype} {tuple(out.shape)}"
        )
    if not triton_runs(s):
        if reverse:
            r_val, c_val = -r_val, -c_val
        s_ext = torch.nn.functional.pad(s, (0, 1, 0, 1))  # the empty slots' row and column: all False
        nc1 = s_ext.shape[2]
        reach = None  # A[h, X, c]: the largest row value reaching sub block c (the dtype's minimum: none)
        for w in range(r_slot.shape[2]):  # slots, not tokens
            hit = torch.gather(s_ext, 1, r_slot[:, :, w, None].expand(heads, n_rows, nc1))
            a = torch.where(hit, r_val[:, :, w, None], torch.iinfo(r_val.dtype).min)
            reach = a if reach is None else torch.maximum(reach, a)
        if out is None:
            out = torch.zeros(heads, n_rows, n_cols, dtype=torch.bool, device=s_ext.device)
        if reach is None:
            return out
        for v in range(c_slot.shape[2]):  # slots, not tokens
            out |= torch.gather(reach, 2, c_slot[:, None, :, v].expand(heads, n_rows, n_cols)) >= c_val[:, None, :, v]
        return out
    accumulate = out is not None
    if out is None:
        out = torch.empty(heads, n_rows, n_cols, dtype=torch.bool, device=s.device)
    if heads and n_rows and n_cols:
        (rs, rs_h), (rv, rv_h), (cs, cs_h), (cv, cv_h) = map(_head_stride, (r_slot, r_val, c_slot, c_val))
        s8, o = s.view(torch.uint8), out.view(torch.uint8)
        grid = (heads, triton.cdiv(n_rows, _BR), triton.cdiv(n_cols, _BC))
        _slot_tiles_kernel[grid](s8, rs, rv, cs, cv, o, n_rows, n_cols, *s.shape[1:], *s8.stride(), *o.stride(), rs_h,
                                 rv_h, cs_h, cv_h, r_slot.shape[2], c_slot.shape[2], ACCUMULATE=accumulate,
                                 REVERSE=reverse, BR=_BR, BC=_BC)  # fmt: skip
    return out
