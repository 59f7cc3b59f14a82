"""Shared base of remote-code families (LLaVA-NeXT, VILA/LongVILA, VideoChat-Flash) whose ``input_ids`` hold one
media token per video (``-200``, ``IMAGE_TOKEN_INDEX`` in those code bases) that the model expands itself into the
video's embeddings before the language model runs.

Their layouts describe the **expanded** sequence the language model attends over: every media token is replaced by
its video's tokens. Rows are padded by the model after expansion, on ``config.tokenizer_padding_side`` (default
right, as in those code bases); `layouts` reproduces that, so offsets refer to the expanded, padded batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mmi_core import Modality, ModalityLayout, Segment, VisualGrid
from mmi_models.adapter import (
    AdapterError,
    BatchLayouts,
    ModelAdapter,
    VisualItem,
    VisualItems,
    coalesce_text,
    valid_span,
)

__all__ = ["MEDIA_TOKEN_ID", "ExpandedMediaAdapter"]

MEDIA_TOKEN_ID = -200


class ExpandedMediaAdapter(ModelAdapter):
    """Subclasses implement `frame_grid`: the grid of a video of ``frames`` frames and its trailing off-grid tokens.

    Metadata: ``video_frames`` (list[int], frames per video in batch order), optional ``media_token_id``.
    """

    metadata_keys: ClassVar[tuple[str, ...]] = ("video_frames",)

    def frame_grid(self, frames: int) -> tuple[VisualGrid, int]:
        raise NotImplementedError

    @property
    def media_token_id(self) -> int:
        return int(getattr(self.config, "media_token_id", None) or MEDIA_TOKEN_ID)

    def visual_items(self, video_frames: Any = None) -> VisualItems:
        items = []
        for f in [] if video_frames is None else [int(x) for x in video_frames]:
            if f < 1:
                raise AdapterError(f"{self.family}: every video needs >= 1 frame, got {f}")
            grid, trailing = self.frame_grid(f)
            items.append(VisualItem(Modality.VIDEO, grid, grid.num_tokens + trailing, trailing))
        return VisualItems({Modality.VIDEO: items})

    def row_layout(self, input_ids: torch.Tensor, items: VisualItems) -> ModalityLayout:
        segs: list[Segment] = []
        pos = 0  # position in the expanded sequence
        text_start = 0
        for tok in input_ids.tolist():
            if tok != self.media_token_id:
                pos += 1
                continue
            segs.append(Segment(Modality.TEXT, text_start, pos))
            it = items.take(Modality.VIDEO, f"{self.family} media token")
            segs.append(Segment(Modality.VIDEO, pos, pos + it.grid.num_tokens, it.grid))
            pos += it.num_placeholders
            text_start = pos - it.trailing
        segs.append(Segment(Modality.TEXT, text_start, pos))
        return ModalityLayout(pos, coalesce_text(segs))

    def layouts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **metadata: Any
    ) -> BatchLayouts:
        ids = input_ids if input_ids.dim() == 2 else input_ids[None]
        mask = (
            None if attention_mask is None else (attention_mask if attention_mask.dim() == 2 else attention_mask[None])
        )
        if mask is not None and mask.shape != ids.shape:
            raise AdapterError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
        ids = ids.to("cpu", torch.int64)
        items = self.visual_items(**{k: v for k, v in metadata.items() if k in self.metadata_keys})
        layouts = []
        for b in range(ids.shape[0]):
            start, length = valid_span(None if mask is None else mask[b], ids.shape[1], b)
            layouts.append(self.row_layout(ids[b, start : start + length], items))
        items.finish()
        width = max((lay.num_tokens for lay in layouts), default=0)
        left = str(getattr(self.config, "tokenizer_padding_side", "right")) == "left"
        offsets = tuple(width - lay.num_tokens if left else 0 for lay in layouts)
        return BatchLayouts(tuple(layouts), offsets, width)
