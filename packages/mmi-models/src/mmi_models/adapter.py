"""Model-family adapters: from a model's processed inputs to `mmi_core.ModalityLayout`s, plus attention geometry.

An adapter is registered under the architecture names of its family (``config.architectures[0]``, e.g.
``"Qwen2_5_VLForConditionalGeneration"``). `get_adapter(name)` returns the adapter class, `adapter_for(config)` an
instance bound to one model config. ``adapter.layouts(input_ids, attention_mask, **visual_metadata)`` returns one
layout per batch row covering the row's valid (unpadded) tokens, and where the row sits in the padded batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mmi_core import HeadConfigs, LayoutError, Modality, ModalityLayout, Segment, VisualGrid

__all__ = [
    "AdapterError",
    "AttentionGeometry",
    "BatchLayouts",
    "ModelAdapter",
    "VisualItem",
    "VisualItems",
    "adapter_for",
    "coalesce_text",
    "get_adapter",
    "known_architectures",
    "layout_from_placeholder_runs",
    "register_adapter",
    "valid_span",
]


class AdapterError(ValueError):
    """Unknown architecture, or a model config / inputs an adapter cannot read."""


@dataclass(frozen=True)
class AttentionGeometry:
    """The language model's self-attention shape (the only attention mmi sparsifies)."""

    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class BatchLayouts:
    """Layouts of one (possibly padded) batch.

    Row ``b``'s valid tokens are positions ``[offsets[b], offsets[b] + layouts[b].num_tokens)`` of the padded row of
    ``num_tokens`` positions (left padding: ``offsets[b]`` = number of pad tokens; no padding: 0).
    """

    layouts: tuple[ModalityLayout, ...]
    offsets: tuple[int, ...]
    num_tokens: int

    def __post_init__(self) -> None:
        if len(self.layouts) != len(self.offsets):
            raise LayoutError(f"{len(self.layouts)} layouts but {len(self.offsets)} offsets")
        for b, (lay, off) in enumerate(zip(self.layouts, self.offsets, strict=True)):
            if off < 0 or off + lay.num_tokens > self.num_tokens:
                raise LayoutError(f"row {b}: {lay.num_tokens} tokens at offset {off} overrun {self.num_tokens}")

    @property
    def batch_size(self) -> int:
        return len(self.layouts)

    @property
    def has_visual(self) -> bool:
        return any(s.modality != Modality.TEXT for lay in self.layouts for s in lay.segments)


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open [start, end) runs of True in a 1-D bool tensor."""
    m = mask.to(torch.int8)
    if m.numel() == 0:
        return []
    d = torch.diff(m, prepend=m.new_zeros(1), append=m.new_zeros(1))
    starts = torch.nonzero(d == 1).flatten().tolist()
    ends = torch.nonzero(d == -1).flatten().tolist()
    return list(zip(starts, ends, strict=True))


def valid_span(attention_mask_row: torch.Tensor | None, n: int, row: int) -> tuple[int, int]:
    """(start, length) of the one contiguous run of valid tokens in a padded row. Raises AdapterError otherwise."""
    if attention_mask_row is None:
        return 0, n
    runs = _runs(attention_mask_row.to("cpu").bool())
    if len(runs) != 1:
        raise AdapterError(
            f"row {row}: attention_mask must mark one contiguous run of valid tokens (left or right padding), "
            f"found {len(runs)} runs"
        )
    return runs[0][0], runs[0][1] - runs[0][0]


class ModelAdapter(ABC):
    """Base class of the family adapters. Subclasses set ``family`` and ``architectures`` and implement
    `row_layout`; `layouts` handles batching and padding for all of them."""

    family: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]
    #: How the adapter was verified (shown in the README table): "processor" or "synthetic".
    verified: ClassVar[str]
    #: Keyword names of the visual metadata `layouts` reads (e.g. ``video_grid_thw``); others are ignored.
    metadata_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        self.config = config

    # -- geometry -------------------------------------------------------------------------------------------------
    @property
    def text_config(self) -> Any:
        """The language model's config (``config.text_config`` / ``get_text_config()`` / the config itself)."""
        getter = getattr(self.config, "get_text_config", None)
        if callable(getter):
            return getter()
        return getattr(self.config, "text_config", None) or self.config

    def geometry(self) -> AttentionGeometry:
        """Layers, q heads, kv heads and head dim of the language model. Raises AdapterError when missing."""
        tc = self.text_config
        try:
            layers = int(tc.num_hidden_layers)
            hq = int(tc.num_attention_heads)
            hkv = int(getattr(tc, "num_key_value_heads", None) or hq)
            hd = getattr(tc, "head_dim", None) or int(tc.hidden_size) // hq
        except AttributeError as e:
            raise AdapterError(f"{self.family}: text config lacks an attention field ({e})") from None
        return AttentionGeometry(layers, hq, hkv, int(hd))

    # -- layouts --------------------------------------------------------------------------------------------------
    @abstractmethod
    def row_layout(self, input_ids: torch.Tensor, items: VisualItems) -> ModalityLayout:
        """Layout of one row's valid tokens (int64 [n] ``input_ids``); consume this row's visual items from
        ``items`` in order. Raises LayoutError / AdapterError on inconsistent inputs."""

    @abstractmethod
    def visual_items(self, **metadata: Any) -> VisualItems:
        """The batch's visual items (in batch order) from the processor's metadata (``video_grid_thw`` ...)."""

    def layouts(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **metadata: Any
    ) -> BatchLayouts:
        """One layout per row of ``input_ids`` (int [B, N] or [N]); ``attention_mask`` (int/bool [B, N], 1 = valid)
        gives the padding. Visual metadata keywords are family specific (see ``metadata_keys``).

        Raises AdapterError / LayoutError when the metadata does not match the visual tokens (too few or too many
        grids, a grid whose token count differs from its placeholder run).
        """
        ids = input_ids if input_ids.dim() == 2 else input_ids[None]
        if ids.dim() != 2:
            raise AdapterError(f"input_ids must be [B, N] or [N], got shape {tuple(input_ids.shape)}")
        mask = None
        if attention_mask is not None:
            mask = attention_mask if attention_mask.dim() == 2 else attention_mask[None]
            if mask.shape != ids.shape:
                raise AdapterError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
        ids = ids.to("cpu", torch.int64)
        items = self.visual_items(**{k: v for k, v in metadata.items() if k in self.metadata_keys})
        layouts, offsets = [], []
        for b in range(ids.shape[0]):
            start, length = valid_span(None if mask is None else mask[b], ids.shape[1], b)
            layouts.append(self.row_layout(ids[b, start : start + length], items))
            offsets.append(start)
        items.finish()
        return BatchLayouts(tuple(layouts), tuple(offsets), ids.shape[1])

    def layouts_for(self, inputs: Mapping[str, Any]) -> BatchLayouts:
        """`layouts` from a processor's output (``BatchFeature`` / dict with ``input_ids``, ``attention_mask`` and the
        family's metadata keys). Raises AdapterError when ``input_ids`` is missing."""
        if inputs.get("input_ids") is None:
            raise AdapterError(f"{self.family}: inputs have no input_ids (layouts need the token ids)")
        meta = {k: inputs[k] for k in self.metadata_keys if inputs.get(k) is not None}
        return self.layouts(inputs["input_ids"], inputs.get("attention_mask"), **meta)

    def tokens_per_frame(self, **metadata: Any) -> list[int]:
        """Tokens per frame of every video in the batch's metadata, in order (off-grid tokens included)."""
        items = self.visual_items(**{k: v for k, v in metadata.items() if k in self.metadata_keys})
        return [it.grid.tokens_per_frame for it in items.all() if it.modality == Modality.VIDEO]

    def default_head_configs(self) -> HeadConfigs:
        """The family's default head-config policy for this model's geometry (see `mmi_models.head_configs`)."""
        from mmi_models.head_configs import default_head_configs

        return default_head_configs(self)


@dataclass(frozen=True)
class VisualItem:
    """One image or video as the language model sees it: its grid and how many placeholder tokens it fills."""

    modality: Modality
    grid: VisualGrid
    #: Placeholder tokens in input_ids (grid tokens plus off-grid tokens that use the placeholder id).
    num_placeholders: int
    #: Tokens after the grid that use the placeholder id but belong to no frame (LLaVA-OneVision's video newline).
    trailing: int = 0


class VisualItems:
    """Ordered visual items of a batch, per modality; rows consume them in order. `finish` checks all were used."""

    def __init__(
        self,
        items: Mapping[Modality, list[VisualItem]],
        flat: Mapping[Modality, int | None] | None = None,
        **extra: Any,
    ) -> None:
        """``flat``: modalities whose items are taken one per placeholder run as a flat 1 x n grid, with the
        expected number of such items (None = not checked). ``extra``: family-specific metadata that a `row_layout`
        consumes itself (LLaVA-OneVision's ``image_sizes``, counted in ``extra["next_image"]`` and checked by
        `finish`)."""
        self.extra: dict[str, Any] = dict(extra)
        self._items = {m: list(v) for m, v in items.items()}
        self._next = dict.fromkeys(self._items, 0)
        self._flat = dict(flat or {})
        self._flat_used: dict[Modality, int] = {}

    def all(self) -> list[VisualItem]:
        return [it for m in sorted(self._items) for it in self._items[m]]

    def take(self, modality: Modality, where: str, run_length: int | None = None) -> VisualItem:
        if modality in self._flat:
            # Structure not modelled: the whole placeholder run is one item, a single row of tokens.
            assert run_length is not None
            self._flat_used[modality] = self._flat_used.get(modality, 0) + 1
            return VisualItem(modality, VisualGrid(1, 1, run_length), run_length)
        pool = self._items.get(modality, [])
        i = self._next.get(modality, 0)
        if i >= len(pool):
            raise AdapterError(
                f"{where}: {modality.name.lower()} placeholder tokens found but the metadata describes only "
                f"{len(pool)} {modality.name.lower()}(s)"
            )
        self._next[modality] = i + 1
        return pool[i]

    def finish(self) -> None:
        sizes = self.extra.get("image_sizes")
        if sizes is not None and self.extra.get("next_image", 0) != len(sizes):
            raise AdapterError(
                f"image_sizes describes {len(sizes)} image(s) but input_ids hold {self.extra.get('next_image', 0)} "
                "image placeholder runs"
            )
        for m, want in self._flat.items():
            if want is not None and self._flat_used.get(m, 0) != want:
                raise AdapterError(
                    f"metadata describes {want} {m.name.lower()}(s) but input_ids hold {self._flat_used.get(m, 0)} "
                    f"{m.name.lower()} placeholder runs"
                )
        for m, pool in self._items.items():
            if self._next[m] != len(pool):
                raise AdapterError(
                    f"metadata describes {len(pool)} {m.name.lower()}(s) but input_ids hold placeholders for "
                    f"{self._next[m]}"
                )


def layout_from_placeholder_runs(
    input_ids: torch.Tensor,
    placeholder_ids: Mapping[Modality, int],
    items: VisualItems,
    family: str,
) -> ModalityLayout:
    """Layout of a row whose visual items fill runs of placeholder ids (one id per modality), items back to back
    allowed. Each item's ``num_placeholders`` tokens become a segment with its grid; its ``trailing`` tokens (after
    the grid) become a 1-token-per-id text segment. Raises AdapterError when runs and items disagree."""
    segs: list[Segment] = []
    pos = 0
    n = input_ids.numel()
    runs: list[tuple[int, int, Modality]] = []
    for m, tid in placeholder_ids.items():
        runs += [(a, b, m) for a, b in _runs(input_ids == tid)]
    for a, b, m in sorted(runs):
        segs.append(Segment(Modality.TEXT, pos, a))
        p = a
        while p < b:
            it = items.take(m, f"{family} tokens [{a}, {b})", run_length=b - p)
            if p + it.num_placeholders > b:
                raise AdapterError(
                    f"{family}: {m.name.lower()} metadata says {it.num_placeholders} tokens (grid {it.grid}) but the "
                    f"placeholder run at [{p}, {b}) holds only {b - p}"
                )
            g_end = p + it.grid.num_tokens
            segs.append(Segment(m, p, g_end, it.grid))
            segs.append(Segment(Modality.TEXT, g_end, g_end + it.trailing))
            p += it.num_placeholders
        pos = b
    segs.append(Segment(Modality.TEXT, pos, n))
    return ModalityLayout(n, coalesce_text(segs))


def coalesce_text(segments: list[Segment]) -> tuple[Segment, ...]:
    """Drop empty segments and merge adjacent text segments (a newline text token next to the prompt's text)."""
    out: list[Segment] = []
    for s in segments:
        if s.length == 0:
            continue
        if out and s.modality == Modality.TEXT and out[-1].modality == Modality.TEXT:
            out[-1] = Segment(Modality.TEXT, out[-1].start, s.end)
        else:
            out.append(s)
    return tuple(out)


# -- registry -------------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[ModelAdapter]] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: register an adapter under each of its ``architectures``. Raises AdapterError on a clash."""
    for arch in cls.architectures:
        if arch in _REGISTRY and _REGISTRY[arch] is not cls:
            raise AdapterError(f"architecture {arch!r} is already handled by {_REGISTRY[arch].__name__}")
        _REGISTRY[arch] = cls
    return cls


def known_architectures() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def get_adapter(architecture: str) -> type[ModelAdapter]:
    """The adapter class registered for ``architecture``. Raises AdapterError listing the known ones."""
    _load_builtin()
    try:
        return _REGISTRY[architecture]
    except KeyError:
        raise AdapterError(
            f"no mmi adapter for architecture {architecture!r}; known architectures: {', '.join(known_architectures())}"
        ) from None


def adapter_for(model_or_config: Any) -> ModelAdapter:
    """An adapter instance for a model (``PreTrainedModel``) or its config, chosen by ``config.architectures[0]``
    (falling back to the model's class name). Raises AdapterError for unknown architectures."""
    config = getattr(model_or_config, "config", model_or_config)
    names = list(getattr(config, "architectures", None) or [])
    if hasattr(model_or_config, "config"):
        names.append(type(model_or_config).__name__)
    _load_builtin()
    for name in names:
        if name in _REGISTRY:
            return _REGISTRY[name](config)
    raise AdapterError(
        f"no mmi adapter for architecture(s) {names or '[none given]'}; known architectures: "
        f"{', '.join(known_architectures())}"
    )


def _load_builtin() -> None:
    # Imported lazily so that this module has no import cycle with the family modules that register themselves.
    from mmi_models import families  # noqa: F401
