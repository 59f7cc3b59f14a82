"""The attention math the backend runs itself, one request at a time or one batch at a time.

Tensors are token-major like SGLang's: ``q [n_q, Hq, D]``, ``k, v [n_k, Hkv, D]`` (this rank's heads); queries are the
last ``n_q`` of the ``n_k`` keys (``n_k - n_q`` = the cached prefix, read back from the KV pool).

- `dense_request`: causal attention of one request (mixed batches: its text-only/short requests).
- `reference_sparse_request`: MMInference on CPU through ``mmi_core.mmi_attention_reference`` (readable, exact
  semantics, O(n_q x n_k) memory).
- `KernelSparsePrefill`: the GPU call site of mmi-kernels' batched wrapper (``SparsePrefillWrapper.plan`` once per
  batch, ``.run`` per layer). Availability is detected at run time; this is the only place that calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmi_core import HeadConfigs, ModalityLayout

__all__ = [
    "KernelSparsePrefill",
    "dense_request",
    "kernels_available",
    "reference_available",
    "reference_sparse_request",
]


def dense_request(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention with the queries at the end of the keys (lower-right causal), SDPA in q's dtype.

    q [n_q, Hq, D], k/v [n_k, Hkv, D] -> [n_q, Hq, D]. The same call the kernels' wrapper makes for dense requests."""
    from mmi_kernels.wrapper import dense_causal_attention  # lazy: importing mmi_sglang must not import triton

    return dense_causal_attention(q, k, v, scale)


def reference_available() -> bool:
    """True when this mmi-core has ``mmi_attention_reference`` (one layer of MMInference, estimation included)."""
    import mmi_core

    return hasattr(mmi_core, "mmi_attention_reference")


def reference_sparse_request(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: ModalityLayout,
    head_configs: HeadConfigs,
    layer: int,
    scale: float,
) -> torch.Tensor:
    """MMInference for one request and one layer on the mmi-core reference: layout over the whole sequence
    (``layout.num_tokens == n_k``), queries = the chunk. q [n_q, Hq, D], k/v [n_k, Hkv, D] -> [n_q, Hq, D] in q's
    dtype. Raises what ``mmi_core.mmi_attention_reference`` raises (shapes, layout size, config geometry)."""
    from mmi_core import mmi_attention_reference

    return mmi_attention_reference(q, k, v, layout, head_configs, layer, scale=scale)


def kernels_available() -> bool:
    """True when mmi-kernels exports its batched ``SparsePrefillWrapper`` (Triton on CUDA; on a CPU it runs under
    ``TRITON_INTERPRET=1`` or executes its index in PyTorch, small inputs only)."""
    try:
        import mmi_kernels
    except ImportError:
        return False
    return hasattr(mmi_kernels, "SparsePrefillWrapper")


class KernelSparsePrefill:
    """mmi-kernels' batched sparse prefill for the sparse requests of one extend batch (the only call site).

    ``plan`` once per batch: layouts of the sparse requests (whole sequences), their query lengths and page-table rows
    (``req_to_token`` rows, int32 ``[n_sparse, >= max n_k]``: the KV-pool slot of each key position). ``run`` per
    layer: the q rows of those requests concatenated in batch order (``[sum n_q, Hq, D]``) and the layer's K/V pool
    buffers ``[slots, Hkv, D]`` (the chunk's K/V already written); returns ``[sum n_q, Hq, D]``. Routing is decided
    by `mmi_sglang.routing`, so the wrapper's own length threshold is off (``min_tokens=0``).
    """

    def __init__(self, head_configs: HeadConfigs, device: torch.device | str) -> None:
        from mmi_kernels import SparsePrefillWrapper

        self.wrapper: Any = SparsePrefillWrapper(head_configs, device=torch.device(device), min_tokens=0)

    def plan(self, layouts: Sequence[ModalityLayout], q_lens: Sequence[int], page_table: torch.Tensor) -> None:
        self.wrapper.plan(list(layouts), q_lens=list(q_lens), page_table=page_table)

    def run(
        self, q: torch.Tensor, layer: int, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float
    ) -> torch.Tensor:
        return self.wrapper.run(q, None, None, layer, k_cache=k_cache, v_cache=v_cache, scale=scale)
