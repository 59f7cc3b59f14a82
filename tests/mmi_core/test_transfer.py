"""`mmi_core.to_device`: host values on a device; on a GPU without a stream synchronisation."""

from __future__ import annotations

import pytest
import torch

from mmi_core import to_device


def test_values_become_tensors_on_the_device() -> None:
    t = to_device([[1, 2], [3, 4]], "cpu", torch.int32)
    assert t.dtype == torch.int32 and t.tolist() == [[1, 2], [3, 4]]
    assert to_device(7, "cpu").dtype == torch.int64
    x = torch.arange(3)
    assert to_device(x, "cpu") is x  # already there: no copy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_host_to_gpu_copy_does_not_synchronise() -> None:
    torch.cuda.set_sync_debug_mode("error")
    try:
        t = to_device(list(range(1000)), "cuda", torch.int32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert t.device.type == "cuda" and t.cpu().tolist() == list(range(1000))


def test_short_int_lists_are_cached_per_device_and_dtype() -> None:
    """A repeated short int list is served from the cache (one shared tensor); another list, dtype or device, a
    float, a long list and the CPU are not. The "meta" device stands in for a GPU (no data, same code path)."""
    from mmi_core import transfer

    a = to_device([3, 1, 2], "meta")
    assert to_device([3, 1, 2], "meta") is a and to_device((3, 1, 2), "meta") is a  # a tuple is the same list
    assert a.shape == (3,) and a.dtype == torch.int64
    assert to_device([3, 1, 2], "meta", torch.int32) is not a
    assert to_device([3, 1, 4], "meta") is not a
    assert to_device([3.0, 1, 2], "meta") is not to_device([3.0, 1, 2], "meta")  # floats: not cached
    long = list(range(transfer.CACHE_MAX_LEN + 1))
    assert to_device(long, "meta") is not to_device(long, "meta")
    assert to_device([3, 1, 2], "cpu") is not to_device([3, 1, 2], "cpu")


def test_cache_drops_the_least_recently_used(monkeypatch) -> None:
    from mmi_core import transfer

    monkeypatch.setattr(transfer, "CACHE_ENTRIES", 2)
    monkeypatch.setattr(transfer, "_cache", type(transfer._cache)())
    a, b = to_device([10], "meta"), to_device([11], "meta")
    assert to_device([10], "meta") is a  # [10] now most recent
    to_device([12], "meta")  # evicts [11]
    assert to_device([10], "meta") is a and to_device([11], "meta") is not b
