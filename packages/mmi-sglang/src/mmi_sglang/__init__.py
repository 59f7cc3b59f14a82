"""mmi-sglang: the SGLang plugin — the `mmi` attention backend that runs MMInference sparse prefill for long
multimodal extends and delegates everything else to a stock backend. Importing it imports neither sglang nor kernels
(`MMIAttnBackend` is loaded on first access)."""

from typing import Any

from mmi_sglang.batch_layout import request_layout, spatial_merge_size, visual_tokens
from mmi_sglang.config import ENV_VARS, MMIServeConfig, load_config, resolve_head_configs
from mmi_sglang.patches import PATCH_LEDGER, Patch
from mmi_sglang.plugin import BACKEND_NAME, register
from mmi_sglang.routing import SPARSE, BatchRoutes, RequestRoute, route_batch

__all__ = [
    "BACKEND_NAME",
    "ENV_VARS",
    "PATCH_LEDGER",
    "SPARSE",
    "BatchRoutes",
    "MMIAttnBackend",
    "MMIServeConfig",
    "Patch",
    "RequestRoute",
    "load_config",
    "register",
    "request_layout",
    "resolve_head_configs",
    "route_batch",
    "spatial_merge_size",
    "visual_tokens",
]


def __getattr__(name: str) -> Any:
    if name == "MMIAttnBackend":  # imports sglang: only on demand
        from mmi_sglang.backend import MMIAttnBackend

        return MMIAttnBackend
    raise AttributeError(f"module 'mmi_sglang' has no attribute {name!r}")
