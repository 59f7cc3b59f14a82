"""Where the Triton kernels run: one rule for every module of the package.

On CUDA tensors the compiled kernels run. On a CPU they run under ``TRITON_INTERPRET=1`` (the CI's correctness
path: small shapes, same code as on the GPU); without it each module falls back to its PyTorch reference, so the
package stays usable on a CPU without Triton's interpreter (slow, but right)."""

from __future__ import annotations

import os

import torch


def triton_runs(t: torch.Tensor) -> bool:
    """Whether the Triton kernels serve tensors on ``t``'s device: CUDA, or a CPU under ``TRITON_INTERPRET=1``."""
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
