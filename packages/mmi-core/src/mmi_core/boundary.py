"""Q-boundary and 2D-boundary heads (MMInference's inter-modality patterns) as ONE `Selection` per head.

Semantics (the reference every kernel-side twin is tested against):

- Modalities TEXT, IMAGE and VIDEO are distinct. ``prefix = n_k - n_q`` cached tokens come first; query row ``i`` is
  original position ``prefix + i``. Causality is always on original positions (the `Selection` rule).
- **Sub-problem of a query modality m.** Let ``e`` be the end (exclusive, original position) of m's last segment that
  holds query rows. m's parameters are estimated on the truncated sequence ``[0, e)`` (queries ``[prefix, e)``), with
  the pattern's ``last_q`` clamped to the number of query rows of that last segment, so the last-query scores come
  only from rows **of modality m** (fewer than 64 rows work; one row works). Block-sparse patterns score the whole
  truncated chunk (their estimate is per query block anyway). The sub-selection ``S_m`` is built by the ordinary
  builders on ``(e - prefix, e)``; since every m row lies before ``e``, it covers all of them against all keys
  (keys at or after ``e`` are non-causal for them).
- **Transfer:** parameters are global positions (columns, diagonal offsets, grid stride/phase/lines, top blocks), so
  a selection estimated in the last video segment applies to every video row, earlier segments included (the
  paper's observation). Text parameters are applied only to text rows and never to vision rows (each modality has
  its own sub-problem).
- **Q-boundary** (``boundary == "q"``): rows of modality m keep the pairs of ``S_m`` with m's pattern
  ``spec.for_query(m)``, against all keys.
- **2D-boundary** (``boundary == "2d"``): rows of m keep, for each key modality n, the pairs of the sub-selection of
  pattern ``spec.for_pair(m, n)`` restricted to keys of modality n (pairs mapped to one pattern share one estimate).
  Limitation: the per-pair estimate scores m's last rows against **all** keys and then restricts to n's keys; it
  does not renormalise inside n.
- A modality with **no query rows** in the chunk has nothing to compute and no rule applies (its keys stay
  available to the other modalities' rows, as keys). Dense patterns give all causal pairs of their rows (and keys).
- **One head = one Selection.** The union of the groups' pairs is rounded onto ONE selection whose query and key
  orders are `modality_permutation` of the chunk and of the keys (all text, then image, then video, each in
  original order): a pair from a sub-selection's *blocks* keeps the tile of the new orders that holds it, a pair
  from a sub-selection's *columns* stays a single column of its new query block. So every query block runs ONE
  online softmax across all key modalities (no outputs merged afterwards), and the existing kernel, index
  (`SlotKeep` takes any q/k order and block set) and wrapper execute boundary heads unchanged. The rounding only
  adds pairs: ``keep_mask`` of the result is a superset of every group's pairs and every kept tile holds one.
- **A modality whose rows are fewer than one block** is estimated from its rows like any other; in the modality
  order its rows share a query block with the neighbouring modality's rows, and that block keeps the union of both
  groups' tiles (a superset, never a loss).
- **Grid inside video:** when video rows use a Grid pattern (Q: ``for_query(VIDEO)``; 2D: ``for_pair(VIDEO,
  VIDEO)``), video rows and video keys keep that estimate's grid order inside the modality order (the Grid
  sub-selection's permutations: every token after the last video segment is non-video, so they extend unchanged).
  Otherwise each modality keeps original order (`modality_permutation`). Other pairs' pairs are rounded onto these
  orders like any others.

Memory: ``O(n_q · n_k)`` bool pair masks (reference only; kernels use the index twins).
"""

from __future__ import annotations

import torch

from mmi_core.layout import Modality, ModalityLayout
from mmi_core.patterns import Dense, Grid, PatternConfig, VerticalSlash
from mmi_core.permutation import Permutation
from mmi_core.selection import Selection, dense_selection, keep_mask

__all__ = ["boundary_selection", "modality_last_rows", "sub_problem", "uses_grid_order"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def modality_last_rows(layout: ModalityLayout, n_q: int) -> dict[Modality, tuple[int, int]]:
    """For each modality with query rows among the last ``n_q`` tokens: ``(e, rows)`` = end (exclusive original
    position) of its last segment holding query rows, and that segment's number of query rows (>= 1)."""
    prefix = layout.num_tokens - n_q
    out: dict[Modality, tuple[int, int]] = {}
    for s in layout.segments:
        if s.end > prefix and s.length > 0:
            out[s.modality] = (s.end, s.end - max(s.start, prefix))
    return out


def sub_problem(
    layout: ModalityLayout, cfg: PatternConfig, end: int, rows: int
) -> tuple[ModalityLayout, PatternConfig]:
    """What one query modality's sub-problem is estimated on (module docstring): the layout's first ``end`` tokens
    (``end`` is a segment end, so no segment is cut) and ``cfg`` with ``last_q`` clamped to the modality's ``rows``.
    Shared by this reference and `mmi_kernels.boundary_planner`, whose results must match exactly."""
    if isinstance(cfg, VerticalSlash | Grid):
        cfg = cfg.model_copy(update={"last_q": min(cfg.last_q, rows)})
    return ModalityLayout(end, tuple(s for s in layout.segments if s.end <= end)), cfg


def _sub_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: ModalityLayout,
    cfg: PatternConfig,
    end: int,
    rows: int,
    block: int,
    scale: float | None,
) -> Selection:
    """Selection of one query modality's sub-problem (module docstring) on ``(end - prefix, end)``.
    q [n_q, 1, D], k [n_k, 1, D] of one head."""
    from mmi_core.head_configs import HeadConfigs  # local: layer -> boundary -> layer would cycle at import
    from mmi_core.layer import estimate_layer_selections

    prefix = layout.num_tokens - q.shape[0]
    n_q_sub = end - prefix
    if isinstance(cfg, Dense):
        return dense_selection(n_q_sub, end, block)
    sub_layout, cfg = sub_problem(layout, cfg, end, rows)
    hc = HeadConfigs.uniform(1, 1, 1, cfg)
    sel = estimate_layer_selections(q[:n_q_sub], k[:end], sub_layout, hc, 0, scale=scale)[0]
    return sel if sel is not None else dense_selection(n_q_sub, end, block)


def uses_grid_order(spec: object) -> bool:
    """True when a boundary head's video rows use a Grid pattern, so its orders depend on the estimate (such heads
    never share an executing GQA group; see `mmi_core.layer`)."""
    from mmi_core.head_configs import HeadSpec

    if not isinstance(spec, HeadSpec) or spec.boundary not in ("q", "2d"):
        return False
    video = Modality.VIDEO
    return isinstance(spec.for_query(video) if spec.boundary == "q" else spec.for_pair(video, video), Grid)


def _grouped(base: torch.Tensor, modality: torch.Tensor, offset: int) -> Permutation:
    """``base`` (int64 [n] an order of the n tokens) stably grouped by modality (int [n], original index): text,
    image, video, each keeping its order in ``base``. With the identity base this is `modality_permutation`."""
    n = base.numel()
    rank = modality[base].to(torch.int64) * max(n, 1) + torch.arange(n)
    return Permutation(base[torch.argsort(rank)], offset)


def _parts(sel: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs from blocks, pairs from columns) of ``sel``, bool [n_q, n_k] original order, causal."""
    from_blocks = keep_mask(Selection(sel.block, sel.q_perm, sel.k_perm, sel.blocks, None))
    if sel.columns is None:
        return from_blocks, torch.zeros_like(from_blocks)
    empty = torch.zeros_like(sel.blocks)
    return from_blocks, keep_mask(Selection(sel.block, sel.q_perm, sel.k_perm, empty, sel.columns))


def boundary_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: ModalityLayout,
    spec: object,
    *,
    scale: float | None = None,
) -> Selection | None:
    """The `Selection` of one boundary head (``spec.boundary`` in ``"q"``, ``"2d"``), per the module docstring.

    ``q [n_q, 1, D]``, ``k [n_k, 1, D]`` (one query head and its KV head), token-major, any float dtype; ``layout``
    covers the ``n_k`` keys. ``spec`` is a `HeadSpec`. Returns ``None`` (dense) when every pattern is dense, or
    when ``n_q == 0``. Raises ValueError for another boundary kind or inconsistent shapes.
    """
    from mmi_core.head_configs import HeadSpec

    if not isinstance(spec, HeadSpec) or spec.boundary not in ("q", "2d"):
        raise ValueError(f"boundary_selection needs a HeadSpec with boundary 'q' or '2d', got {spec!r}")
    if q.dim() != 3 or k.dim() != 3 or q.shape[1] != 1 or k.shape[1] != 1:
        raise ValueError(f"q and k must be [tokens, 1, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    n_q, n_k = q.shape[0], k.shape[0]
    if layout.num_tokens != n_k or n_q > n_k:
        raise ValueError(f"layout has {layout.num_tokens} tokens, k {n_k}, q {n_q}: need layout == k >= q")
    if n_q == 0 or spec.is_dense:
        return None
    block = spec.block or 64
    prefix = n_k - n_q
    qmod = layout.token_modalities()[prefix:]
    kmod = layout.token_modalities()
    pair_b = torch.zeros(n_q, n_k, dtype=torch.bool)
    pair_c = torch.zeros(n_q, n_k, dtype=torch.bool)
    q_base, k_base = torch.arange(n_q), torch.arange(n_k)  # orders inside each modality (grid order for video)
    for m, (end, rows) in modality_last_rows(layout, n_q).items():
        if spec.boundary == "q":
            targets = {spec.for_query(m): torch.ones(n_k, dtype=torch.bool)}
        else:
            targets = {}
            for n in layout.modalities():
                p = spec.for_pair(m, n)
                targets[p] = targets.get(p, torch.zeros(n_k, dtype=torch.bool)) | (kmod == int(n))
        row_mask = qmod[: end - prefix] == int(m)
        for cfg, key_mask in targets.items():
            sub = _sub_selection(q, k, layout, cfg, end, rows, block, scale)
            video_cfg = spec.for_query(m) if spec.boundary == "q" else spec.for_pair(m, Modality.VIDEO)
            if m == Modality.VIDEO and isinstance(cfg, Grid) and cfg == video_cfg:
                # video rows and keys take this Grid estimate's order; every token after `end` is non-video
                q_base = torch.cat([sub.q_perm.order.cpu(), torch.arange(end - prefix, n_q)])
                k_base = torch.cat([sub.k_perm.order.cpu(), torch.arange(end, n_k)])
            fb, fc = _parts(sub)  # [end - prefix, end]
            pair_b[: end - prefix, :end] |= fb & row_mask[:, None] & key_mask[None, :end]
            pair_c[: end - prefix, :end] |= fc & row_mask[:, None] & key_mask[None, :end]
    pos = torch.arange(n_k)
    pair_b |= pos[None, :] == (prefix + torch.arange(n_q))[:, None]  # every row keeps its own position
    qp = _grouped(q_base, qmod, prefix)
    kp = _grouped(k_base, kmod, 0)
    nqb, nkb = _cdiv(n_q, block), _cdiv(n_k, block)
    pb = pair_b[qp.order][:, kp.order]
    pb = torch.nn.functional.pad(pb, (0, nkb * block - n_k, 0, nqb * block - n_q))
    blocks = pb.view(nqb, block, nkb, block).any(dim=3).any(dim=1)
    pc = torch.nn.functional.pad(pair_c[qp.order][:, kp.order], (0, 0, 0, nqb * block - n_q))
    columns = pc.view(nqb, block, n_k).any(dim=1)
    return Selection(block, qp, kp, blocks, columns)
