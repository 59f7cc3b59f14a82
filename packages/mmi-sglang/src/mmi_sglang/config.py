"""Plugin settings: environment variables plus an optional JSON file, validated by one pydantic model.

SGLang's CLI flags cannot be extended by a plugin, so the `mmi` backend is configured here. Precedence (highest
first): environment variables, the JSON file named by ``MMI_SGLANG_CONFIG``, the defaults below. Every variable is
listed in `ENV_VARS` (the single place they are documented; the README table is generated from the same text).
Importing this module imports neither sglang nor kernels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmi_core import ConfigError, HeadConfigs

__all__ = ["ENV_VARS", "MMIServeConfig", "load_config", "resolve_head_configs"]

#: environment variable -> (config field or None, what it does). The one place every variable is documented.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "MMI_SGLANG_CONFIG": (None, "Path to a JSON file whose keys are the field names below; env variables override it."),
    "MMI_HEAD_CONFIGS": (
        "head_configs",
        "Path to a per-layer/per-head `HeadConfigs` JSON. Unset: the model family's default shipped by mmi-models "
        "(chosen from the checkpoint's config.json); a clear error when there is none.",
    ),
    "MMI_INNER_BACKEND": (
        "inner_backend",
        "Stock SGLang backend that runs decode, text-only and short extends (and CUDA graphs). "
        "Default: `triton` on CUDA, `torch_native` elsewhere. Must not be `mmi`.",
    ),
    "MMI_MIN_SEQ_LEN": ("min_seq_len", "A request goes sparse only if prefix + chunk has at least this many tokens."),
    "MMI_MIN_VISUAL_TOKENS": (
        "min_visual_tokens",
        "... and at least this many image/video tokens in prefix + chunk.",
    ),
    "MMI_MIN_CHUNK_TOKENS": (
        "min_chunk_tokens",
        "... and at least this many new (query) tokens in this extend (decode-like tiny extends stay dense).",
    ),
    "MMI_SPARSE_IMPL": (
        "sparse_impl",
        "`auto` (kernels on CUDA when mmi-kernels provides them, the mmi-core reference on CPU), `kernels`, or "
        "`reference` (readable PyTorch, O(n_q x n_k) memory: small inputs only).",
    ),
    "MMI_ENABLED": ("enabled", "`0`: the backend delegates everything to the inner backend (A/B runs, timing)."),
    "MMI_LOG_INTERVAL_S": (
        "log_interval_s",
        "Seconds between log lines with the sparse/dense request counts and fallback reasons (0: every batch).",
    ),
    "MMI_TIMING": (
        "timing",
        "`1`: measure each extend batch inside the backend (first to last layer's attention, CUDA events; adds one "
        "synchronisation per batch) and log it with the routing counts.",
    ),
}

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off", ""}


class MMIServeConfig(BaseModel):
    """Validated settings of the `mmi` SGLang backend (see `ENV_VARS` for what each field does).

    The thresholds are starting points, not tuned values: below them attention is not the prefill's bottleneck.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    head_configs: str | None = None
    inner_backend: str | None = None
    # Measured on an H200 (2026-11-22, docs/layer/NOTES.md): online estimation costs a fixed ~70-90 ms per layer, so
    # sparse attention beat the stock Triton backend on a 98K-token full prefill (208 vs 366 ms per layer) but lost
    # on 8K-token chunks of a 25K-token prompt (68 ms per layer vs the stock's few ms). Until estimation is fused,
    # only long sequences and large chunks go sparse by default.
    min_seq_len: int = Field(65536, ge=1)
    min_visual_tokens: int = Field(1024, ge=0)
    min_chunk_tokens: int = Field(16384, ge=1)
    sparse_impl: Literal["auto", "kernels", "reference"] = "auto"
    enabled: bool = True
    log_interval_s: float = Field(60.0, ge=0.0)
    timing: bool = False

    @field_validator("inner_backend")
    @classmethod
    def _not_self(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() == "mmi":
            raise ValueError("inner_backend cannot be 'mmi' (it wraps a stock backend such as triton or torch_native)")
        return v.strip() if v is not None else None

    @field_validator("head_configs")
    @classmethod
    def _file_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"head-config file {v!r} does not exist")
        return v


def _parse_env(name: str, field: str, raw: str) -> Any:
    """Env strings -> the field's type; pydantic does the range checks afterwards."""
    if field in ("enabled", "timing"):
        low = raw.strip().lower()
        if low in _BOOL_TRUE:
            return True
        if low in _BOOL_FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")
    return raw.strip() if field in ("head_configs", "inner_backend", "sparse_impl") else raw


def load_config(env: Mapping[str, str] | None = None) -> MMIServeConfig:
    """Read ``MMI_SGLANG_CONFIG`` (optional JSON) and the ``MMI_*`` variables of ``env`` (default: os.environ).

    Raises `mmi_core.ConfigError` naming the variable or file and the problem (missing file, malformed JSON, unknown
    key, out-of-range value, inner backend 'mmi').
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "defaults"
    path = env.get("MMI_SGLANG_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"MMI_SGLANG_CONFIG={path!r}: file does not exist")
        try:
            loaded = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"MMI_SGLANG_CONFIG={path!r}: not valid JSON ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"MMI_SGLANG_CONFIG={path!r}: expected a JSON object, got {type(loaded).__name__}")
        data.update(loaded)
        source = path
    for name, (field, _) in ENV_VARS.items():
        if field is not None and name in env:
            data[field] = _parse_env(name, field, env[name])
    try:
        return MMIServeConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"])
            var = next((n for n, (f, _) in ENV_VARS.items() if f == field), None)
            where = f"{var} (or key {field!r} in {source})" if var else f"key {field!r} in {source}"
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid mmi SGLang settings:\n" + "\n".join(lines)) from None


def _family_default(hf_config: Any) -> HeadConfigs:
    """The model family's shipped head configs from mmi-models, or a `ConfigError` saying what to set."""
    model_type = getattr(hf_config, "model_type", None)
    archs = getattr(hf_config, "architectures", None) or []
    try:
        import mmi_models
    except ImportError as e:  # pragma: no cover - mmi-models is a declared dependency
        raise ConfigError(f"MMI_HEAD_CONFIGS is unset and mmi-models cannot be imported ({e})") from None
    fn = getattr(mmi_models, "default_head_configs", None)
    if fn is None:
        raise ConfigError(
            f"MMI_HEAD_CONFIGS is unset and this mmi-models ships no default_head_configs() "
            f"(model_type={model_type!r}, architectures={archs}); set MMI_HEAD_CONFIGS=/path/to/head_configs.json"
        )
    try:
        return fn(hf_config)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"MMI_HEAD_CONFIGS is unset and mmi-models has no default head configs for model_type={model_type!r} "
            f"architectures={archs} ({type(e).__name__}: {e}); set MMI_HEAD_CONFIGS=/path/to/head_configs.json"
        ) from None


def resolve_head_configs(
    cfg: MMIServeConfig,
    hf_config: Any,
    num_layers: int,
    num_q_heads: int,
    num_kv_heads: int,
    tp_rank: int = 0,
    tp_size: int = 1,
) -> HeadConfigs:
    """Load the head configs (file or family default), check them against the model's geometry (total heads, before
    tensor parallelism) and return this rank's slice (`HeadConfigs.tp_slice`). Raises `ConfigError`."""
    hc = HeadConfigs.load(cfg.head_configs) if cfg.head_configs else _family_default(hf_config)
    hc.validate_for(num_layers, num_q_heads, num_kv_heads)
    return hc.tp_slice(tp_rank, tp_size) if tp_size > 1 else hc
