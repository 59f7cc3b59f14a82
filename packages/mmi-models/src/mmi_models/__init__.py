"""mmi-models: model-family adapters (Qwen2.5-VL, LLaVA-Video/OneVision, LongVILA, VideoChat-Flash) producing
`mmi_core.ModalityLayout`s, shipped head configs, tiny checkpoints, transformers integration and `mmi-search`."""

from mmi_models.adapter import (
    AdapterError,
    AttentionGeometry,
    BatchLayouts,
    ModelAdapter,
    adapter_for,
    get_adapter,
    known_architectures,
    register_adapter,
)
from mmi_models.capture import CaptureError, capture_layers, load_captured
from mmi_models.head_configs import SHIPPED_CONFIGS, default_head_configs, default_policy, load_head_configs
from mmi_models.synthetic_video import moving_shapes_frames, write_moving_shapes_mp4
from mmi_models.tiny import TINY_FAMILIES, write_tiny_checkpoint
from mmi_models.transformers_attention import (
    DEFAULT_MIN_TOKENS,
    MMInference,
    MMInferenceStats,
    apply_mminference,
    mminference_of,
)

__all__ = [
    "DEFAULT_MIN_TOKENS",
    "SHIPPED_CONFIGS",
    "TINY_FAMILIES",
    "AdapterError",
    "AttentionGeometry",
    "BatchLayouts",
    "CaptureError",
    "MMInference",
    "MMInferenceStats",
    "ModelAdapter",
    "adapter_for",
    "apply_mminference",
    "capture_layers",
    "default_head_configs",
    "default_policy",
    "get_adapter",
    "known_architectures",
    "load_captured",
    "load_head_configs",
    "mminference_of",
    "moving_shapes_frames",
    "register_adapter",
    "write_moving_shapes_mp4",
    "write_tiny_checkpoint",
]
