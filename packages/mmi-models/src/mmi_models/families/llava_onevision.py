"""LLaVA-OneVision / LLaVA-Video.

`LlavaOnevisionAdapter` (transformers' ``LlavaOnevisionForConditionalGeneration``; the ``llava-hf`` LLaVA-Video
and LLaVA-OneVision checkpoints use it): a video of F frames fills ``F * p * p + 1`` ``<video>`` placeholders, where
``p = ceil((image_size / patch_size) / 2)`` (2x2 bilinear pooling of the SigLIP patch grid) and the final ``+1`` is
one ``image_newline`` embedding after the last frame. The video segment is ``VisualGrid(F, p, p)``; the trailing
newline becomes a 1-token text segment (it is not part of any frame, so it cannot be a per-frame suffix). Images
(anyres: a base grid followed by a high-resolution grid with a newline per row) are one flat 1 x n image segment
per placeholder run; their inner structure is not modelled.

`LlavaVideoRemoteAdapter` (the original LLaVA-NeXT remote code, ``LlavaQwenForCausalLM``, which LLaVA-Video-7B-Qwen2
ships with): ``input_ids`` hold one media token (``-200``) per video that the model expands itself to
``F * (p * p + newlines)`` embeddings, where ``mm_newline_position`` = ``grid`` puts one newline after every row
(``row_extra = 1``: the paper's "newline tokens break a pure stride"), ``frame`` one after every frame
(``frame_suffix = 1``), ``one_token`` one after the video, ``nothing`` none. ``p`` follows ``mm_spatial_pool_mode``
(``bilinear``: ceil, ``average``/``max``: floor of ``grid / mm_spatial_pool_stride``). Verified on synthetic inputs
only (the remote code is not run here).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from mmi_core import Modality, ModalityLayout, VisualGrid
from mmi_models.adapter import (
    AdapterError,
    ModelAdapter,
    VisualItem,
    VisualItems,
    layout_from_placeholder_runs,
    register_adapter,
)
from mmi_models.families.expanded import ExpandedMediaAdapter

__all__ = ["LlavaOnevisionAdapter", "LlavaVideoRemoteAdapter"]


def _frames_per_video(pixel_values_videos: Any, video_frames: Any, family: str) -> list[int]:
    if video_frames is not None:
        frames = [int(f) for f in video_frames]
    elif pixel_values_videos is None:
        return []
    elif isinstance(pixel_values_videos, (list, tuple)):
        frames = [int(v.shape[0]) for v in pixel_values_videos]
    else:
        if pixel_values_videos.dim() != 5:
            raise AdapterError(
                f"{family}: pixel_values_videos must be [videos, frames, C, H, W], "
                f"got {tuple(pixel_values_videos.shape)}"
            )
        frames = [int(pixel_values_videos.shape[1])] * int(pixel_values_videos.shape[0])
    if any(f < 1 for f in frames):
        raise AdapterError(f"{family}: every video needs >= 1 frame, got {frames}")
    return frames


@register_adapter
class LlavaOnevisionAdapter(ModelAdapter):
    family = "llava_onevision"
    architectures: ClassVar[tuple[str, ...]] = ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel")
    verified = "processor"
    metadata_keys = ("pixel_values_videos", "video_frames", "image_sizes")

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        vid = getattr(config, "video_token_id", None)
        vid = getattr(config, "video_token_index", None) if vid is None else vid
        img = getattr(config, "image_token_id", None)
        img = getattr(config, "image_token_index", None) if img is None else img
        if vid is None or img is None:
            raise AdapterError(f"{self.family}: config lacks video/image token ids")
        self.video_token_id, self.image_token_id = int(vid), int(img)
        vc = config.vision_config
        self.pooled = math.ceil((int(vc.image_size) // int(vc.patch_size)) / 2)

    def visual_items(
        self, pixel_values_videos: Any = None, video_frames: Any = None, image_sizes: Any = None
    ) -> VisualItems:
        p = self.pooled
        videos = [
            VisualItem(Modality.VIDEO, VisualGrid(f, p, p), f * p * p + 1, trailing=1)
            for f in _frames_per_video(pixel_values_videos, video_frames, self.family)
        ]
        n_images = None if image_sizes is None else len(image_sizes)
        return VisualItems({Modality.VIDEO: videos}, flat={Modality.IMAGE: n_images})

    def row_layout(self, input_ids: torch.Tensor, items: VisualItems) -> ModalityLayout:
        return layout_from_placeholder_runs(
            input_ids, {Modality.VIDEO: self.video_token_id, Modality.IMAGE: self.image_token_id}, items, self.family
        )


@register_adapter
class LlavaVideoRemoteAdapter(ExpandedMediaAdapter):
    family = "llava_video"
    architectures: ClassVar[tuple[str, ...]] = ("LlavaQwenForCausalLM", "LlavaLlamaForCausalLM")
    verified = "synthetic"

    def frame_grid(self, frames: int) -> tuple[VisualGrid, int]:
        c = self.config
        image_size = int(getattr(c, "mm_image_size", None) or getattr(c, "image_size", None) or 384)
        patch = int(getattr(c, "mm_patch_size", None) or getattr(c, "patch_size", None) or 14)
        stride = int(getattr(c, "mm_spatial_pool_stride", None) or 2)
        mode = str(getattr(c, "mm_spatial_pool_mode", None) or "bilinear")
        n = image_size // patch
        p = math.ceil(n / stride) if mode == "bilinear" else n // stride
        where = str(getattr(c, "mm_newline_position", None) or "grid")
        if where == "grid":
            return VisualGrid(frames, p, p, row_extra=1), 0
        if where == "frame":
            return VisualGrid(frames, p, p, frame_suffix=1), 0
        if where == "one_token":
            return VisualGrid(frames, p, p), 1
        if where in ("nothing", "no_token"):
            return VisualGrid(frames, p, p), 0
        raise AdapterError(f"{self.family}: unknown mm_newline_position {where!r}")
