"""Permutations of token order: grid permutation (video), modality grouping, composition, exact inverses.

A `Permutation` is an index, not a copy: kernels gather rows through ``order`` and scatter outputs back through it.
Causality is never evaluated in permuted order; ``positions`` gives the original position of every permuted row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmi_core.layout import LayoutError, Modality, ModalityLayout

__all__ = ["Permutation", "grid_permutation", "grid_residues", "modality_permutation"]


@dataclass(frozen=True, eq=False)
class Permutation:
    """``order[p]`` is the index (0-based, relative to ``offset``) of the token placed at permuted position ``p``.

    ``offset`` is the original position of index 0: queries of a chunk over a cached prefix of length P have
    ``offset = P``. ``inverse[i]`` is the permuted position of index ``i``; ``positions = offset + order``.

    order: int [n] (stored as int64); inverse: int64 [n], derived. Raises ValueError when ``order`` is not 1-D, not
    integer, not a permutation of ``0..n-1``, or ``offset < 0``.
    """

    order: torch.Tensor
    offset: int = 0
    inverse: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.order.dim() != 1:
            raise ValueError(f"Permutation.order must be 1-D, got shape {tuple(self.order.shape)}")
        if self.order.is_floating_point() or self.order.is_complex():
            raise ValueError(f"Permutation.order must be an integer tensor, got {self.order.dtype}")
        if self.offset < 0:
            raise ValueError(f"Permutation.offset must be >= 0, got {self.offset}")
        order = self.order.to(torch.int64)
        n = order.numel()
        # Range check first: negative ids would silently wrap in the scatter below, large ones raise IndexError.
        if n and (int(order.min()) < 0 or int(order.max()) >= n):
            raise ValueError(f"Permutation.order is not a permutation of 0..{n - 1}: ids outside that range")
        inverse = torch.full((n,), -1, dtype=torch.int64, device=order.device)
        inverse[order] = torch.arange(n, device=order.device)
        if bool((inverse < 0).any()):
            raise ValueError(f"Permutation.order is not a permutation of 0..{n - 1}: repeated ids")
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "inverse", inverse)

    def __eq__(self, other: object) -> bool:
        """Same offset and same order (on any devices); tensor fields make the generated dataclass ``==`` unusable."""
        if not isinstance(other, Permutation):
            return NotImplemented
        return self.offset == other.offset and torch.equal(self.order.cpu(), other.order.cpu())

    def __hash__(self) -> int:
        return hash((self.offset, self.size))

    @classmethod
    def identity(cls, n: int, offset: int = 0, device: torch.device | str | None = None) -> Permutation:
        return cls(torch.arange(n, device=device), offset)

    @property
    def size(self) -> int:
        return self.order.numel()

    @property
    def positions(self) -> torch.Tensor:
        """int64 [n]: original position of each permuted row."""
        return self.order + self.offset

    @property
    def is_identity(self) -> bool:
        return bool(torch.equal(self.order, torch.arange(self.size, device=self.order.device)))

    def apply(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Original order -> permuted order along ``dim``."""
        return x.index_select(dim, self.order.to(x.device))

    def undo(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Permuted order -> original order along ``dim``."""
        return x.index_select(dim, self.inverse.to(x.device))

    def then(self, other: Permutation) -> Permutation:
        """The permutation that applies ``self`` first, then ``other`` (to the already permuted sequence):
        ``self.then(other).apply(x) == other.apply(self.apply(x))``. Keeps ``self.offset``."""
        if other.size != self.size:
            raise ValueError(f"cannot compose permutations of sizes {self.size} and {other.size}")
        return Permutation(self.order[other.order.to(self.order.device)], self.offset)


def _check_range(layout: ModalityLayout, start: int, stop: int | None) -> int:
    stop = layout.num_tokens if stop is None else stop
    if not 0 <= start <= stop <= layout.num_tokens:
        raise LayoutError(f"token range [{start}, {stop}) is outside the {layout.num_tokens}-token layout")
    return stop


def grid_residues(positions: torch.Tensor, stride: int, phase: int) -> torch.Tensor:
    """Residue class ``(pos - phase) mod stride`` of each original position (the grid-line index)."""
    return torch.remainder(positions - phase, stride)


def grid_permutation(
    layout: ModalityLayout, stride: int, phase: int, start: int = 0, stop: int | None = None
) -> Permutation:
    """Grid permutation of tokens ``[start, stop)`` of ``layout`` (the keys: the whole sequence; the queries of a
    chunk: its own range).

    Inside each VIDEO segment the tokens are stably sorted by ``((pos - phase) mod stride, pos)``: every residue
    class (one grid line, e.g. one spatial patch across frames) becomes contiguous, in frame order. Off-grid tokens
    of the segment (newlines, timestamps) are sorted by the same rule; they sit on their own residue classes when
    the stride is the frame size. Text and image tokens keep their place. ``phase`` is an absolute position.
    """
    stop = _check_range(layout, start, stop)
    if stride < 1:
        raise ValueError(f"grid stride must be >= 1, got {stride}")
    order = torch.arange(start, stop)
    for seg in layout.segments_of(Modality.VIDEO):
        a, b = max(seg.start, start), min(seg.end, stop)
        if a >= b:
            continue
        pos = torch.arange(a, b)
        key = grid_residues(pos, stride, phase) * layout.num_tokens + pos
        order[a - start : b - start] = pos[torch.argsort(key)]
    return Permutation(order - start, start)


def modality_permutation(layout: ModalityLayout, start: int = 0, stop: int | None = None) -> Permutation:
    """Tokens ``[start, stop)`` stably grouped by modality: all text, then image, then video, each in original order."""
    stop = _check_range(layout, start, stop)
    codes = layout.token_modalities()[start:stop]
    pos = torch.arange(stop - start)
    return Permutation(torch.argsort(codes * layout.num_tokens + pos), start)
