"""LongVILA (VILA / NVILA code base, remote code; ``LlavaLlamaModel``): every video frame is an image of
``ceil(n / d)^2`` tokens, ``n = image_size / patch_size`` of the SigLIP tower (384 / 14 -> 27) and ``d`` the
``mlp_downsample`` factor of the projector (2 -> 14 x 14 = 196; ``mlp_downsample_3x3_fix`` -> 3), and VILA's video
prompt puts a newline text token after each frame (``frame_suffix = 1``). Config keys read (all optional, defaults
in brackets): ``image_size`` or ``vision_tower_cfg.image_size`` [384], ``patch_size`` [14], ``mm_projector_type`` /
``mm_projector_cfg.mm_projector_type`` [``mlp_downsample``], ``frame_separator_tokens`` [1].

The MMInference paper reports 256 tokens per frame for LongVILA (a 16 x 16 grid, e.g. 448 px frames); set
``image_size`` accordingly. Verified on synthetic inputs only: the remote code is not run here.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from mmi_core import VisualGrid
from mmi_models.adapter import register_adapter
from mmi_models.families.expanded import ExpandedMediaAdapter

__all__ = ["LongVILAAdapter"]


def _get(config: Any, *names: str) -> Any:
    for name in names:
        obj = config
        for part in name.split("."):
            obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


@register_adapter
class LongVILAAdapter(ExpandedMediaAdapter):
    family = "longvila"
    architectures: ClassVar[tuple[str, ...]] = ("LlavaLlamaModel", "VILAForCasualLM", "VILAForCausalLM")
    verified = "synthetic"

    def frame_grid(self, frames: int) -> tuple[VisualGrid, int]:
        c = self.config
        image_size = int(_get(c, "image_size", "vision_tower_cfg.image_size") or 384)
        patch = int(_get(c, "patch_size", "vision_tower_cfg.patch_size") or 14)
        proj = str(_get(c, "mm_projector_type", "mm_projector_cfg.mm_projector_type") or "mlp_downsample")
        d = 3 if "3x3" in proj else (2 if "downsample" in proj else 1)
        p = math.ceil((image_size // patch) / d)
        sep = _get(c, "frame_separator_tokens")
        sep = 1 if sep is None else int(sep)
        return VisualGrid(frames, p, p, frame_suffix=sep), 0
