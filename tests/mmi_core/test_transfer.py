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
