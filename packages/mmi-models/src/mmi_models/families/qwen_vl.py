"""Qwen2-VL / Qwen2.5-VL (and Qwen3-VL): placeholder runs of ``<|video_pad|>`` / ``<|image_pad|>`` described by
``video_grid_thw`` / ``image_grid_thw`` (rows ``(t, h, w)`` in patches, in batch order).

Qwen2(.5)-VL: one run per item, ``t * (h/m) * (w/m)`` tokens with spatial merge ``m`` (2): frames = t (two input
frames merged in time), rows = h/m, cols = w/m, no off-grid tokens -> tokens per frame = (H/28)(W/28) at patch 14.

Qwen3-VL: every merged frame is its own run ``<t seconds><|vision_start|> pads <|vision_end|>``; the tokens between
two frames' pads (vision_end + timestamp + vision_start) become the next frame's ``frame_prefix``. Frames are
grouped into one segment while that separator length stays the same (timestamps such as ``<9.5 seconds>`` and
``<10.5 seconds>`` may tokenize to different lengths; a new segment starts there). The first frame's prefix is
assumed as long as the second's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mmi_core import Modality, ModalityLayout, Segment, VisualGrid
from mmi_models.adapter import (
    AdapterError,
    ModelAdapter,
    VisualItem,
    VisualItems,
    _runs,
    coalesce_text,
    layout_from_placeholder_runs,
    register_adapter,
)

__all__ = ["Qwen3VLAdapter", "QwenVLAdapter"]


def _grid_items(grid_thw: Any, merge: int, modality: Modality, family: str) -> list[VisualItem]:
    if grid_thw is None:
        return []
    g = torch.as_tensor(grid_thw).to("cpu", torch.int64)
    if g.dim() != 2 or g.shape[1] != 3:
        raise AdapterError(f"{family}: {modality.name.lower()}_grid_thw must be [n, 3], got {tuple(g.shape)}")
    items = []
    for i, (t, h, w) in enumerate(g.tolist()):
        if t < 1 or h < merge or w < merge or h % merge or w % merge:
            raise AdapterError(
                f"{family}: {modality.name.lower()}_grid_thw[{i}] = {(t, h, w)} is not a grid of whole "
                f"{merge}x{merge} merged patches"
            )
        grid = VisualGrid(frames=t, rows=h // merge, cols=w // merge)
        items.append(VisualItem(modality, grid, grid.num_tokens))
    return items


@register_adapter
class QwenVLAdapter(ModelAdapter):
    family = "qwen2_5_vl"
    architectures: ClassVar[tuple[str, ...]] = (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLModel",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLModel",
    )
    verified = "processor"
    metadata_keys = ("video_grid_thw", "image_grid_thw")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        try:
            self.video_token_id = int(config.video_token_id)
            self.image_token_id = int(config.image_token_id)
        except (AttributeError, TypeError):
            raise AdapterError(f"{self.family}: config lacks video_token_id / image_token_id") from None
        vision = getattr(config, "vision_config", None)
        self.merge = int(getattr(vision, "spatial_merge_size", 2) or 2)

    def visual_items(self, video_grid_thw: Any = None, image_grid_thw: Any = None) -> VisualItems:
        return VisualItems(
            {
                Modality.VIDEO: _grid_items(video_grid_thw, self.merge, Modality.VIDEO, self.family),
                Modality.IMAGE: _grid_items(image_grid_thw, self.merge, Modality.IMAGE, self.family),
            }
        )

    def row_layout(self, input_ids: torch.Tensor, items: VisualItems) -> ModalityLayout:
        return layout_from_placeholder_runs(
            input_ids, {Modality.VIDEO: self.video_token_id, Modality.IMAGE: self.image_token_id}, items, self.family
        )


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    architectures: ClassVar[tuple[str, ...]] = (
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLModel",
        "Qwen3VLMoeForConditionalGeneration",
        "Qwen3VLMoeModel",
    )
    verified = "processor"

    def row_layout(self, input_ids: torch.Tensor, items: VisualItems) -> ModalityLayout:
        n = input_ids.numel()
        video_runs = _runs(input_ids == self.video_token_id)
        # Images are single runs as in Qwen2.5-VL; handle them with the generic path on an id vector whose video
        # pads are masked out, then splice the video segments in.
        segs: list[Segment] = []
        spans: list[tuple[int, int, Modality, VisualGrid | None]] = []
        for a, b in _runs(input_ids == self.image_token_id):
            it = items.take(Modality.IMAGE, f"{self.family} image tokens [{a}, {b})", run_length=b - a)
            if it.num_placeholders != b - a:
                raise AdapterError(
                    f"{self.family}: image_grid_thw says {it.num_placeholders} tokens, the run [{a}, {b}) has {b - a}"
                )
            spans.append((a, b, Modality.IMAGE, it.grid))
        r = 0
        while r < len(video_runs):
            it = items.take(Modality.VIDEO, f"{self.family} video tokens at {video_runs[r][0]}")
            g = it.grid
            per = g.rows * g.cols
            frames = video_runs[r : r + g.frames]
            if len(frames) != g.frames or any(b - a != per for a, b in frames):
                raise AdapterError(
                    f"{self.family}: video_grid_thw says {g.frames} frames of {per} tokens; input_ids hold runs "
                    f"{[b - a for a, b in frames]} from token {video_runs[r][0]}"
                )
            r += g.frames
            prefixes = [frames[i][0] - frames[i - 1][1] - 1 for i in range(1, len(frames))]
            p0 = prefixes[0] if prefixes else 0
            p0 = min(p0, frames[0][0] - (spans[-1][1] if spans else 0)) if p0 else 0
            prefixes = [p0, *prefixes]
            # Group consecutive frames with equal prefix length: frame i spans [start - prefix, end + 1).
            i = 0
            while i < len(frames):
                j = i
                while j + 1 < len(frames) and prefixes[j + 1] == prefixes[i]:
                    j += 1
                grid = VisualGrid(j - i + 1, g.rows, g.cols, frame_prefix=prefixes[i], frame_suffix=1)
                start = frames[i][0] - prefixes[i]
                if frames[j][1] + 1 > n:
                    raise AdapterError(f"{self.family}: a video frame at token {frames[j][0]} lacks <|vision_end|>")
                spans.append((start, start + grid.num_tokens, Modality.VIDEO, grid))
                i = j + 1
        pos = 0
        for a, b, m, grid in sorted(spans, key=lambda s: s[0]):
            segs.append(Segment(Modality.TEXT, pos, a))
            segs.append(Segment(m, a, b, grid))
            pos = b
        segs.append(Segment(Modality.TEXT, pos, n))
        return ModalityLayout(n, coalesce_text(segs))
