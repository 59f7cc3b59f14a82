"""Default head configs per family: a fixed policy (not searched), shipped as JSON for the published model sizes.

Policy ``default-v1`` (chosen from the paper's observations, **not** from a search on real weights):
- the first ``min(2, layers - 1)`` layers are dense (early layers attend broadly);
- every head of the other layers uses boundary ``"q"``: text and image query rows use vertical-slash
  (1000 vertical, 2048 slash, block 64), video query rows use Grid with the frame stride (phase searched online);
- every GQA group executes together (``"group"``).

Shipped files (``mmi_models/configs/<family>-<size>.json``) are this policy materialised for the published
geometries; `default_head_configs(adapter)` returns the shipped file when the model's geometry matches one, and the
same policy generated for the model's geometry otherwise. Users pass their own searched file instead
(`load_head_configs(path)`). Metadata of every default says ``"policy": "default policy, not searched"``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmi_core import ConfigError, Dense, Grid, HeadConfigs, HeadSpec, LayerConfig, VerticalSlash

if TYPE_CHECKING:
    from mmi_models.adapter import AttentionGeometry

__all__ = ["SHIPPED_CONFIGS", "default_head_configs", "default_policy", "load_head_configs", "shipped_config_path"]

POLICY = "default-v1"
NOT_SEARCHED = "default policy, not searched"

#: file name -> (family, model it was written for, (layers, q heads, kv heads, head dim))
SHIPPED_CONFIGS: dict[str, tuple[str, str, tuple[int, int, int, int]]] = {
    "qwen2_5_vl-7b.json": ("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", (28, 28, 4, 128)),
    "llava_onevision-7b.json": ("llava_onevision", "llava-hf/LLaVA-Video-7B-Qwen2-hf", (28, 28, 4, 128)),
    "longvila-8b.json": ("longvila", "Efficient-Large-Model/LongVILA-8B-1M (Llama-3-8B LM)", (32, 32, 8, 128)),
    "videochat_flash-7b.json": ("videochat_flash", "OpenGVLab/VideoChat-Flash-Qwen2-7B_res448", (28, 28, 4, 128)),
}


def default_policy(
    num_layers: int, num_q_heads: int, num_kv_heads: int, *, family: str, model: str | None = None
) -> HeadConfigs:
    """The ``default-v1`` policy (module docstring) for a geometry. Raises ConfigError on an impossible geometry."""
    if num_layers < 1 or num_q_heads < 1 or num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise ConfigError(f"impossible geometry: {num_layers} layers, {num_q_heads} q heads, {num_kv_heads} kv heads")
    dense_layers = min(2, num_layers - 1)
    sparse = HeadSpec(
        boundary="q",
        pattern=VerticalSlash(vertical=1000, slash=2048, block=64),
        by_modality={"video": Grid(stride="frame", block=64)},
    )
    dense = LayerConfig(heads=[HeadSpec(pattern=Dense())] * num_q_heads, gqa=["group"] * num_kv_heads)
    other = LayerConfig(heads=[sparse] * num_q_heads, gqa=["group"] * num_kv_heads)
    return HeadConfigs(
        num_layers=num_layers,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        layers=[dense] * dense_layers + [other] * (num_layers - dense_layers),
        metadata={"policy": NOT_SEARCHED, "policy_version": POLICY, "family": family, "model": model},
    )


def shipped_config_path(name: str) -> Path:
    """Path of a shipped JSON file (a key of `SHIPPED_CONFIGS`). Raises ConfigError for an unknown name."""
    if name not in SHIPPED_CONFIGS:
        raise ConfigError(f"no shipped head config {name!r}; shipped: {', '.join(sorted(SHIPPED_CONFIGS))}")
    return Path(str(resources.files("mmi_models") / "configs" / name))


def load_head_configs(source: str | Path | HeadConfigs, geometry: AttentionGeometry | None = None) -> HeadConfigs:
    """A `HeadConfigs` from a path (or an object), checked against ``geometry`` when given.

    Raises ConfigError for a missing file, malformed JSON, or a geometry mismatch."""
    hc = source if isinstance(source, HeadConfigs) else HeadConfigs.load(source)
    if geometry is not None:
        hc.validate_for(geometry.num_layers, geometry.num_q_heads, geometry.num_kv_heads)
    return hc


def default_head_configs(model_or_adapter: Any) -> HeadConfigs:
    """The family default for a model, its config (e.g. SGLang's ``hf_config``) or its `ModelAdapter`: the shipped
    file for its family and geometry, else the policy generated for its geometry (metadata ``"model"`` then names
    the config's ``_name_or_path``). Raises AdapterError for an unknown architecture."""
    from mmi_models.adapter import ModelAdapter, adapter_for

    adapter = model_or_adapter if isinstance(model_or_adapter, ModelAdapter) else adapter_for(model_or_adapter)
    geo = adapter.geometry()
    key = (geo.num_layers, geo.num_q_heads, geo.num_kv_heads, geo.head_dim)
    for name, (family, _model, geometry) in SHIPPED_CONFIGS.items():
        if family == adapter.family and geometry == key:
            return load_head_configs(shipped_config_path(name), geo)
    model = getattr(adapter.config, "_name_or_path", None) or None
    return default_policy(geo.num_layers, geo.num_q_heads, geo.num_kv_heads, family=adapter.family, model=model)


def compact_json(hc: HeadConfigs) -> str:
    """JSON without default-valued fields (patterns keep their ``kind``), one layer per line; loads back equal."""
    data: dict[str, Any] = hc.model_dump(mode="json", exclude_defaults=True)
    full = hc.model_dump(mode="json")
    for layer, full_layer in zip(data["layers"], full["layers"], strict=True):
        for head, full_head in zip(layer["heads"], full_layer["heads"], strict=True):
            head["pattern"] = {"kind": full_head["pattern"]["kind"], **head.get("pattern", {})}
            for key in ("by_modality", "by_pair"):
                for m, p in head.get(key, {}).items():
                    head[key][m] = {"kind": full_head[key][m]["kind"], **p}
    head = {k: v for k, v in data.items() if k != "layers"}
    head["schema_version"] = hc.schema_version
    lines = [json.dumps(layer, separators=(",", ":")) for layer in data["layers"]]
    return json.dumps(head, indent=1)[:-2] + ',\n "layers": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def write_shipped_configs(directory: str | Path) -> list[Path]:
    """(Re)write every shipped JSON file from the policy into ``directory`` (maintainers' tool)."""
    out = []
    for name, (family, model, (layers, hq, hkv, _hd)) in SHIPPED_CONFIGS.items():
        path = Path(directory) / name
        path.write_text(compact_json(default_policy(layers, hq, hkv, family=family, model=model)))
        out.append(path)
    return out
