"""Seeded synthetic VLM attention workloads: ``(q, k, v, layout)`` with planted, known structure.

Each workload draws its layout and content from the frozen ranges of ``synthetic_spec.json`` (`SyntheticSpec`), so
the difficulty is fixed independently of the estimator. The logit of query ``i`` and key ``j`` of head ``h`` is built
exactly as a sum of interpretable terms (then hidden by a random orthogonal rotation per KV head)::

    logit = sharpness_h · ( content_h · <c_i, c_j>          # token content (unit vectors)
                          + sum_f local_h/F · cos(w_f (i - o - j)) over planted offsets o   # rotary-like positions
                          + sink_h · [j is a sink] + salient_h · sal_j + heavy_h · [j heavy hitter]
                          + newline_h · [j is a newline/separator token] )

- Video tokens: the content of spatial patch ``p`` in frame ``f`` is a spatially blurred base vector of ``p`` plus a
  mean-reverting drift over frames plus token noise; merged frames (``temporal_merge``) average the drifts of the
  input frames. Off-grid tokens (per-row newlines, per-frame timestamps/separators) share one newline vector.
  A few *salient patches* per KV head (one primary, weaker secondaries) are salient in every frame: vertical grid
  lines. Same-patch content across frames makes the grid's diagonals (slashes spaced by the frame size).
- Text tokens: topic vectors plus noise; per KV head a few *heavy hitters* (vertical lines); vertical-slash heads also
  get planted diagonal offsets (slash lines) through the rotary-like positions.
- Planted head kinds: ``"grid"`` (strong content matching + salient patches), ``"vertical_slash"`` (heavy hitters,
  slashes, local) and ``"a_shape"`` (sinks + strong local). Ground truth per head is in `SyntheticWorkload`.
- ``"mixed"`` workloads (spec version 2, ``spec.mixed``): a text prefix, 2-5 visual segments (videos sharing one grid,
  images as one-frame grids of their own size) with subtitle text between them and a question at the very end
  (~25% text). Cross-modal structure: the question's rows of every head match a *needle* (a few patches of one
  frame of one video); in heads drawn with ``video_subtitle_probability`` the rows of a video match the subtitle
  segment right before it. Both are extra terms on the queries' content part (strengths per planted kind, logit
  units); positions and strengths are in ``params["mixed"]``. Video content differs per video segment.

The stride of a grid head is the frame size (tokens per frame after merging, newline tokens included); its phase is
the residue ``pos mod stride`` of the primary salient patch in the first video segment (a text prefix shifts it).

Large N: every random table is drawn on the CPU from generators seeded per 65,536-token chunk (so a workload is the
same on every device), q/k/v are built on ``device`` in chunks; memory is ``O(N · D)``, never ``O(N²)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from mmi_core.layout import Modality, ModalityLayout, VisualGrid

__all__ = [
    "HeadKind",
    "SyntheticSpec",
    "SyntheticWorkload",
    "WorkloadKind",
    "default_spec",
    "format_table",
    "held_out_seeds",
    "recall_density_table",
    "synthetic_workload",
]

HeadKind = Literal["grid", "vertical_slash", "a_shape"]
WorkloadKind = Literal["video", "interleaved", "text", "mixed"]

_CHUNK = 65536
_POS_FREQS = 8
_ROPE_BASE = 10000.0
_DRIFT_RHO = 0.9  # frame-to-frame correlation of the content drift
_AUX = 4  # sink, salient, heavy-hitter, newline dims


class SyntheticSpec(BaseModel):
    """The frozen parameter ranges (``synthetic_spec.json``): ``[lo, hi]`` pairs or lists of choices."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int
    about: str
    dev_seeds: tuple[int, int]
    held_out_seeds: tuple[int, int]
    layout: dict[str, Any]
    content: dict[str, Any]
    heads: dict[str, Any]
    mixed: dict[str, Any] = Field(default_factory=dict)  # version >= 2: ranges of the "mixed" workload


@cache
def default_spec() -> SyntheticSpec:
    """The committed spec shipped with mmi-core."""
    text = resources.files("mmi_core").joinpath("synthetic_spec.json").read_text()
    return SyntheticSpec.model_validate(json.loads(text))


def held_out_seeds(count: int, spec: SyntheticSpec | None = None) -> list[int]:
    """The first ``count`` held-out seeds (reserved for final accuracy tests and benchmarks, never for tuning)."""
    lo, hi = (spec or default_spec()).held_out_seeds
    if count > hi - lo + 1:
        raise ValueError(f"only {hi - lo + 1} held-out seeds exist, {count} asked")
    return list(range(lo, lo + count))


@dataclass(frozen=True)
class SyntheticWorkload:
    """One generated workload. ``q [n_q, Hq, D]`` (the last ``n_q`` tokens), ``k, v [N, Hkv, D]``, ``layout`` over N.

    Ground truth per query head: ``head_kinds``; ``strides``/``phases`` (grid heads; None otherwise, and None when
    the layout has no video); ``slash_offsets`` (planted diagonals of vertical-slash heads). ``params`` holds every
    drawn value (for reports).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: ModalityLayout
    seed: int
    head_kinds: tuple[HeadKind, ...]
    strides: tuple[int | None, ...]
    phases: tuple[int | None, ...]
    slash_offsets: tuple[tuple[int, ...], ...]
    params: dict[str, Any] = field(default_factory=dict)


class _Draw:
    """Uniform draws from spec ranges with one CPU generator."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def uniform(self, lohi: list[float] | tuple[float, float]) -> float:
        lo, hi = float(lohi[0]), float(lohi[1])
        return lo + (hi - lo) * float(torch.rand((), generator=self.g))

    def integer(self, lohi: list[int] | tuple[int, int]) -> int:
        return int(torch.randint(int(lohi[0]), int(lohi[1]) + 1, (), generator=self.g))

    def choice(self, options: list[Any]) -> Any:
        return options[int(torch.randint(len(options), (), generator=self.g))]

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def perm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.g)


def _chunked_randn(seed: int, n: int, dim: int) -> torch.Tensor:
    """[n, dim] standard normals, drawn per fixed-size chunk from generators seeded by (seed, chunk)."""
    out = torch.empty(n, dim)
    for c, a in enumerate(range(0, n, _CHUNK)):
        b = min(a + _CHUNK, n)
        out[a:b] = torch.randn(b - a, dim, generator=torch.Generator().manual_seed(seed * 7919 + c + 1))
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _default_kinds(workload: WorkloadKind, num_q_heads: int) -> tuple[HeadKind, ...]:
    cycle: tuple[HeadKind, ...] = (
        ("vertical_slash", "a_shape") if workload == "text" else ("grid", "vertical_slash", "a_shape")
    )
    return tuple(cycle[h % len(cycle)] for h in range(num_q_heads))


def _layout(d: _Draw, spec: SyntheticSpec, workload: WorkloadKind, target: int) -> tuple[ModalityLayout, int]:
    """Draw the layout; returns it and the temporal merge factor."""
    ls = spec.layout
    if workload == "text":
        return ModalityLayout.text(target), 1
    grid_kw = dict(
        rows=d.integer(ls["rows"]),
        cols=d.integer(ls["cols"]),
        row_extra=d.choice(ls["row_extra"]),
        frame_prefix=d.choice(ls["frame_prefix"]),
        frame_suffix=d.choice(ls["frame_suffix"]),
    )
    merge = d.choice(ls["temporal_merge"])
    prefix, suffix = d.integer(ls["text_prefix"]), d.integer(ls["text_suffix"])
    tpf = VisualGrid(frames=1, **grid_kw).tokens_per_frame
    if workload == "video":
        frames = max(int(ls["min_frames"]), (target - prefix - suffix) // tpf)
        parts = [("text", prefix), ("video", VisualGrid(frames=frames, **grid_kw)), ("text", suffix)]
    elif workload == "mixed":
        parts = _mixed_parts(d, spec, grid_kw, tpf, target)
    else:
        gap = d.integer(ls["interleave_gap"])
        frames = max(int(ls["min_frames"]), (target - prefix - suffix - gap) // (2 * tpf))
        vg = VisualGrid(frames=frames, **grid_kw)
        parts = [("text", prefix), ("video", vg), ("text", gap), ("video", vg), ("text", suffix)]
    return ModalityLayout.from_parts(parts), merge


def _split(d: _Draw, total: int, parts: int, minimum: int) -> list[int]:
    """``total`` split into ``parts`` integers >= ``minimum`` with random (uniform-weight) proportions."""
    if parts == 0:
        return []
    free = max(total - parts * minimum, 0)
    w = torch.rand(parts, generator=d.g) + 1e-3
    sizes = [int(x) for x in torch.floor(free * w / w.sum()).tolist()]
    sizes[int(torch.argmax(w))] += free - sum(sizes)
    return [minimum + x for x in sizes]


def _mixed_parts(d: _Draw, spec: SyntheticSpec, grid_kw: dict[str, Any], tpf: int, target: int) -> list[Any]:
    """Layout parts of a ``"mixed"`` workload (ranges in ``spec.mixed``): a text prefix, then 2-5 visual segments
    (videos sharing one grid; images are one-frame grids of their own size) with a subtitle text segment between
    consecutive ones, and the question at the very end. Text share ~ ``text_share`` of the final token count."""
    ms = spec.mixed
    if not ms:
        raise ValueError("this spec has no 'mixed' section (spec version >= 2 needed)")
    k = d.integer(ms["visual_segments"])
    is_image = [float(torch.rand((), generator=d.g)) < float(ms["image_probability"]) for _ in range(k)]
    if all(is_image):
        is_image[d.integer([0, k - 1])] = False  # at least one video: the question's needle lives in a frame
    images = [
        VisualGrid(frames=1, rows=d.integer(ms["image_rows"]), cols=d.integer(ms["image_cols"])) if im else None
        for im in is_image
    ]
    share = d.uniform(ms["text_share"])
    image_tokens = sum(g.num_tokens for g in images if g is not None)
    n_video = k - sum(is_image)
    min_frames = int(ms["min_frames_per_video"])
    video_frames = max(int(target * (1.0 - share)) - image_tokens, 0) // tpf
    frames = _split(d, max(video_frames, n_video * min_frames), n_video, min_frames)
    visual_tokens = image_tokens + sum(frames) * tpf
    text = max(round(share * visual_tokens / (1.0 - share)), k + 1)
    question = min(d.integer(ms["question"]), max(text // (k + 1), 1))
    prefix = min(round(d.uniform(ms["text_prefix_share"]) * text), text - question - (k - 1))
    gaps = _split(d, text - question - prefix, k - 1, 1)  # subtitles / interleaved text between visual items
    parts: list[Any] = [("text", prefix)]
    fi = iter(frames)
    for i, g in enumerate(images):
        if i:
            parts.append(("text", gaps[i - 1]))
        parts.append(("image", g) if g is not None else ("video", VisualGrid(frames=next(fi), **grid_kw)))
    parts.append(("text", question))
    return parts


@dataclass(frozen=True)
class _Cross:
    """Planted cross-modal terms of a ``"mixed"`` workload, added to the content part of the queries.
    ``needle [dc]``, ``question`` = (start, end) of the question segment, ``needle_w [Hq]`` (logit units);
    ``subtitles [S, dc]``, ``sub_of [N]`` int64 (the subtitle a video token's rows attend, -1 none), ``sub_w [Hq]``."""

    needle: torch.Tensor
    question: tuple[int, int]
    needle_w: torch.Tensor
    subtitles: torch.Tensor
    sub_of: torch.Tensor
    sub_w: torch.Tensor
    info: dict[str, Any]

    def extra(self, lo: int, b: int, h: int) -> torch.Tensor | None:
        """[b - lo, dc] added to query rows ``[lo, b)`` of head ``h`` (before the head's sharpness), or None."""
        out = torch.zeros(b - lo, self.needle.shape[0])
        qa, qb = max(self.question[0], lo), min(self.question[1], b)
        if qa < qb:
            out[qa - lo : qb - lo] += float(self.needle_w[h]) * self.needle
        sid = self.sub_of[lo:b]
        on = sid >= 0
        if bool(on.any()) and float(self.sub_w[h]) > 0:
            out[on] += float(self.sub_w[h]) * self.subtitles[sid[on]]
        return out


def _plant_mixed(
    d: _Draw, spec: SyntheticSpec, layout: ModalityLayout, content: torch.Tensor, kinds: Sequence[HeadKind]
) -> _Cross:
    """Plant the needle (a run of patches in one frame of one video, matched by the question's rows) and the
    subtitles (each text segment between visual items gets a vector; the rows of the video right after it match it,
    in heads drawn with probability ``video_subtitle_probability``). Modifies ``content`` (not yet unit) in place."""
    ms = spec.mixed
    n, dc = content.shape
    segs = layout.segments
    videos = layout.segments_of(Modality.VIDEO)
    vseg = videos[d.integer([0, len(videos) - 1])]
    grid = vseg.grid
    assert grid is not None
    n_patch = grid.rows * grid.cols
    width = min(d.integer(ms["needle_patches"]), n_patch)
    frame, p0 = d.integer([0, grid.frames - 1]), d.integer([0, n_patch - width])
    on = torch.nonzero(grid.on_grid_mask()).flatten()
    needle_pos = vseg.start + on[frame * n_patch + p0 : frame * n_patch + p0 + width]
    needle = _unit(d.randn(dc))
    content[needle_pos] += d.uniform(ms["needle_content"]) * needle
    question = (segs[-1].start, segs[-1].end)
    needle_w = torch.tensor([d.uniform(ms["question_needle"][kind]) for kind in kinds])
    sub_of = torch.full((n,), -1, dtype=torch.int64)
    subs: list[torch.Tensor] = []
    sub_segments: list[tuple[int, int]] = []
    for i in range(1, len(segs) - 1):
        if segs[i].modality != Modality.TEXT:
            continue
        vec = _unit(d.randn(dc))
        content[segs[i].start : segs[i].end] += d.uniform(ms["subtitle_content"]) * vec
        if segs[i + 1].modality == Modality.VIDEO:
            sub_of[segs[i + 1].start : segs[i + 1].end] = len(subs)
        subs.append(vec)
        sub_segments.append((segs[i].start, segs[i].end))
    sub_w = torch.tensor(
        [
            d.uniform(ms["video_subtitle"][kind])
            if float(torch.rand((), generator=d.g)) < float(ms["video_subtitle_probability"])
            else 0.0
            for kind in kinds
        ]
    )
    info = {
        "needle_positions": needle_pos.tolist(),
        "needle_frame": frame,
        "needle_video_start": vseg.start,
        "question": question,
        "question_needle": needle_w.tolist(),
        "subtitle_segments": sub_segments,
        "video_subtitle": sub_w.tolist(),
        "text_share": layout.num_tokens_of(Modality.TEXT) / max(layout.num_tokens, 1),
    }
    return _Cross(needle, question, needle_w, torch.stack(subs) if subs else torch.zeros(0, dc), sub_of, sub_w, info)


def synthetic_workload(
    seed: int,
    *,
    workload: WorkloadKind = "video",
    num_tokens: int = 4096,
    num_q_heads: int = 3,
    num_kv_heads: int = 3,
    head_dim: int = 64,
    n_q: int | None = None,
    head_kinds: tuple[HeadKind, ...] | None = None,
    spec: SyntheticSpec | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SyntheticWorkload:
    """Generate one workload.

    ``num_tokens`` is a target: video layouts round it to whole frames (at least ``min_frames``), so read
    ``layout.num_tokens``. ``n_q`` (default all) is how many trailing tokens get queries. ``head_kinds`` (one per
    query head) defaults to cycling grid / vertical_slash / a_shape (vertical_slash / a_shape for text).
    Raises ValueError for ``head_dim < 32``, heads that do not divide, or ``n_q`` outside ``[0, N]``.
    """
    spec = spec or default_spec()
    if head_dim < 2 * _POS_FREQS + _AUX + 12:
        raise ValueError(f"head_dim must be >= {2 * _POS_FREQS + _AUX + 12} to hold the planted structure")
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    kinds = head_kinds or _default_kinds(workload, num_q_heads)
    if len(kinds) != num_q_heads:
        raise ValueError(f"{len(kinds)} head kinds for {num_q_heads} query heads")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    d = _Draw(seed)
    layout, merge = _layout(d, spec, workload, num_tokens)
    n = layout.num_tokens
    n_q = n if n_q is None else n_q
    if not 0 <= n_q <= n:
        raise ValueError(f"n_q {n_q} must be within [0, {n}]")
    dc = head_dim - 2 * _POS_FREQS - _AUX
    cs, hs = spec.content, spec.heads

    # -- token content ------------------------------------------------------------------------------------------
    noise = _chunked_randn(seed, n, dc) / math.sqrt(dc)
    content = torch.zeros(n, dc)
    is_newline = torch.zeros(n, dtype=torch.bool)
    sal_patch = torch.full((n,), -1, dtype=torch.int64)  # spatial patch id of on-grid video tokens
    newline_vec = _unit(d.randn(dc))
    topics = _unit(d.randn(d.integer(cs["text_topics"]), dc))
    topic_noise = d.uniform(cs["text_topic_noise"])
    token_noise, drift = d.uniform(cs["token_noise"]), d.uniform(cs["drift"])
    blur, nl_noise = d.uniform(cs["spatial_blur"]), d.uniform(cs["newline_noise"])
    first_video_start = None
    for seg in layout.segments:
        a, b = seg.start, seg.end
        if seg.modality == Modality.TEXT:
            z = torch.randint(topics.shape[0], (b - a,), generator=d.g)
            content[a:b] = topics[z] + topic_noise * noise[a:b]
            continue
        grid = seg.grid
        assert grid is not None
        first_video_start = a if first_video_start is None else first_video_start
        rr, cc = torch.meshgrid(torch.arange(grid.rows), torch.arange(grid.cols), indexing="ij")
        coords = torch.stack([rr.flatten(), cc.flatten()], 1).float()
        kernel = torch.exp(-torch.cdist(coords, coords).pow(2) / (2 * blur**2))
        base = _unit(kernel @ d.randn(grid.rows * grid.cols, dc))  # [P, dc], neighbours similar
        seg_merge = merge if seg.modality == Modality.VIDEO else 1  # images are one unmerged frame
        raw_frames = grid.frames * seg_merge
        steps = d.randn(raw_frames, grid.rows * grid.cols, dc) / math.sqrt(dc)
        walk = torch.empty_like(steps)
        walk[0] = steps[0]
        for f in range(1, raw_frames):  # mean-reverting drift, stationary std `drift`
            walk[f] = _DRIFT_RHO * walk[f - 1] + math.sqrt(1 - _DRIFT_RHO**2) * steps[f]
        walk = walk.reshape(grid.frames, seg_merge, -1, dc).mean(1) * drift
        on_grid = grid.on_grid_mask()
        idx = torch.arange(a, b)
        patch_of = torch.cumsum(on_grid.long(), 0) - 1  # running index of on-grid tokens
        frame_of = torch.div(patch_of, grid.rows * grid.cols, rounding_mode="floor")
        patch = torch.remainder(patch_of, grid.rows * grid.cols)
        g_idx, o_idx = idx[on_grid], idx[~on_grid]
        content[g_idx] = base[patch[on_grid]] + walk[frame_of[on_grid], patch[on_grid]] + token_noise * noise[g_idx]
        content[o_idx] = newline_vec + nl_noise * noise[o_idx]
        is_newline[o_idx] = True
        if seg.modality == Modality.VIDEO:  # salient patches are video patches (images have their own grid)
            sal_patch[g_idx] = patch[on_grid]
    cross = _plant_mixed(d, spec, layout, content, kinds) if workload == "mixed" else None
    content = _unit(content)

    # -- per KV head key features ---------------------------------------------------------------------------------
    n_sink = d.integer(spec.layout["sinks"])
    video_grid = layout.segments_of(Modality.VIDEO)[0].grid if first_video_start is not None else None
    n_patches = video_grid.rows * video_grid.cols if video_grid else 0
    text_pos = torch.nonzero(layout.token_modalities() == int(Modality.TEXT)).flatten()
    sal = torch.zeros(num_kv_heads, n)
    heavy = torch.zeros(num_kv_heads, n)
    phases_kv: list[int | None] = []
    salient_kv: list[dict[int, float]] = []
    gs = hs["grid"]
    for j in range(num_kv_heads):
        if video_grid is not None:
            order = d.perm(n_patches)
            n_sec = min(d.integer(gs["salient_secondary_count"]), n_patches - 1)
            strength = torch.zeros(n_patches)
            strength[order[0]] = 1.0
            for p in order[1 : 1 + n_sec].tolist():
                strength[p] = d.uniform(gs["salient_secondary_ratio"])
            sal[j] = torch.where(sal_patch >= 0, strength[sal_patch.clamp_min(0)], torch.zeros(n))
            on_primary = torch.nonzero(sal_patch == order[0]).flatten()
            phases_kv.append(int(on_primary[0]) % video_grid.tokens_per_frame)
            salient_kv.append({int(p): float(strength[p]) for p in torch.nonzero(strength).flatten()})
        else:
            phases_kv.append(None)
        if text_pos.numel():
            hh = text_pos[d.perm(text_pos.numel())[: d.integer(hs["vertical_slash"]["heavy_hitters"])]]
            heavy[j, hh] = 1.0

    # -- per query head coefficients ------------------------------------------------------------------------------
    g = num_q_heads // num_kv_heads
    coef = []  # (sharpness, content, local, offsets, sink, salient, heavy, newline)
    slash_offsets: list[tuple[int, ...]] = []
    for h in range(num_q_heads):
        kind = kinds[h]
        ks = hs[kind]
        sharp, sink = d.uniform(hs["sharpness"]), d.uniform(hs["sink"])
        offsets: tuple[int, ...] = (0,)
        heavy_w, local_amp = 0.0, d.uniform(ks["local"])
        if kind == "vertical_slash":
            count = d.integer(ks["slash_count"])
            offsets = (0, *sorted({d.integer(ks["slash_offset"]) for _ in range(count)}))
            heavy_w = d.uniform(ks["heavy_hitter_strength"])
        if kind == "a_shape":
            sink += d.uniform(ks["sink_extra"])
        salient = d.uniform(ks["salient_primary"])
        amps = (
            (local_amp,) + (d.uniform(ks["slash_strength"]),) * (len(offsets) - 1)
            if kind == "vertical_slash"
            else (local_amp,)
        )
        coef.append((sharp, d.uniform(ks["content"]), amps, offsets, sink, salient, heavy_w, d.uniform(ks["newline"])))
        slash_offsets.append(offsets[1:])

    rotations = [torch.linalg.qr(d.randn(head_dim, head_dim))[0] for _ in range(num_kv_heads)]
    v_cpu = _chunked_randn(seed + 104729, n, num_kv_heads * head_dim).reshape(n, num_kv_heads, head_dim)

    # -- assemble on device, in chunks ----------------------------------------------------------------------------
    dev = torch.device(device)
    freqs = _ROPE_BASE ** (-torch.arange(_POS_FREQS, dtype=torch.float64) / _POS_FREQS)
    k_out = torch.empty(n, num_kv_heads, head_dim, dtype=dtype, device=dev)
    q_out = torch.empty(n_q, num_q_heads, head_dim, dtype=dtype, device=dev)
    sink_flag = (torch.arange(n) < n_sink).float()
    rot = [r.to(dev) for r in rotations]
    sqrt_d = math.sqrt(head_dim)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        pos = torch.arange(a, b, dtype=torch.float64)
        ang = pos[:, None] * freqs[None, :]
        pos_k = torch.cat([torch.cos(ang), torch.sin(ang)], 1).float()  # [c, 2F]
        c = content[a:b]
        for j in range(num_kv_heads):
            aux = torch.stack([sink_flag[a:b], sal[j, a:b], heavy[j, a:b], is_newline[a:b].float()], 1)
            k_out[a:b, j] = (torch.cat([c, pos_k, aux], 1).to(dev) @ rot[j]).to(dtype)
        lo = max(a, n - n_q)
        if lo >= b:
            continue
        qpos = torch.arange(lo, b, dtype=torch.float64)
        cq = content[lo:b]
        for h in range(num_q_heads):
            sharp, w_c, amps, offsets, sink, salient, heavy_w, newline = coef[h]
            pos_q = torch.zeros(b - lo, 2 * _POS_FREQS, dtype=torch.float64)
            for amp, off in zip(amps, offsets, strict=True):
                ang = (qpos - off)[:, None] * freqs[None, :]
                pos_q += amp / _POS_FREQS * torch.cat([torch.cos(ang), torch.sin(ang)], 1)
            aux = torch.tensor([sink, salient, heavy_w, newline]).expand(b - lo, _AUX)
            cpart = w_c * cq
            if cross is not None:  # mixed: question rows match the needle, video rows their subtitle
                cpart = cpart + cross.extra(lo, b, h)
            raw = sharp * sqrt_d * torch.cat([cpart, pos_q.float(), aux], 1)
            q_out[lo - (n - n_q) : b - (n - n_q), h] = (raw.to(dev) @ rot[h // g]).to(dtype)
    tpf = layout.tokens_per_frame
    strides = tuple(tpf if kinds[h] == "grid" and tpf else None for h in range(num_q_heads))
    phases = tuple(phases_kv[h // g] if kinds[h] == "grid" else None for h in range(num_q_heads))
    params = {
        "workload": workload,
        "temporal_merge": merge,
        "sinks": n_sink,
        "drift": drift,
        "token_noise": token_noise,
        "tokens_per_frame": tpf,
        "salient_patches": salient_kv,
        **({"mixed": cross.info} if cross is not None else {}),
        "heads": [
            {
                "kind": kinds[h],
                "sharpness": cf[0],
                "content": cf[1],
                "local": cf[2],
                "offsets": cf[3],
                "sink": cf[4],
                "salient": cf[5],
                "heavy": cf[6],
                "newline": cf[7],
            }
            for h, cf in enumerate(coef)
        ],
    }
    return SyntheticWorkload(
        q=q_out,
        k=k_out,
        v=v_cpu.to(dev, dtype),
        layout=layout,
        seed=seed,
        head_kinds=tuple(kinds),
        strides=strides,
        phases=phases,
        slash_offsets=tuple(slash_offsets),
        params=params,
    )


# -- evaluation: recall / density per pattern -------------------------------------------------------------------------
def _match_density(make: Any, lo: int, hi: int, measure: Any, target: float) -> tuple[Any, float]:
    """Bisect an integer budget in ``[lo, hi]`` so that ``measure(make(b))`` is the largest density ``<= target``
    (or the smallest budget when even that is denser)."""
    best = make(lo)
    best_d = measure(best)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cand = make(mid)
        d = measure(cand)
        if d <= target:
            lo, best, best_d = mid, cand, d
        else:
            hi = mid - 1
    return best, best_d


def recall_density_table(
    seeds: Sequence[int] | int = 4,
    *,
    workload: WorkloadKind = "video",
    num_tokens: int = 8192,
    sample: int = 256,
    block: int = 64,
    sink: int = 4,
    grid_lines: int = 1,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """Recall, density and output error of estimated selections per (planted head kind, pattern).

    ``seeds``: explicit seeds or a count of held-out seeds (`held_out_seeds`). Each workload has one query head per
    planted kind (grid, vertical_slash, a_shape; one KV head each). Patterns: ``grid`` (``stride="search"``,
    ``grid_lines`` lines, vertical lines and slashes but no horizontal lines: the synthetic heads plant none, and on
    dev seeds they cost ~2% density for no recall), and ``vertical_slash``, ``a_shape``, ``block_sparse`` with
    budgets bisected per workload so that their density on the first head (the grid head on video) is at most the
    Grid's measured density there ("same density"; 10% on text); a ``dense`` row gives the reference. All patterns use
    ``sink`` sink tokens and ``block``-sized blocks. Metrics on
    ``sample`` sampled query rows (`sample_rows`): `attention_recall`, `density`, and `output_error` against dense
    attention. Returns one dict per (head kind, pattern): means over seeds of ``recall``, ``density``,
    ``output_error``, and ``min_recall``, ``seeds``. Memory is dominated by the Grid builder's O(N²) pair mask.
    """
    from mmi_core.head_configs import HeadConfigs
    from mmi_core.layer import estimate_layer_selections
    from mmi_core.metrics import attention_recall, density, output_error, sample_rows
    from mmi_core.patterns import AShape, BlockSparse, Grid, VerticalSlash
    from mmi_core.reference import dense_attention_reference, sparse_attention_reference

    seed_list = held_out_seeds(seeds) if isinstance(seeds, int) else list(seeds)
    kinds = [] if workload == "text" else ["grid"]
    kinds += ["vertical_slash", "a_shape"]
    acc: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for seed in seed_list:
        w = synthetic_workload(
            seed,
            workload=workload,
            num_tokens=num_tokens,
            num_q_heads=len(kinds),
            num_kv_heads=len(kinds),
            head_kinds=tuple(kinds),  # type: ignore[arg-type]
            device=device,
        )
        n = w.layout.num_tokens
        rows = sample_rows(n, sample, seed=seed)
        o_ref = dense_attention_reference(w.q, w.k, w.v, rows=rows)

        def estimate(pattern: Any, w: SyntheticWorkload = w) -> list[Any]:
            hc = HeadConfigs.uniform(1, len(kinds), len(kinds), pattern, gqa="head")
            return estimate_layer_selections(w.q, w.k, w.layout, hc, 0)

        def measure_first(pattern: Any, w: SyntheticWorkload = w, rows: torch.Tensor = rows) -> float:
            hc = HeadConfigs.uniform(1, 1, 1, pattern)  # density of the first head only (the grid head on video)
            return density(estimate_layer_selections(w.q[:, :1], w.k[:, :1], w.layout, hc, 0)[0], rows)

        patterns: dict[str, Any] = {}
        estimated: dict[str, list[Any]] = {}
        if workload != "text":
            patterns["grid"] = Grid(stride="search", lines=grid_lines, hline=False, block=block, sink=sink)
            estimated["grid"] = estimate(patterns["grid"])
            target = density(estimated["grid"][0], rows)
        else:
            target = 0.1
        patterns["a_shape"], _ = _match_density(
            lambda b: AShape(sink=sink, local=b * block, block=block), 0, n // block, measure_first, target
        )
        patterns["vertical_slash"], _ = _match_density(
            lambda b: VerticalSlash(vertical=b * 16, slash=b, sink=sink, block=block),
            0,
            max(n // 32, 1),
            measure_first,
            target,
        )
        patterns["block_sparse"], _ = _match_density(
            lambda b: BlockSparse(top_k=b, block=block), 0, n // block, measure_first, target
        )
        for name, pattern in patterns.items():
            sels = estimated[name] if name in estimated else estimate(pattern)
            rec = attention_recall(w.q, w.k, sels, rows=rows)
            err = output_error(sparse_attention_reference(w.q, w.k, w.v, sels, rows=rows), o_ref, per_head=True)
            for h, kind in enumerate(kinds):
                acc.setdefault((kind, name), []).append((float(rec[h]), density(sels[h], rows), float(err[h])))
        for kind in kinds:
            acc.setdefault((kind, "dense"), []).append((1.0, 1.0, 0.0))
    table = []
    for (kind, name), vals in acc.items():
        t = torch.tensor(vals, dtype=torch.float64)
        table.append(
            {
                "head_kind": kind,
                "pattern": name,
                "recall": float(t[:, 0].mean()),
                "min_recall": float(t[:, 0].min()),
                "density": float(t[:, 1].mean()),
                "output_error": float(t[:, 2].mean()),
                "seeds": len(vals),
            }
        )
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    """The rows of `recall_density_table` as aligned text."""
    lines = [f"{'head kind':<15}{'pattern':<15}{'recall':>8}{'min':>8}{'density':>9}{'out err':>9}{'seeds':>7}"]
    for r in table:
        lines.append(
            f"{r['head_kind']:<15}{r['pattern']:<15}{r['recall']:>8.3f}{r['min_recall']:>8.3f}"
            f"{r['density']:>9.3f}{r['output_error']:>9.3f}{r['seeds']:>7}"
        )
    return "\n".join(lines)
