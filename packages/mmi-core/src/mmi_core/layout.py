"""Where each modality sits in one sequence: `ModalityLayout`, its `Segment`s and their `VisualGrid`s.

A layout describes the **whole** sequence a request attends over (cached prefix included). Queries of a chunked
prefill are the last ``n_q`` tokens of it; nothing here depends on how many tokens are queries.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["LayoutError", "Modality", "ModalityLayout", "Segment", "VisualGrid"]


class LayoutError(ValueError):
    """A layout, segment or grid is inconsistent (overlap, gap, wrong size, negative size)."""


class Modality(enum.IntEnum):
    """Token modality. The integer values are the codes used in per-token modality tensors."""

    TEXT = 0
    IMAGE = 1
    VIDEO = 2

    @classmethod
    def parse(cls, value: Modality | str | int) -> Modality:
        if isinstance(value, Modality):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise LayoutError(f"unknown modality {value!r}; expected one of text, image, video") from None
        try:
            return cls(int(value))
        except (TypeError, ValueError):
            raise LayoutError(f"unknown modality code {value!r}; expected 0 (text), 1 (image) or 2 (video)") from None


@dataclass(frozen=True)
class VisualGrid:
    """Token grid of one image or video segment.

    Every frame occupies ``tokens_per_frame`` consecutive tokens::

        [frame_prefix tokens] rows x ([cols grid tokens] [row_extra tokens]) [frame_suffix tokens]

    ``frame_prefix`` models per-frame timestamps (Qwen3-VL), ``row_extra`` per-row newline tokens (LLaVA anyres),
    ``frame_suffix`` per-frame newline/separator tokens (LLaVA-Video). Tokens that are not grid tokens are
    "off-grid"; they stay in the segment and are permuted like any other token of it (see `mmi_core.permutation`).
    ``frames`` counts frames *after* temporal merging (Qwen2.5-VL merges two input frames into one).
    """

    frames: int
    rows: int
    cols: int
    row_extra: int = 0
    frame_prefix: int = 0
    frame_suffix: int = 0

    def __post_init__(self) -> None:
        for name in ("frames", "rows", "cols"):
            if getattr(self, name) < 1:
                raise LayoutError(f"VisualGrid.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("row_extra", "frame_prefix", "frame_suffix"):
            if getattr(self, name) < 0:
                raise LayoutError(f"VisualGrid.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def tokens_per_frame(self) -> int:
        return self.frame_prefix + self.rows * (self.cols + self.row_extra) + self.frame_suffix

    @property
    def grid_tokens_per_frame(self) -> int:
        return self.rows * self.cols

    @property
    def num_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    def on_grid_mask(self) -> torch.Tensor:
        """bool [num_tokens]: True for grid tokens, False for prefix/newline/suffix tokens."""
        row = torch.cat([torch.ones(self.cols, dtype=torch.bool), torch.zeros(self.row_extra, dtype=torch.bool)])
        frame = torch.cat(
            [
                torch.zeros(self.frame_prefix, dtype=torch.bool),
                row.repeat(self.rows),
                torch.zeros(self.frame_suffix, dtype=torch.bool),
            ]
        )
        return frame.repeat(self.frames)


@dataclass(frozen=True)
class Segment:
    """A half-open token range ``[start, end)`` of one modality; image/video segments carry their grid."""

    modality: Modality
    start: int
    end: int
    grid: VisualGrid | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", Modality.parse(self.modality))
        if self.start < 0 or self.end < self.start:
            raise LayoutError(f"segment [{self.start}, {self.end}) has a negative size or start")
        if self.modality == Modality.TEXT and self.grid is not None:
            raise LayoutError(f"text segment [{self.start}, {self.end}) cannot carry a grid")
        if self.modality != Modality.TEXT and self.grid is None:
            raise LayoutError(f"{self.modality.name.lower()} segment [{self.start}, {self.end}) needs a VisualGrid")
        if self.grid is not None and self.grid.num_tokens != self.length:
            raise LayoutError(
                f"{self.modality.name.lower()} segment [{self.start}, {self.end}) has {self.length} tokens but "
                f"its grid {self.grid} has {self.grid.num_tokens} "
                f"({self.grid.frames} frames x {self.grid.tokens_per_frame})"
            )

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ModalityLayout:
    """One sequence as ordered, contiguous, non-overlapping segments covering ``[0, num_tokens)``.

    ``ModalityLayout(n)`` with no segments is all text. Empty segments are dropped on construction (an empty text
    segment between two videos is legal input). Raises `LayoutError` on gaps, overlaps, segments out of order, or
    segments that do not end exactly at ``num_tokens``.
    """

    num_tokens: int
    segments: tuple[Segment, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.num_tokens < 0:
            raise LayoutError(f"num_tokens must be >= 0, got {self.num_tokens}")
        if not self.segments and self.num_tokens > 0:  # ModalityLayout(n): all text
            object.__setattr__(self, "segments", (Segment(Modality.TEXT, 0, self.num_tokens),))
        segs = tuple(s for s in self.segments if s.length > 0)
        pos = 0
        for s in segs:
            if s.start < pos:
                raise LayoutError(f"segments overlap at token {s.start} (previous segment ends at {pos})")
            if s.start > pos:
                raise LayoutError(f"gap in layout: tokens [{pos}, {s.start}) belong to no segment")
            pos = s.end
        if pos != self.num_tokens:
            raise LayoutError(f"segments cover [0, {pos}) but the layout has {self.num_tokens} tokens")
        object.__setattr__(self, "segments", segs)

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def text(cls, num_tokens: int) -> ModalityLayout:
        return cls(num_tokens, (Segment(Modality.TEXT, 0, num_tokens),))

    @classmethod
    def from_parts(cls, parts: Sequence[tuple[Modality | str, int | VisualGrid]]) -> ModalityLayout:
        """Build from ordered parts: ``("text", n)`` or ``("video"|"image", VisualGrid)``."""
        segs, pos = [], 0
        for modality, what in parts:
            m = Modality.parse(modality)
            if isinstance(what, VisualGrid):
                n, grid = what.num_tokens, what
            else:
                n, grid = int(what), None
            segs.append(Segment(m, pos, pos + n, grid))
            pos += n
        return cls(pos, tuple(segs))

    @classmethod
    def from_token_modalities(cls, modalities: torch.Tensor, grids: Sequence[VisualGrid]) -> ModalityLayout:
        """Build from a per-token modality vector (int codes of `Modality`) and the visual grids in order.

        A run of visual tokens may hold several consecutive items (two videos back to back): grids are consumed in
        order until the run is covered. Raises `LayoutError` when the grids do not tile the visual runs exactly.
        """
        if modalities.dim() != 1:
            raise LayoutError(f"modalities must be 1-D [num_tokens], got shape {tuple(modalities.shape)}")
        codes = modalities.to("cpu", torch.int64)
        if codes.numel() and (codes.min() < 0 or codes.max() > 2):
            raise LayoutError("modality codes must be 0 (text), 1 (image) or 2 (video)")
        n = codes.numel()
        if n == 0:
            return cls(0, ())
        change = torch.nonzero(codes[1:] != codes[:-1]).flatten() + 1
        bounds = [0, *change.tolist(), n]
        segs: list[Segment] = []
        grid_iter = iter(grids)
        used = 0
        for a, b in itertools.pairwise(bounds):
            m = Modality(int(codes[a]))
            if m == Modality.TEXT:
                segs.append(Segment(m, a, b))
                continue
            pos = a
            while pos < b:
                grid = next(grid_iter, None)
                if grid is None:
                    raise LayoutError(f"{m.name.lower()} tokens [{pos}, {b}) have no grid left to describe them")
                used += 1
                if pos + grid.num_tokens > b:
                    raise LayoutError(
                        f"grid #{used - 1} ({grid.num_tokens} tokens) overruns the {m.name.lower()} run [{a}, {b})"
                    )
                segs.append(Segment(m, pos, pos + grid.num_tokens, grid))
                pos += grid.num_tokens
        if next(grid_iter, None) is not None:
            raise LayoutError(f"{len(grids)} grids given but the visual tokens hold only {used}")
        return cls(n, tuple(segs))

    # -- queries --------------------------------------------------------------------------------------------------
    def token_modalities(self) -> torch.Tensor:
        """int64 [num_tokens]: the `Modality` code of every token."""
        out = torch.zeros(self.num_tokens, dtype=torch.int64)
        for s in self.segments:
            out[s.start : s.end] = int(s.modality)
        return out

    def segments_of(self, modality: Modality | str) -> tuple[Segment, ...]:
        m = Modality.parse(modality)
        return tuple(s for s in self.segments if s.modality == m)

    def modalities(self) -> tuple[Modality, ...]:
        """Modalities present, in code order."""
        return tuple(sorted({s.modality for s in self.segments}))

    def num_tokens_of(self, modality: Modality | str) -> int:
        return sum(s.length for s in self.segments_of(modality))

    @property
    def tokens_per_frame(self) -> int | None:
        """Tokens per frame of the video segments when they agree (the default Grid stride), else None."""
        tpf = {s.grid.tokens_per_frame for s in self.segments_of(Modality.VIDEO) if s.grid is not None}
        return tpf.pop() if len(tpf) == 1 else None

    def shifted(self, offset: int, num_tokens: int) -> ModalityLayout:
        """This layout's segments placed at ``offset`` inside a longer sequence of ``num_tokens`` (left padding).

        The tokens outside become text segments.
        """
        if offset < 0 or offset + self.num_tokens > num_tokens:
            raise LayoutError(f"cannot place a {self.num_tokens}-token layout at {offset} in {num_tokens} tokens")
        segs = [Segment(Modality.TEXT, 0, offset)]
        segs += [Segment(s.modality, s.start + offset, s.end + offset, s.grid) for s in self.segments]
        segs.append(Segment(Modality.TEXT, offset + self.num_tokens, num_tokens))
        return ModalityLayout(num_tokens, tuple(segs))
