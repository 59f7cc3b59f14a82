"""LLaVA-OneVision / LLaVA-Video.

`LlavaOnevisionAdapter` (transformers' ``LlavaOnevisionForConditionalGeneration``; the ``llava-hf`` LLaVA-Video
and LLaVA-OneVision checkpoints use it): a video of F frames fills ``F * p * p + 1`` ``<video>`` placeholders, where
``p = ceil((image_size / patch_size) / 2)`` (2x2 bilinear pooling of the SigLIP patch grid) and the final ``+1`` is
one ``image_newline`` embedding after the last frame. The video segment is ``VisualGrid(F, p, p)``; the trailing
newline becomes a 1-token text segment (it is not part of any frame, so it cannot be a per-frame suffix).
Images (``image_sizes`` given): a prompt with one image holds the base grid ``P x P`` (``P = image_size / patch``)
then the unpadded high-resolution grid with one newline per row (``row_extra = 1``; its shape from transformers'
own ``get_anyres_image_grid_shape`` / ``unpad_image`` and the ``anyres_max_N`` downscale); a prompt with several
images holds ``P x P`` + one newline per image. Two image segments per single image. When ``image_sizes`` is
missing, or a run's length disagrees with that structure (e.g. another ``vision_feature_select_strategy``), the
image is one flat 1 x n segment instead (still a correct layout, only without rows).

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
        if image_sizes is None:
            return VisualItems({Modality.VIDEO: videos}, flat={Modality.IMAGE: None})
        sizes = [tuple(int(x) for x in hw) for hw in torch.as_tensor(image_sizes).reshape(-1, 2).tolist()]
        return VisualItems({Modality.VIDEO: videos}, image_sizes=sizes)

    def _image_parts(self, run: int, size: tuple[int, int], multi: bool) -> list[tuple[Modality, VisualGrid | int]]:
        """Segments of one image's placeholder run (see the module docstring); flat when the structure disagrees."""
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        vc = self.config.vision_config
        big = int(vc.image_size) // int(vc.patch_size)
        base = VisualGrid(1, big, big)
        if multi:
            parts: list[tuple[Modality, VisualGrid | int]] = [(Modality.IMAGE, base), (Modality.TEXT, 1)]
        else:
            nph, npw = get_anyres_image_grid_shape(size, self.config.image_grid_pinpoints, int(vc.image_size))
            rows, cols = unpad_image(torch.empty(1, nph * big, npw * big, device="meta"), size).shape[1:]
            aspect = str(getattr(self.config, "vision_aspect_ratio", None) or "anyres_max_9")
            max_patches = int(aspect.removeprefix("anyres_max_"))
            ratio = math.sqrt(rows * cols / (max_patches * big**2))
            if ratio > 1.1:  # the model downsizes very large grids (anyres_max_N)
                rows, cols = int(rows // ratio), int(cols // ratio)
            parts = [(Modality.IMAGE, base), (Modality.IMAGE, VisualGrid(1, rows, cols, row_extra=1))]
        total = sum(p.num_tokens if isinstance(p, VisualGrid) else p for _, p in parts)
        return parts if total == run else [(Modality.IMAGE, VisualGrid(1, 1, run))]

    def row_layout(self, input_ids: torch.Tensor, items: VisualItems) -> ModalityLayout:
        sizes = items.extra.get("image_sizes")
        if sizes is None:
            return layout_from_placeholder_runs(
                input_ids,
                {Modality.VIDEO: self.video_token_id, Modality.IMAGE: self.image_token_id},
                items,
                self.family,
            )
        # images need the number of images in this row (the processor lays out multi-image prompts differently)
        image_runs = _runs(input_ids == self.image_token_id)
        segs = list(
            layout_from_placeholder_runs(input_ids, {Modality.VIDEO: self.video_token_id}, items, self.family).segments
        )
        for a, b in image_runs:
            i = items.extra.setdefault("next_image", 0)
            if i >= len(sizes):
                raise AdapterError(f"{self.family}: image tokens at {a} but image_sizes describes only {len(sizes)}")
            items.extra["next_image"] = i + 1
            parts, pos, new = self._image_parts(b - a, sizes[i], len(image_runs) > 1), a, []
            for m, what in parts:
                n = what.num_tokens if isinstance(what, VisualGrid) else what
                new.append(Segment(m, pos, pos + n, what if isinstance(what, VisualGrid) else None))
                pos += n
            # the image run sits inside a text segment of the video-only layout: split that segment around it
            (k,) = [j for j, s in enumerate(segs) if s.modality == Modality.TEXT and s.start <= a and b <= s.end]
            t = segs[k]
            segs[k : k + 1] = [Segment(Modality.TEXT, t.start, a), *new, Segment(Modality.TEXT, b, t.end)]
        return ModalityLayout(input_ids.numel(), coalesce_text(segs))


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
