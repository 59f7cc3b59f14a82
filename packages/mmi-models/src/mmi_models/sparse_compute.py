"""The one place that picks how a sparse MMInference layer is computed for the transformers integration.

CUDA tensors and ``mmi_kernels.sparse_prefill`` present -> the Triton kernels; otherwise (CPU, no kernels) the
readable reference ``mmi_core.mmi_attention_reference`` (exact semantics, O(n^2) memory: small inputs only).
Tensors are token-major: ``q [n, Hq, D]``, ``k, v [n, Hkv, D]``; returns ``[n, Hq, D]`` in q's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmi_core import HeadConfigs, ModalityLayout, mmi_attention_reference

__all__ = ["sparse_attention", "sparse_backend"]


def _kernel_fn(q: torch.Tensor) -> Callable[..., torch.Tensor] | None:
    if not q.is_cuda:
        return None
    try:
        import mmi_kernels
    except ImportError:
        return None
    fn = getattr(mmi_kernels, "sparse_prefill", None)
    return fn if callable(fn) else None


def sparse_backend(q: torch.Tensor) -> str:
    """``"kernels"`` or ``"reference"``: what `sparse_attention` runs for tensors like ``q``."""
    return "reference" if _kernel_fn(q) is None else "kernels"


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: ModalityLayout,
    head_configs: HeadConfigs,
    layer: int,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """One layer of MMInference for one request (queries = all ``n`` tokens of ``layout``). Raises what the
    backend raises (ValueError on shapes, layout length, config geometry)."""
    fn = _kernel_fn(q)
    if fn is None:
        return mmi_attention_reference(q, k, v, layout, head_configs, layer, scale=scale)
    return fn(q, k, v, layout, head_configs, layer, scale=scale)
