"""VideoChat-Flash (remote code, ``VideoChatFlashQwenForCausalLM``; Qwen2 LM): the UMT vision encoder's tokens of
every clip of ``mm_local_num_frames`` (4) frames are compressed to ``mm_num_compress_tokens`` tokens per frame
(16 in the published 7B config; the paper's "16 tokens per frame") and ``mm_newline_position`` is ``nothing``, so a
video of F frames is F x 16 consecutive tokens. Token merging leaves no spatial row/column order inside a frame, so
the grid is one row of 16 (``VisualGrid(F, 1, 16)``): the frame stride is exact, rows are not. Config keys read:
``mm_num_compress_tokens`` / ``mm_compress_tokens_per_frame`` [16], ``mm_newline_position`` [nothing].
Verified on synthetic inputs only: the remote code is not run here.
"""

from __future__ import annotations

from typing import ClassVar

from mmi_core import VisualGrid
from mmi_models.adapter import AdapterError, register_adapter
from mmi_models.families.expanded import ExpandedMediaAdapter

__all__ = ["VideoChatFlashAdapter"]


@register_adapter
class VideoChatFlashAdapter(ExpandedMediaAdapter):
    family = "videochat_flash"
    architectures: ClassVar[tuple[str, ...]] = ("VideoChatFlashQwenForCausalLM",)
    verified = "synthetic"

    def frame_grid(self, frames: int) -> tuple[VisualGrid, int]:
        c = self.config
        per = int(getattr(c, "mm_num_compress_tokens", None) or getattr(c, "mm_compress_tokens_per_frame", None) or 16)
        where = str(getattr(c, "mm_newline_position", None) or "nothing")
        if where in ("nothing", "no_token"):
            return VisualGrid(frames, 1, per), 0
        if where == "frame":
            return VisualGrid(frames, 1, per, frame_suffix=1), 0
        if where == "one_token":
            return VisualGrid(frames, 1, per), 1
        raise AdapterError(f"{self.family}: unsupported mm_newline_position {where!r}")
