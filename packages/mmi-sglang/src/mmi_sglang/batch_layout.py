"""SGLang multimodal inputs -> `mmi_core.ModalityLayout` for one request (prefix + this extend chunk).

Reads, duck-typed so that it imports no sglang: ``MultimodalInputs.mm_items``, each item's ``modality`` (an enum
with ``.name`` IMAGE / VIDEO / AUDIO), inclusive ``offsets`` ``[(start, end), ...]`` in the full prompt, and its
``video_grid_thw`` / ``image_grid_thw`` (``[n, 3]`` or ``[3]`` int tensors or lists, in vision patches).
One item may hold several spans and several grid rows (bundled images), or one grid row may be split over several
single-frame spans (Qwen3-VL with timestamps makes one item per frame); spans consume the item's frames in order.

A frame of grid ``(t, h, w)`` with spatial merge ``m`` holds ``(h/m)*(w/m)`` tokens laid out as ``h/m`` rows of
``w/m``; ``t`` counts frames after temporal merging (Qwen2.5-VL: two input frames per grid frame).
Audio tokens are treated as text. When the chunk ends inside a frame, the partial frame becomes its own one-row
video segment (its exact grid is not a whole frame); the next chunk sees the whole frame again.
"""

from __future__ import annotations

from typing import Any

import torch

from mmi_core import LayoutError, Modality, ModalityLayout, Segment, VisualGrid

__all__ = ["request_layout", "spatial_merge_size", "visual_tokens"]

_GRID_ATTR = {"VIDEO": "video_grid_thw", "IMAGE": "image_grid_thw"}
_MERGE_GUESSES = (2, 1, 4, 3)


def spatial_merge_size(hf_config: Any) -> int | None:
    """``vision_config.spatial_merge_size`` (Qwen2/2.5/3-VL) or a top-level ``spatial_merge_size``; None if absent."""
    for holder in (getattr(hf_config, "vision_config", None), hf_config):
        m = getattr(holder, "spatial_merge_size", None) if holder is not None else None
        if isinstance(m, int) and m >= 1:
            return m
    return None


def _grid_rows(value: Any) -> list[tuple[int, int, int]]:
    if value is None:
        return []
    t = torch.as_tensor(value).reshape(-1)
    if t.numel() % 3:
        raise LayoutError(f"grid_thw must have 3 numbers per row, got shape {tuple(torch.as_tensor(value).shape)}")
    rows = [tuple(int(x) for x in r) for r in t.view(-1, 3).tolist()]
    for r in rows:
        if min(r) < 1:
            raise LayoutError(f"grid_thw row {r} has a non-positive size")
    return rows  # type: ignore[return-value]


def _frame_shape(thw: tuple[int, int, int], merge: int | None, span_len: int) -> tuple[int, int]:
    """(rows, cols) of one frame after spatial merge. With no known merge, the first size that divides h, w and
    makes the span a whole number of frames is used (documented guess; configs normally give it)."""
    _, h, w = thw
    for m in (merge,) if merge is not None else _MERGE_GUESSES:
        if h % m == 0 and w % m == 0 and span_len % ((h // m) * (w // m)) == 0:
            return h // m, w // m
    raise LayoutError(
        f"a {span_len}-token span does not hold whole frames of grid_thw {thw} with spatial merge "
        f"{merge if merge is not None else 'in ' + str(_MERGE_GUESSES)}"
    )


def _item_segments(item: Any, merge: int | None) -> list[tuple[int, int, Modality, VisualGrid]]:
    """(start, end exclusive, modality, grid) for every span of one item."""
    name = getattr(getattr(item, "modality", None), "name", "")
    if name not in _GRID_ATTR:
        return []  # audio and unknown modalities stay text
    modality = Modality.VIDEO if name == "VIDEO" else Modality.IMAGE
    spans = [(int(s), int(e) + 1) for s, e in (getattr(item, "offsets", None) or [])]
    try:
        rows = _grid_rows(getattr(item, _GRID_ATTR[name]))
    except AttributeError:
        rows = []
    out = []
    if not rows:  # no grid: one flat frame per span (keeps the modality; Grid heads see no frame stride)
        return [(s, e, modality, VisualGrid(frames=1, rows=1, cols=e - s)) for s, e in spans if e > s]
    row_i, frames_left = 0, rows[0][0]
    for s, e in spans:
        if e <= s:
            raise LayoutError(f"{name.lower()} span ({s}, {e - 1}) is empty or reversed")
        if row_i >= len(rows):
            raise LayoutError(f"{name.lower()} item has more spans than its grid_thw rows {rows} describe")
        r, c = _frame_shape(rows[row_i], merge, e - s)
        frames = (e - s) // (r * c)
        if frames > frames_left:
            raise LayoutError(
                f"{name.lower()} span [{s}, {e}) holds {frames} frames of {r}x{c} tokens but grid_thw "
                f"{rows[row_i]} has only {frames_left} left"
            )
        out.append((s, e, modality, VisualGrid(frames=frames, rows=r, cols=c)))
        frames_left -= frames
        if frames_left == 0:
            row_i += 1
            frames_left = rows[row_i][0] if row_i < len(rows) else 0
    if row_i < len(rows):
        raise LayoutError(f"{name.lower()} grid_thw rows {rows} describe more frames than the spans {spans} hold")
    return out


def _clip(s: int, e: int, m: Modality, g: VisualGrid, n: int) -> list[Segment]:
    """The part of segment [s, e) inside [0, n): whole frames, then the partial frame as one row."""
    if e <= n:
        return [Segment(m, s, e, g)]
    whole = (n - s) // g.tokens_per_frame
    segs = []
    if whole:
        cut = s + whole * g.tokens_per_frame
        segs.append(Segment(m, s, cut, VisualGrid(frames=whole, rows=g.rows, cols=g.cols)))
        s = cut
    if n > s:
        segs.append(Segment(m, s, n, VisualGrid(frames=1, rows=1, cols=n - s)))
    return segs


def request_layout(mm_input: Any, num_tokens: int, merge: int | None) -> ModalityLayout:
    """Layout of the first ``num_tokens`` tokens of one request (its cached prefix plus this extend chunk).

    ``mm_input``: a ``MultimodalInputs`` or None (text only); ``merge``: the vision spatial merge size (None: guessed
    per span, see `_frame_shape`). Raises `LayoutError` on overlapping spans or grids that do not match their spans.
    """
    raw: list[tuple[int, int, Modality, VisualGrid]] = []
    for item in (getattr(mm_input, "mm_items", None) or []) if mm_input is not None else []:
        raw.extend(_item_segments(item, merge))
    raw.sort(key=lambda x: x[0])
    segs: list[Segment] = []
    pos = 0
    for s, e, m, g in raw:
        if s < pos:
            raise LayoutError(f"multimodal spans overlap at token {s} (previous span ends at {pos})")
        if s >= num_tokens:
            break
        segs.append(Segment(Modality.TEXT, pos, s))
        segs.extend(_clip(s, e, m, g, num_tokens))
        pos = min(e, num_tokens)
    segs.append(Segment(Modality.TEXT, pos, num_tokens))
    return ModalityLayout(num_tokens, tuple(segs))


def visual_tokens(layout: ModalityLayout) -> int:
    """Image + video tokens of a layout."""
    return layout.num_tokens_of(Modality.IMAGE) + layout.num_tokens_of(Modality.VIDEO)
