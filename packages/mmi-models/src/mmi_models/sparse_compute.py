"""The one place that decides how the sparse rows of a batch are computed for the transformers integration.

``backend``:
- ``"kernels"``: mmi-kernels' `SparsePrefillWrapper` — planned once per forward batch, run per layer on the packed
  sparse rows (Triton on CUDA; on CPU the wrapper's own PyTorch execution of its index, or the Triton interpreter
  under ``TRITON_INTERPRET=1``);
- ``"reference"``: ``mmi_core.mmi_attention_reference`` per row (readable, exact semantics, O(n²) memory);
- ``"auto"``: ``"kernels"`` on CUDA when mmi-kernels provides the wrapper, ``"reference"`` otherwise.

Tensors are token-major: a row's ``q [n, Hq, D]``, ``k, v [n, Hkv, D]``; outputs ``[n, Hq, D]`` in q's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from mmi_core import HeadConfigs, ModalityLayout, mmi_attention_reference

__all__ = ["Backend", "SparsePrefill", "kernels_available", "resolve_backend"]

Backend = Literal["auto", "kernels", "reference"]


def kernels_available() -> bool:
    """True when mmi-kernels exports ``SparsePrefillWrapper``."""
    try:
        import mmi_kernels
    except ImportError:
        return False
    return hasattr(mmi_kernels, "SparsePrefillWrapper")


def resolve_backend(backend: Backend, device: torch.device) -> Literal["kernels", "reference"]:
    """The concrete backend for tensors on ``device``. Raises ValueError for an unknown name or for ``"kernels"``
    without mmi-kernels' wrapper."""
    if backend == "reference":
        return "reference"
    if backend == "kernels":
        if not kernels_available():
            raise ValueError("backend 'kernels' requested but mmi_kernels.SparsePrefillWrapper is not available")
        return "kernels"
    if backend == "auto":
        return "kernels" if device.type == "cuda" and kernels_available() else "reference"
    raise ValueError(f"unknown sparse backend {backend!r}; expected 'auto', 'kernels' or 'reference'")


class SparsePrefill:
    """Sparse attention of the sparse rows of one forward batch: planned once (``layouts`` of those rows, whole
    rows are queries), run once per layer."""

    def __init__(
        self,
        head_configs: HeadConfigs,
        layouts: Sequence[ModalityLayout],
        device: torch.device,
        backend: Backend = "auto",
    ) -> None:
        self.head_configs = head_configs
        self.layouts = list(layouts)
        self.device = device
        self.backend = resolve_backend(backend, device)
        self._wrapper: Any = None
        if self.backend == "kernels":
            from mmi_kernels import SparsePrefillWrapper

            # min_tokens / text-only routing is decided by the integration before rows get here
            self._wrapper = SparsePrefillWrapper(head_configs, min_tokens=0, sparse_text_only=True)
            self._wrapper.plan(self.layouts, device=device)

    def run(
        self,
        q: Sequence[torch.Tensor],
        k: Sequence[torch.Tensor],
        v: Sequence[torch.Tensor],
        layer: int,
        *,
        scale: float | None = None,
    ) -> list[torch.Tensor]:
        """One layer for every planned row: ``q[r] [n_r, Hq, D]``, ``k[r], v[r] [n_r, Hkv, D]`` -> ``[n_r, Hq, D]``
        per row. Raises ValueError when a row's length differs from its layout."""
        for r, (qr, lay) in enumerate(zip(q, self.layouts, strict=True)):
            if qr.shape[0] != lay.num_tokens:
                raise ValueError(f"sparse row {r}: {qr.shape[0]} tokens but its layout has {lay.num_tokens}")
        if self._wrapper is None:
            return [
                mmi_attention_reference(qr, kr, vr, lay, self.head_configs, layer, scale=scale)
                for qr, kr, vr, lay in zip(q, k, v, self.layouts, strict=True)
            ]
        out = self._wrapper.run(torch.cat(list(q)), torch.cat(list(k)), torch.cat(list(v)), layer, scale=scale)
        return list(out.split([lay.num_tokens for lay in self.layouts]))
