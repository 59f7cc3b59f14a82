"""mmi-kernels test setup: without a GPU the Triton kernels run under the interpreter (TRITON_INTERPRET=1).

The variable must be set before `triton.jit` wraps the kernels, i.e. before mmi_kernels is first imported.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
