"""Host-built values on the compute device without stopping the host.

A blocking host-to-device copy (``torch.tensor(values, device="cuda")``, ``cpu_tensor.to("cuda")``) synchronises the
stream: the host waits for every queued kernel, exactly as a read would, and per-layer planning can then no longer
run ahead of the previous layer's attention kernel. Planning code puts its small host-built tensors (head lists,
stride candidates, row counts) on the device through `to_device`: staged in pinned memory and copied
asynchronously (PyTorch keeps the pinned block alive until the copy has run).

Most of those lists depend on the head configs and the layout only, so every layer of every request of one shape
asks for the same few dozen. Short flat integer lists are therefore kept on the device (an LRU of
`CACHE_ENTRIES`): a repeated list costs a dictionary lookup instead of ~5 host ops and a pinned staging buffer
(planning at 131K tokens is host-bound, ~40 us per op on an H100 machine). The cached tensor is shared: callers
must not write into what `to_device` returns.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

__all__ = ["to_device"]

CACHE_ENTRIES = 1024
"""Device copies of short integer lists kept (least recently used dropped first)."""

CACHE_MAX_LEN = 1024
"""Longest list cached; longer ones (token lists) are copied every time (their hashing would cost as much)."""

_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def to_device(
    values: torch.Tensor | Sequence | int | float, device: torch.device | str, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``values`` (a host tensor, a nested sequence or a number) as a tensor on ``device``, copied without a stream
    synchronisation when it goes from the host to a GPU. A tensor already on ``device`` is returned as it is (cast to
    ``dtype`` if given). A flat list or tuple of at most `CACHE_MAX_LEN` Python ints bound for a device other than
    the CPU is served from a cache: the result may be shared, never write into it."""
    dev = torch.device(device)
    key = None
    if (
        dev.type != "cpu"
        and isinstance(values, list | tuple)
        and len(values) <= CACHE_MAX_LEN
        and all(type(v) is int for v in values)
    ):
        key = (tuple(values), dev, dtype)
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    t = torch.as_tensor(values, dtype=dtype)
    t = t.pin_memory().to(dev, non_blocking=True) if t.device.type == "cpu" and dev.type == "cuda" else t.to(dev)
    if key is not None:
        _cache[key] = t
        if len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return t
