"""`HeadConfigs`: the per-layer, per-query-head pattern file (versioned JSON, validated by pydantic).

Boundary kinds (MMInference's inter-modality handling):
- ``"none"`` / ``"k"``: the head's ``pattern`` runs over the whole sequence. The paper's K-boundary needs nothing
  beyond that at execution time; the two names are kept apart so that search reports say what was chosen.
- ``"q"``: query rows are grouped by modality; rows of modality ``m`` use ``by_modality[m]`` (``pattern`` when absent).
- ``"2d"``: rows and keys are grouped by modality; each ordered pair ``"query->key"`` uses ``by_pair[pair]``
  (``pattern`` when absent), all inside one online softmax.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmi_core.layout import Modality
from mmi_core.patterns import Dense, PatternConfig

__all__ = ["SCHEMA_VERSION", "ConfigError", "HeadConfigs", "HeadSpec", "LayerConfig"]

SCHEMA_VERSION = 1
_FROZEN = ConfigDict(frozen=True, extra="forbid")
_MODALITY_NAMES = {m.name.lower() for m in Modality}


class ConfigError(ValueError):
    """A head-config file or object is malformed or does not fit the model it is used with."""


def _pair_key(key: str) -> str:
    parts = key.replace(" ", "").lower().split("->")
    if len(parts) != 2 or not set(parts) <= _MODALITY_NAMES:
        raise ValueError(f"2d pair key {key!r} must look like 'text->video' (modalities: {sorted(_MODALITY_NAMES)})")
    return "->".join(parts)


class HeadSpec(BaseModel):
    """What one query head does: a boundary kind and its pattern(s)."""

    model_config = _FROZEN
    boundary: Literal["none", "k", "q", "2d"] = "none"
    pattern: PatternConfig = Field(default_factory=Dense)
    by_modality: dict[str, PatternConfig] = Field(default_factory=dict)
    by_pair: dict[str, PatternConfig] = Field(default_factory=dict)

    @field_validator("by_modality", mode="before")
    @classmethod
    def _modality_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key in v:
                if str(key).lower() not in _MODALITY_NAMES:
                    raise ValueError(f"by_modality key {key!r} is not a modality ({sorted(_MODALITY_NAMES)})")
            return {str(k).lower(): p for k, p in v.items()}
        return v

    @field_validator("by_pair", mode="before")
    @classmethod
    def _pair_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {_pair_key(str(k)): p for k, p in v.items()}
        return v

    @model_validator(mode="after")
    def _consistent(self) -> HeadSpec:
        if self.by_modality and self.boundary != "q":
            raise ValueError(f"by_modality is only used by boundary 'q', not {self.boundary!r}")
        if self.by_pair and self.boundary != "2d":
            raise ValueError(f"by_pair is only used by boundary '2d', not {self.boundary!r}")
        blocks = {p.block for p in self.patterns() if not isinstance(p, Dense)}
        if len(blocks) > 1:
            raise ValueError(f"all patterns of one head must share one block size, got {sorted(blocks)}")
        return self

    def patterns(self) -> list[PatternConfig]:
        return [self.pattern, *self.by_modality.values(), *self.by_pair.values()]

    def for_query(self, modality: Modality) -> PatternConfig:
        """Pattern for query rows of ``modality`` (boundary 'q'); the head pattern otherwise."""
        if self.boundary == "q":
            return self.by_modality.get(modality.name.lower(), self.pattern)
        return self.pattern

    def for_pair(self, query: Modality, key: Modality) -> PatternConfig:
        """Pattern for (query modality, key modality) (boundary '2d'); `for_query` otherwise."""
        if self.boundary == "2d":
            return self.by_pair.get(f"{query.name.lower()}->{key.name.lower()}", self.pattern)
        return self.for_query(query)

    @property
    def is_dense(self) -> bool:
        return all(isinstance(p, Dense) for p in self.patterns())

    @property
    def block(self) -> int | None:
        blocks = {p.block for p in self.patterns() if not isinstance(p, Dense)}
        return blocks.pop() if blocks else None


class LayerConfig(BaseModel):
    """One layer: a `HeadSpec` per query head and, per KV head, whether its GQA group executes ``"group"``
    (one shared selection, union of the group's heads; one stride/phase for Grid) or ``"head"`` (per query head)."""

    model_config = _FROZEN
    heads: list[HeadSpec]
    gqa: list[Literal["group", "head"]]


class HeadConfigs(BaseModel):
    """Per-layer x per-query-head patterns for one model, with free-form metadata (model, date, how it was made)."""

    model_config = _FROZEN
    schema_version: int = SCHEMA_VERSION
    num_layers: int = Field(ge=1)
    num_q_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    layers: list[LayerConfig]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> HeadConfigs:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported (this mmi reads {SCHEMA_VERSION})")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads {self.num_q_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if len(self.layers) != self.num_layers:
            raise ValueError(f"{len(self.layers)} layers given, num_layers is {self.num_layers}")
        for i, layer in enumerate(self.layers):
            if len(layer.heads) != self.num_q_heads:
                raise ValueError(f"layer {i} has {len(layer.heads)} heads, num_q_heads is {self.num_q_heads}")
            if len(layer.gqa) != self.num_kv_heads:
                raise ValueError(f"layer {i} has {len(layer.gqa)} gqa entries, num_kv_heads is {self.num_kv_heads}")
            blocks = {h.block for h in layer.heads} - {None}
            if len(blocks) > 1:
                raise ValueError(f"layer {i} mixes block sizes {sorted(blocks)}; one block size per layer")
        return self

    # -- constructors ---------------------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        num_layers: int,
        num_q_heads: int,
        num_kv_heads: int,
        spec: HeadSpec | PatternConfig,
        gqa: Literal["group", "head"] = "group",
        metadata: dict[str, Any] | None = None,
    ) -> HeadConfigs:
        """Every head of every layer gets ``spec`` (a `HeadSpec`, or a pattern with boundary 'none')."""
        if not isinstance(spec, HeadSpec):
            spec = HeadSpec(pattern=spec)
        layer = LayerConfig(heads=[spec] * num_q_heads, gqa=[gqa] * num_kv_heads)
        return cls(
            num_layers=num_layers,
            num_q_heads=num_q_heads,
            num_kv_heads=num_kv_heads,
            layers=[layer] * num_layers,
            metadata=metadata or {},
        )

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> HeadConfigs:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: not valid JSON ({e})") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{source}: invalid head configs:\n{e}") from None

    @classmethod
    def load(cls, path: str | Path) -> HeadConfigs:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"head-config file {path} does not exist")
        return cls.loads(path.read_text(), str(path))

    def dumps(self) -> str:
        return self.model_dump_json(indent=1, exclude_defaults=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    # -- use ------------------------------------------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    def spec(self, layer: int, head: int) -> HeadSpec:
        return self.layers[layer].heads[head]

    def validate_for(self, num_layers: int, num_q_heads: int, num_kv_heads: int) -> HeadConfigs:
        """Raise `ConfigError` unless these configs fit a model of this geometry; return self."""
        got = (self.num_layers, self.num_q_heads, self.num_kv_heads)
        want = (num_layers, num_q_heads, num_kv_heads)
        if got != want:
            raise ConfigError(
                f"head configs are for (layers, q heads, kv heads) = {got}, the model has {want}"
                + (f" [{self.metadata.get('model')}]" if self.metadata.get("model") else "")
            )
        return self

    def tp_slice(self, rank: int, world_size: int) -> HeadConfigs:
        """The heads tensor-parallel rank ``rank`` of ``world_size`` owns (q heads split evenly; KV heads split, or
        replicated when there are fewer KV heads than ranks, as SGLang and vLLM do)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"bad tensor-parallel rank {rank} of {world_size}")
        if self.num_q_heads % world_size:
            raise ConfigError(f"{self.num_q_heads} q heads do not split over {world_size} ranks")
        hq = self.num_q_heads // world_size
        if self.num_kv_heads >= world_size:
            if self.num_kv_heads % world_size:
                raise ConfigError(f"{self.num_kv_heads} kv heads do not split over {world_size} ranks")
            hkv = self.num_kv_heads // world_size
            kv0 = rank * hkv
        else:
            # replicate: each KV head serves world_size / num_kv_heads consecutive ranks
            if world_size % self.num_kv_heads:
                raise ConfigError(f"{self.num_kv_heads} kv heads cannot be replicated evenly over {world_size} ranks")
            hkv = 1
            kv0 = rank * self.num_kv_heads // world_size
        layers = [
            LayerConfig(heads=lc.heads[rank * hq : (rank + 1) * hq], gqa=lc.gqa[kv0 : kv0 + hkv]) for lc in self.layers
        ]
        meta = {**self.metadata, "tp": {"rank": rank, "world_size": world_size}}
        return HeadConfigs(num_layers=self.num_layers, num_q_heads=hq, num_kv_heads=hkv, layers=layers, metadata=meta)
