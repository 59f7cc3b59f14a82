"""MMInference inside transformers, the transformers way: an attention function registered in
``transformers.AttentionInterface`` and selected for the **language model's** sub-config only.

``handle = apply_mminference(model)`` then ``model.generate(**inputs)`` as usual:
- `apply_mminference` picks the family adapter, loads head configs (family default, a path, or an object), registers
  ``"mmi_<base>"`` (``<base>`` = the language model's current implementation: ``sdpa``, ``eager``, ...) with the
  base's mask function, switches the text sub-config to it (the vision tower keeps its own), and wraps the model's
  ``forward`` so that every call computes the batch's layouts from its inputs (``input_ids``, ``attention_mask``
  with left padding, the family's grid metadata) and exposes them to the attention function through a context
  variable for the duration of that call (so ``generate``'s prefill step sees them and decode steps see none).
- The attention function runs MMInference on rows of a fresh prefill whose valid length is >= ``min_tokens`` and
  that hold visual tokens; everything else (decode, short or text-only rows, cached prefixes it has no layout for,
  all-Dense layers, training) calls the original attention function unchanged. Every decision is counted with its
  reason in ``handle.stats``.
- ``handle.remove()`` restores the original implementation and ``forward``.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmi_core import Grid, HeadConfigs, LayerConfig, Modality, ModalityLayout
from mmi_core.estimation import grid_stride_candidates
from mmi_models.adapter import AdapterError, BatchLayouts, ModelAdapter, adapter_for
from mmi_models.head_configs import load_head_configs
from mmi_models.sparse_compute import Backend, SparsePrefill, resolve_backend

__all__ = ["DEFAULT_MIN_TOKENS", "MMInference", "MMInferenceStats", "apply_mminference", "mminference_of"]

#: Rows with fewer valid tokens than this stay dense (sparse prefill pays off on long prompts only).
DEFAULT_MIN_TOKENS = 4096
_PREFIX = "mmi_"


@dataclass
class _ForwardContext:
    """What one forward call's attention needs: the batch layouts (or why there are none), which rows run sparse,
    why the others stay dense, and the sparse plan per device (made at the first layer, reused by the others)."""

    handle: MMInference
    batch: BatchLayouts | None
    reason: str  # why batch is None ("" when it is set)
    sparse_rows: tuple[int, ...] = ()
    dense_reasons: tuple[str, ...] = ()  # one per dense row
    plans: dict[tuple[torch.device, tuple[int, ...]], SparsePrefill] = field(default_factory=dict)

    def plan(self, device: torch.device, rows: tuple[int, ...]) -> SparsePrefill:
        if (device, rows) not in self.plans:
            assert self.batch is not None
            layouts = [self.batch.layouts[b] for b in rows]
            self.plans[device, rows] = SparsePrefill(self.handle.head_configs, layouts, device, self.handle.backend)
        return self.plans[device, rows]


def _grid_unavailable(layout: ModalityLayout, layer: LayerConfig) -> bool:
    """True when a Grid pattern this row could run has no stride candidates on its layout (``stride="frame"``
    without a video segment, or tokens per frame outside ``[2, max_stride]``): mmi-core refuses those, so the row
    stays dense for this layer (counted) instead of failing the forward."""
    present = {m.name.lower() for m in layout.modalities()}
    for spec in layer.heads:
        patterns = [spec.pattern]
        patterns += [p for m, p in spec.by_modality.items() if m in present]
        patterns += [p for k, p in spec.by_pair.items() if set(k.split("->")) <= present]
        for p in patterns:
            if isinstance(p, Grid):
                try:
                    grid_stride_candidates(layout, p)
                except ValueError:
                    return True
    return False


_CONTEXT: contextvars.ContextVar[_ForwardContext | None] = contextvars.ContextVar("mmi_forward", default=None)
# attention module -> (its handle, the original attention function); weak so that deleted models vanish
_MODULES: weakref.WeakKeyDictionary[torch.nn.Module, tuple[MMInference, Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)


class MMInferenceStats:
    """Counts of attention calls per batch row: ``sparse`` and ``dense`` by reason, plus the sparse backend used.

    ``as_dict()`` -> ``{"sparse": int, "dense": {reason: int}, "backend": {name: int}}``. Reasons: ``decode``,
    ``no_visual_tokens``, ``short``, ``no_layout`` (attention called outside a wrapped forward, or inputs without
    ``input_ids``), ``cached_prefix``, ``dense_layer_config``, ``training``, ``sliding_window``,
    ``layout_length_mismatch``, ``grid_stride_unavailable`` (a Grid head of the layer has no stride on the row's
    layout: ``stride="frame"`` without video, or tokens per frame above ``max_stride``).
    """

    def __init__(self) -> None:
        self.sparse = 0
        self.dense: Counter[str] = Counter()
        self.backend: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {"sparse": self.sparse, "dense": dict(self.dense), "backend": dict(self.backend)}

    def reset(self) -> None:
        self.sparse = 0
        self.dense.clear()
        self.backend.clear()

    def __repr__(self) -> str:
        return f"MMInferenceStats({self.as_dict()})"


class MMInference:
    """Handle of one model patched by `apply_mminference`: its adapter, head configs, threshold and stats."""

    def __init__(
        self,
        model: Any,
        adapter: ModelAdapter,
        head_configs: HeadConfigs,
        min_tokens: int,
        base: str,
        backend: Backend = "auto",
    ) -> None:
        self._model = weakref.ref(model)
        self.adapter = adapter
        self.head_configs = head_configs
        self.min_tokens = min_tokens
        self.backend: Backend = backend
        self.base_implementation = base
        self.attn_implementation = _PREFIX + base
        self.stats = MMInferenceStats()
        # an instance-level forward already there (accelerate's device hooks put one) comes back on remove()
        self._instance_forward: Callable[..., Any] | None = vars(model).get("forward")

    @property
    def model(self) -> Any:
        return self._model()

    def context_for(self, inputs: Mapping[str, Any]) -> _ForwardContext:
        """The layouts of one forward call's inputs (or why there are none). Raises AdapterError / LayoutError on
        visual metadata that does not match the placeholder tokens."""
        ids = inputs.get("input_ids")
        if ids is None:
            return _ForwardContext(self, None, "no_layout")
        cache = inputs.get("past_key_values")
        cached = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        if ids.shape[-1] == 1 and cached:
            return _ForwardContext(self, None, "decode")
        if cached:
            return _ForwardContext(self, None, "cached_prefix")
        batch = self.adapter.layouts_for(inputs)
        if not batch.has_visual:
            return _ForwardContext(self, None, "no_visual_tokens")
        sparse, reasons = [], []
        for b, lay in enumerate(batch.layouts):
            if lay.modalities() == (Modality.TEXT,):
                reasons.append("no_visual_tokens")
            elif lay.num_tokens < self.min_tokens:
                reasons.append("short")
            else:
                sparse.append(b)
        if not sparse:
            return _ForwardContext(self, None, "", (), tuple(reasons))
        return _ForwardContext(self, batch, "", tuple(sparse), tuple(reasons))

    def remove(self) -> None:
        """Undo `apply_mminference`: the original attention implementation and ``forward`` come back."""
        model = self.model
        if model is None:
            return
        text = self.adapter.text_config
        text._attn_implementation_internal = self.base_implementation
        for m in [m for m, (h, _) in _MODULES.items() if h is self]:
            del _MODULES[m]
        if self._instance_forward is not None:
            model.forward = self._instance_forward
        elif "forward" in vars(model):
            del model.forward
        if getattr(model, "_mminference", None) is self:
            del model._mminference


def mminference_of(model: Any) -> MMInference | None:
    """The handle of a model patched by `apply_mminference`, or None."""
    return getattr(model, "_mminference", None)


def _base_function(module: torch.nn.Module, base: str) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":
        # eager is not in the registry; every modeling file defines its own eager_attention_forward
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise AdapterError(f"{type(module).__name__}: its modeling module has no eager_attention_forward")
        return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def _register(base: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = _PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        ALL_ATTENTION_FUNCTIONS.register(name, mmi_attention_forward)
        # same masks as the base implementation: dense calls must see exactly what the base would
        mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(base)
        if mask is not None:
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask)
    return name


def _language_attention_modules(model: Any, text_config: Any) -> list[torch.nn.Module]:
    return [
        m
        for m in model.modules()
        if getattr(m, "config", None) is text_config and hasattr(m, "layer_idx") and hasattr(m, "q_proj")
    ]


def apply_mminference(
    model: Any,
    configs: HeadConfigs | str | Path | None = None,
    *,
    min_tokens: int = DEFAULT_MIN_TOKENS,
    backend: Backend = "auto",
) -> MMInference:
    """Patch ``model`` (a transformers VLM of a known architecture) to run MMInference prefill in its language model.

    ``configs``: None (the family default, see `mmi_models.head_configs`), a JSON path, or a `HeadConfigs`; checked
    against the model's geometry. ``min_tokens``: rows with fewer valid tokens stay dense. ``backend``: how sparse
    rows are computed (`mmi_models.sparse_compute`: ``"auto"``, ``"kernels"``, ``"reference"``). Returns the handle
    (``handle.stats``, ``handle.remove()``); applying twice replaces the first handle.
    Raises AdapterError (unknown architecture, language attention not found, base attention not supported) or
    ConfigError (bad configs).
    """
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be >= 1, got {min_tokens}")
    resolve_backend(backend, torch.device("cpu"))  # unknown names / missing kernels fail here, not mid-forward
    old = mminference_of(model)
    if old is not None:
        old.remove()
    adapter = adapter_for(model)
    geometry = adapter.geometry()
    hc = adapter.default_head_configs() if configs is None else load_head_configs(configs, geometry)
    hc.validate_for(geometry.num_layers, geometry.num_q_heads, geometry.num_kv_heads)
    text = adapter.text_config
    base = text._attn_implementation or "eager"
    if base.startswith(_PREFIX) or base.startswith("paged|"):
        raise AdapterError(f"cannot wrap attention implementation {base!r}")
    modules = _language_attention_modules(model, text)
    if len(modules) != geometry.num_layers:
        raise AdapterError(
            f"{type(model).__name__}: found {len(modules)} language-model attention modules (config object shared, "
            f"with q_proj and layer_idx), expected {geometry.num_layers}"
        )
    handle = MMInference(model, adapter, hc, min_tokens, base, backend)
    name = _register(base)
    for m in modules:
        _MODULES[m] = (handle, _base_function(m, base))
    # Only the text sub-config switches: the vision tower's attention keeps its implementation.
    text._attn_implementation_internal = name

    original_forward = model.forward

    @functools.wraps(original_forward)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if args:  # positional input_ids (model(input_ids)): name it for the adapter
            kwargs = {"input_ids": args[0], **kwargs}
            args = args[1:]
        token = _CONTEXT.set(handle.context_for(kwargs))
        try:
            return original_forward(*args, **kwargs)
        finally:
            _CONTEXT.reset(token)

    model.forward = forward
    model._mminference = handle
    return handle


def mmi_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The registered attention function. ``query [B, Hq, Nq, D]``, ``key/value [B, Hkv, Nk, D]`` (transformers'
    layout); returns ``([B, Nq, Hq, D], None)`` like transformers' sdpa/eager functions. Dense decisions call the
    original function with the original arguments."""
    entry = _MODULES.get(module)
    if entry is None:  # not a patched language-model module (should not happen): behave like the base
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        base = str(module.config._attn_implementation).removeprefix(_PREFIX)
        fn = ALL_ATTENTION_FUNCTIONS.get(base) or _base_function(module, base)
        return fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    handle, base_fn = entry

    def dense(reason: str, rows: int) -> tuple[torch.Tensor, Any]:
        handle.stats.dense[reason] += rows
        return base_fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    bsz, _, n_q, _ = query.shape
    n_k = key.shape[2]
    ctx = _CONTEXT.get()
    if n_q == 1 and n_k > 1:
        return dense("decode", bsz)
    if ctx is None or ctx.handle is not handle:
        return dense("no_layout", bsz)
    if ctx.batch is None:
        if not ctx.dense_reasons:
            return dense(ctx.reason, bsz)
        for r in ctx.dense_reasons:  # per-row reasons of a batch without sparse rows
            handle.stats.dense[r] += 1
        return base_fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if module.training and dropout > 0:
        return dense("training", bsz)
    if kwargs.get("sliding_window") is not None:
        return dense("sliding_window", bsz)
    batch = ctx.batch
    if n_q != n_k or n_k != batch.num_tokens or bsz != batch.batch_size:
        return dense("layout_length_mismatch", bsz)
    layer = int(module.layer_idx)
    if all(spec.is_dense for spec in handle.head_configs.layers[layer].heads):
        return dense("dense_layer_config", bsz)

    layer_cfg = handle.head_configs.layers[layer]
    rows = tuple(b for b in ctx.sparse_rows if not _grid_unavailable(batch.layouts[b], layer_cfg))
    reasons = list(ctx.dense_reasons) + ["grid_stride_unavailable"] * (len(ctx.sparse_rows) - len(rows))
    for r in reasons:
        handle.stats.dense[r] += 1
    if not rows:
        return base_fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if reasons:  # mixed batch: the dense rows come from the original function, exactly
        out, _ = base_fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        out = out.clone()
    else:
        out = query.new_zeros(bsz, n_q, query.shape[1], query.shape[3])  # padding rows: zeros, never attended
    plan = ctx.plan(query.device, rows)
    spans = [slice(batch.offsets[b], batch.offsets[b] + batch.layouts[b].num_tokens) for b in rows]
    outs = plan.run(
        [query[b, :, sl].transpose(0, 1) for b, sl in zip(rows, spans, strict=True)],
        [key[b, :, sl].transpose(0, 1) for b, sl in zip(rows, spans, strict=True)],
        [value[b, :, sl].transpose(0, 1) for b, sl in zip(rows, spans, strict=True)],
        layer,
        scale=scaling,
    )
    for sl, o, b in zip(spans, outs, rows, strict=True):
        out[b, sl] = o.to(out.dtype)
    handle.stats.sparse += len(rows)
    handle.stats.backend[plan.backend] += len(rows)
    return out, None
