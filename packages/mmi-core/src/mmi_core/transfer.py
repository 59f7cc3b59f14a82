"""Host-built values on the compute device without stopping the host.

A blocking host-to-device copy (``torch.tensor(values, device="cuda")``, ``cpu_tensor.to("cuda")``) synchronises the
stream: the host waits for every queued kernel, exactly as a read would, and per-layer planning can then no longer
run ahead of the previous layer's attention kernel. Planning code puts its small host-built tensors (head lists,
stride candidates, row counts) on the device through `to_device`: staged in pinned memory and copied
asynchronously (PyTorch keeps the pinned block alive until the copy has run).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["to_device"]


def to_device(
    values: torch.Tensor | Sequence | int | float, device: torch.device | str, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``values`` (a host tensor, a nested sequence or a number) as a tensor on ``device``, copied without a stream
    synchronisation when it goes from the host to a GPU. A tensor already on ``device`` is returned as it is (cast to
    ``dtype`` if given)."""
    dev = torch.device(device)
    t = torch.as_tensor(values, dtype=dtype)
    if t.device.type == "cpu" and dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)
