"""Phase estimates of many Grid units in one launch, where each unit's stride is known (``stride="frame"`` or a
fixed stride: one candidate).

The specification is mmi_core's `estimate_stride_phase` with one candidate: per unit (a head, or a GQA group whose
heads' log scores are averaged), the excess of each residue ``r`` of the stride ``s``

    excess[r] = (sum of the signal keys' scores on r + mu · neutral folded keys on r) / max(folded keys on r, 1) - mu

with ``mu`` the mean score of the signal keys (`grid_fold_excess`: neutral keys count with the mean), ``-inf`` on
residues without a folded key; the ``lines`` best residues, ties to the lowest (the phase first; past ``s`` entries
repeat the phase); ``0 … lines-1`` (mod ``s``) when no excess is positive. A layer's boundary heads estimate one
Grid per (sub-problem, unit), each ~17 host ops in PyTorch; here every unit's excess is one program of one launch
(masks of each unit's sub-problem in a ``[P, W]`` table, scores of its heads in ``[R, W]`` rows) and the selection a
few ops over all units (a sort of ``[U, stride]``).

The sums run in another order than PyTorch's ``index_add``, so an excess may differ in its last bits: units whose
two best residues tie to fp32 rounding may pick the other one. The tests compare on tie-free inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mmi_core import to_device

__all__ = ["MAX_STRIDE", "grid_phases", "grid_phases_reference"]

MAX_STRIDE = 4096
"""Largest stride one program holds (its per-residue sums live in registers); larger strides: PyTorch."""


@triton.jit
def _grid_excess_kernel(SCORES, FOLD, SIGNAL, UNITS, OUT, width, n_heads_max,
                        S_PAD: tl.constexpr, CH: tl.constexpr):  # fmt: skip
    u = tl.program_id(0).to(tl.int64)
    meta = UNITS + u * (n_heads_max + 3)  # [problem, stride, keys, rows ... (-1 padding)]
    p = tl.load(meta)
    s = tl.load(meta + 1)
    n_k = tl.load(meta + 2)
    n_heads = 0.0
    for i in range(n_heads_max):
        n_heads += (tl.load(meta + 3 + i) >= 0).to(tl.float32)
    r = tl.arange(0, S_PAD)
    c = tl.arange(0, CH)
    sig_sum = tl.zeros([CH, S_PAD], tl.float32)
    n_fold = tl.zeros([CH, S_PAD], tl.float32)
    n_sig = tl.zeros([CH, S_PAD], tl.float32)
    for base in range(0, n_k, CH * s):  # CH consecutive periods of the stride per step
        j = base + c[:, None] * s + r[None, :]
        ok = (r[None, :] < s) & (j < n_k)
        fold = tl.load(FOLD + p * width + j, mask=ok, other=0) != 0
        sig = tl.load(SIGNAL + p * width + j, mask=ok, other=0) != 0
        ks = tl.zeros([CH, S_PAD], tl.float32)
        for i in range(n_heads_max):  # the unit's mean score over its heads' rows
            row = tl.load(meta + 3 + i)
            ks += tl.load(SCORES + row * width + j, mask=sig & (row >= 0), other=0.0)
        sig_sum += tl.where(sig, tl.div_rn(ks, n_heads), 0.0)
        n_fold += fold.to(tl.float32)
        n_sig += sig.to(tl.float32)
    per_r = tl.sum(sig_sum, 0)
    folded = tl.sum(n_fold, 0)
    neutral = folded - tl.sum(n_sig, 0)
    # IEEE divisions (Triton's default fp32 division is approximate): uniform scores must give an excess of exactly
    # 0, as in PyTorch, or the "no positive excess" default would turn on rounding noise
    mu = tl.div_rn(tl.sum(per_r, 0), tl.maximum(tl.sum(tl.sum(n_sig, 0), 0), 1.0))
    excess = tl.div_rn(per_r + mu * neutral, tl.maximum(folded, 1.0)) - mu
    excess = tl.where((r < s) & (folded > 0), excess, float("-inf"))
    tl.store(OUT + u * S_PAD + r, excess)


def grid_phases(
    scores: torch.Tensor,
    units: list[tuple[int, int, list[int]]],
    fold: torch.Tensor,
    signal: torch.Tensor,
    ends: list[int],
    lines: int,
) -> torch.Tensor:
    """Residues int64 ``[U, lines]`` (column 0: the phase) of ``units`` ``(problem, stride, score rows)``: a unit's
    key scores are the mean of its rows of ``scores`` (fp32 ``[R, W]``, `grid_key_scores` per head; entries past
    its problem's keys are never read), folded with masks ``fold`` / ``signal`` (bool ``[P, W]``, row
    ``problem``: `mmi_core.grid_key_mask`'s fold and fold-and-not-neutral) over the problem's ``ends[problem]``
    keys. One program per unit (Triton on CUDA or under ``TRITON_INTERPRET=1``; `grid_phases_reference`
    otherwise). Raises ValueError for strides outside ``[1, MAX_STRIDE]``, units without rows, a problem or end
    that does not fit, mismatched shapes or ``lines < 1``."""
    from mmi_kernels.dispatch import triton_runs

    if scores.dim() != 2 or fold.shape != signal.shape or fold.dim() != 2 or fold.shape[1] != scores.shape[1]:
        raise ValueError(f"scores [R, W] and masks [P, W] expected, got {tuple(scores.shape)}, {tuple(fold.shape)}")
    if lines < 1 or len(ends) != fold.shape[0] or any(not 0 <= e <= fold.shape[1] for e in ends):
        raise ValueError(f"need lines >= 1 and one end in [0, {fold.shape[1]}] per mask row, got {lines}, {ends}")
    for p, s, rows in units:
        if not 1 <= s <= MAX_STRIDE or not rows or not 0 <= p < fold.shape[0]:
            raise ValueError(f"unit ({p}, {s}, {rows}): need a stride in [1, {MAX_STRIDE}], rows and a problem row")
    if not units:
        return torch.zeros(0, lines, dtype=torch.int64, device=scores.device)
    if not triton_runs(scores):
        return grid_phases_reference(scores, units, fold, signal, ends, lines)
    heads = max(len(rows) for _, _, rows in units)
    table = [v for p, s, rows in units for v in (p, s, ends[p], *rows, *[-1] * (heads - len(rows)))]
    s_pad = triton.next_power_of_2(max(s for _, s, _ in units))
    excess = torch.empty(len(units), s_pad, dtype=torch.float32, device=scores.device)
    _grid_excess_kernel[(len(units),)](
        scores.contiguous(), fold.contiguous().view(torch.uint8), signal.contiguous().view(torch.uint8),
        to_device(table, scores.device), excess, scores.shape[1], heads, S_PAD=s_pad, CH=max(1, 2048 // s_pad),
    )  # fmt: skip
    # the selection of `estimate_stride_phase`, for every unit at once: the best residues (a stable sort: ties to
    # the lowest; residues past a unit's stride are -inf, after its own), the phase repeated past the stride, the
    # default residues where no excess is positive
    dev = scores.device
    top = torch.sort(excess, dim=1, descending=True, stable=True).indices[:, : min(lines, s_pad)]
    if top.shape[1] < lines:
        top = torch.cat([top, top[:, :1].expand(-1, lines - top.shape[1])], dim=1)
    stride = to_device([s for _, s, _ in units], dev)[:, None]
    line = torch.arange(lines, device=dev)[None, :]
    top = torch.where(line < stride, top, top[:, :1])
    return torch.where((excess.amax(1) > 0)[:, None], top, line % stride)


def grid_phases_reference(
    scores: torch.Tensor,
    units: list[tuple[int, int, list[int]]],
    fold: torch.Tensor,
    signal: torch.Tensor,
    ends: list[int],
    lines: int,
) -> torch.Tensor:
    """`grid_phases` through mmi_core: `estimate_stride_phase` per unit on its problem's keys (the
    specification)."""
    from mmi_core.estimation import GridFold, estimate_stride_phase

    out = []
    for p, s, rows in units:
        n = ends[p]
        ks = scores[rows, :n].mean(0, keepdim=True)
        gf = GridFold.from_masks(fold[p, :n].bool(), fold[p, :n].bool() & ~signal[p, :n].bool())
        out.append(estimate_stride_phase(ks, gf, [s], lines)[1].to(scores.device))
    return torch.cat(out)
