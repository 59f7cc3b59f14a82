"""Capture the language model's attention inputs (q, k, v after RoPE) of one calibration forward, layer by layer.

How: an attention function ``"mmi_capture_<base>"`` is registered in transformers' ``AttentionInterface`` and
selected for the language model's sub-config only (as `mmi_models.transformers_attention` does); it writes each
layer's ``q [N, Hq, D]``, ``k, v [N, Hkv, D]`` (token-major, batch row 0, the model's dtype) to
``<dir>/layer_XXX.pt`` as soon as the layer runs, then calls the original function. Host memory therefore holds one
layer at a time; disk holds ``L × N × (Hq + 2·Hkv) × D`` elements. The search then loads one layer at a time.

Calibration inputs: a video file (decoded by PyAV through the model's processor), a text prompt, or both; or
`synthetic_video_inputs` (Qwen2-VL family): random pixel patches of a given frame grid wrapped in random text ids,
built from the config alone (no processor, no video decoding).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmi_core import ModalityLayout
from mmi_models.adapter import AdapterError, AttentionGeometry, adapter_for

__all__ = [
    "CaptureError",
    "CapturedLayer",
    "LoadedModel",
    "capture_layers",
    "load_captured",
    "load_model",
    "synthetic_video_inputs",
]

_PREFIX = "mmi_capture_"
_ACTIVE: dict[int, Path] = {}  # id(text config) -> capture dir of the forward in flight


class CaptureError(ValueError):
    """Bad calibration input: missing model, undecodable video, empty prompt, no layout."""


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    processor: Any
    path: Path
    geometry: AttentionGeometry
    architecture: str


@dataclass(frozen=True)
class CapturedLayer:
    """One layer's captured inputs: ``q [N, Hq, D]``, ``k, v [N, Hkv, D]`` and the layout of the N tokens."""

    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: ModalityLayout
    scale: float | None


def load_model(path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a transformers VLM checkpoint directory and its processor (offline files only).
    Raises CaptureError for a missing path or a checkpoint transformers cannot load, AdapterError for an
    architecture mmi-models has no adapter for."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise CaptureError(f"model path {p} is not a checkpoint directory (no config.json)")
    try:
        processor = AutoProcessor.from_pretrained(p)
        model = AutoModelForImageTextToText.from_pretrained(p, dtype=dtype or "auto").to(device).eval()
    except (OSError, ValueError) as e:
        raise CaptureError(f"cannot load the checkpoint at {p}: {e}") from e
    adapter = adapter_for(model)
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    return LoadedModel(model, processor, p, adapter.geometry(), arch)


def _video(path: Path) -> tuple[Any, Any]:
    from transformers.video_utils import load_video

    if not path.is_file():
        raise CaptureError(f"video file {path} does not exist")
    try:
        frames, meta = load_video(str(path), backend="pyav")
    except Exception as e:  # PyAV raises its own error types (InvalidDataError, ...)
        raise CaptureError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
    if len(frames) == 0:
        raise CaptureError(f"video {path} has no frames")
    return frames, meta


def calibration_inputs(loaded: LoadedModel, video: Path | None, prompt: str) -> dict[str, Any]:
    """Processor inputs (batch 1) for a chat turn holding the video (if any) and the prompt."""
    if video is None and not prompt.strip():
        raise CaptureError("calibration needs a video file or a non-empty prompt")
    content = ([{"type": "video"}] if video is not None else []) + [{"type": "text", "text": prompt or "describe"}]
    text = loaded.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if video is not None:
        frames, meta = _video(Path(video))
        kwargs.update(videos=[frames], video_metadata=[meta])
    return dict(loaded.processor(**kwargs))


def synthetic_video_inputs(
    config: Any,
    frames: int,
    rows: int,
    cols: int,
    *,
    text_before: int = 100,
    text_after: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Model inputs (batch 1) of a synthetic video for a Qwen2-VL-family config (``video_token_id``,
    ``vision_start_token_id``, ``vision_end_token_id``, ``vision_config.patch_size`` / ``temporal_patch_size`` /
    ``spatial_merge_size``): ``text_before`` random text ids, ``<vision_start>``, ``frames × rows × cols`` video
    placeholders (``frames`` merged frames of ``rows × cols`` merged patches), ``<vision_end>``, ``text_after`` random
    text ids; ``pixel_values_videos`` random normal ``[frames·(rows·m)·(cols·m), C·tp·p·p]`` in ``dtype`` and
    ``video_grid_thw [[frames, rows·m, cols·m]]`` (``m`` the spatial merge). Text ids are drawn below the smallest
    special id. Raises CaptureError for a config without those fields or a non-positive grid."""
    vc = getattr(config, "vision_config", None)
    names = ("video_token_id", "vision_start_token_id", "vision_end_token_id")
    ids = [getattr(config, n, None) for n in names]
    if vc is None or any(i is None for i in ids):
        raise CaptureError(
            f"synthetic video inputs need a Qwen2-VL-family config ({', '.join(names)}, vision_config); "
            f"{type(config).__name__} lacks them"
        )
    if min(frames, rows, cols) < 1:
        raise CaptureError(f"synthetic video grid must be positive, got {frames}x{rows}x{cols}")
    video, start, end = (int(i) for i in ids)  # type: ignore[arg-type]
    m, tp, p = int(vc.spatial_merge_size), int(vc.temporal_patch_size), int(vc.patch_size)
    chans = int(getattr(vc, "in_channels", getattr(vc, "in_chans", 3)))
    g = torch.Generator().manual_seed(seed)
    specials = [video, start, end, getattr(config, "image_token_id", None) or video]
    top = max(2, min(*specials, getattr(config.get_text_config(), "vocab_size", video)))

    def text(n: int) -> torch.Tensor:
        return torch.randint(1, top, (n,), generator=g)

    input_ids = torch.cat(
        [text(text_before), torch.tensor([start]), torch.full((frames * rows * cols,), video), torch.tensor([end]),
         text(text_after)]
    )[None]  # fmt: skip
    h, w = rows * m, cols * m
    pixels = torch.randn(frames * h * w, chans * tp * p * p, generator=g)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values_videos": pixels.to(device, dtype),
        "video_grid_thw": torch.tensor([[frames, h, w]], device=device),
    }


def _capture_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    out_dir = _ACTIVE.get(id(module.config))
    base = str(module.config._attn_implementation).removeprefix(_PREFIX)
    if out_dir is not None and hasattr(module, "layer_idx"):
        # [B, H, N, D] -> token-major [N, H, D] of row 0
        torch.save(
            {
                "q": query[0].transpose(0, 1).contiguous().cpu(),
                "k": key[0].transpose(0, 1).contiguous().cpu(),
                "v": value[0].transpose(0, 1).contiguous().cpu(),
                "scale": kwargs.get("scaling"),
            },
            out_dir / f"layer_{int(module.layer_idx):03d}.pt",
        )
    if base == "eager":
        import sys

        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[base]
    return fn(module, query, key, value, attention_mask, *args, **kwargs)


def capture_layers(loaded: LoadedModel, inputs: dict[str, Any], out_dir: str | Path) -> ModalityLayout:
    """Run one forward on ``inputs`` (batch 1) and write every language layer's q/k/v to ``out_dir`` (module
    docstring) plus ``layout.json``. Returns the layout. Raises CaptureError for a batch other than 1, or when a layer
    was not captured."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if inputs["input_ids"].shape[0] != 1:
        raise CaptureError(f"calibration batch must hold one row, got {inputs['input_ids'].shape[0]}")
    adapter = adapter_for(loaded.model)
    layout = adapter.layouts_for(inputs).layouts[0]
    text = adapter.text_config
    base = text._attn_implementation or "eager"
    if base.startswith("mmi_"):
        raise AdapterError(f"model attention is already wrapped ({base}); remove mmi first")
    name = _PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        ALL_ATTENTION_FUNCTIONS.register(name, _capture_forward)
        mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(base)
        if mask is not None:
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask)
    text._attn_implementation_internal = name
    _ACTIVE[id(text)] = out
    try:
        with torch.no_grad():
            device = next(loaded.model.parameters()).device
            kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            if "logits_to_keep" in inspect.signature(loaded.model.forward).parameters:
                kwargs.setdefault("logits_to_keep", 1)  # the logits are not needed: no N x vocab tensor
            loaded.model(**kwargs)
    finally:
        text._attn_implementation_internal = base
        _ACTIVE.pop(id(text), None)
    missing = [i for i in range(loaded.geometry.num_layers) if not (out / f"layer_{i:03d}.pt").is_file()]
    if missing:
        raise CaptureError(f"layers {missing} were not captured (attention modules not reached)")
    (out / "layout.json").write_text(json.dumps(_layout_json(layout)))
    return layout


def _layout_json(layout: ModalityLayout) -> list[list[Any]]:
    parts: list[list[Any]] = []
    for s in layout.segments:
        if s.grid is None:
            parts.append([s.modality.name.lower(), s.length])
        else:
            g = s.grid
            parts.append([s.modality.name.lower(), {f: getattr(g, f) for f in g.__dataclass_fields__}])
    return parts


def load_captured(out_dir: str | Path, layer: int) -> CapturedLayer:
    """Load one captured layer (fp32) with its layout. Raises CaptureError when the files are missing."""
    from mmi_core import VisualGrid

    out = Path(out_dir)
    f = out / f"layer_{layer:03d}.pt"
    if not f.is_file() or not (out / "layout.json").is_file():
        raise CaptureError(f"no capture of layer {layer} in {out}")
    d = torch.load(f, weights_only=True)
    parts = [
        (m, n if isinstance(n, int) else VisualGrid(**n)) for m, n in json.loads((out / "layout.json").read_text())
    ]
    return CapturedLayer(
        layer, d["q"].float(), d["k"].float(), d["v"].float(), ModalityLayout.from_parts(parts), d["scale"]
    )
