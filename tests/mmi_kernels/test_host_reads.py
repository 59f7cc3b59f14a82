"""Host reads (device -> host synchronisations on a GPU) of the per-layer planning, counted on the CPU: the index
build reads once per chunk of slots and the estimation of non-boundary heads not at all. A read added to either
(an ``.item()``, ``int(t)``, ``.tolist()``, ``nonzero``, a data-dependent output size) keeps the host from running
ahead of the GPU and fails here. The PyTorch paths run (no interpreter): the orchestration is the same code."""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mmi_kernels.index as index_mod
from mmi_core import BlockSparse, Grid, HeadConfigs, HeadSpec, LayerConfig, VerticalSlash
from mmi_core.synthetic import default_spec, synthetic_workload
from mmi_kernels import LayoutTensors, estimate_layer_keeps, index_from_keeps, layer_slots

# aten ops whose result size or value the host must read
READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::_unique2", "aten::unique_dim",
         "aten::unique_consecutive", "aten::masked_select"}  # fmt: skip


class _Reads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        sized = name == "aten::repeat_interleave" and not (kwargs or {}).get("output_size")
        if name in READS or sized:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_reads():
    """Host reads, and host-built tensors created straight on a device (``torch.tensor(values, device=...)``: on a
    GPU a blocking copy, which synchronises the stream like a read; planning uses `mmi_core.to_device`)."""
    mode = _Reads()
    tolist, tensor, as_tensor = torch.Tensor.tolist, torch.tensor, torch.as_tensor

    def counted(self, *a, **kw):  # .tolist() does not dispatch
        mode.reads["tolist"] += 1
        return tolist(self, *a, **kw)

    def placed(make):
        def make_counted(*a, **kw):
            if kw.get("device") is not None:
                mode.reads["blocking copy"] += 1
            return make(*a, **kw)

        return make_counted

    torch.Tensor.tolist = counted  # type: ignore[method-assign]
    torch.tensor, torch.as_tensor = placed(tensor), placed(as_tensor)
    try:
        with mode:
            yield mode.reads
    finally:
        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
        torch.tensor, torch.as_tensor = tensor, as_tensor


HQ, HKV, BLOCK = 4, 2, 64


def _layer(boundary: bool | str):
    w = synthetic_workload(7, workload="mixed", num_tokens=3000, num_q_heads=HQ, num_kv_heads=HKV, head_dim=32,
                           head_kinds=("grid", "vertical_slash", "grid", "a_shape"), spec=default_spec())  # fmt: skip
    grid = Grid(stride="frame", block=BLOCK, lines=1)
    vs = VerticalSlash(vertical=64, slash=64, block=BLOCK)
    if boundary == "q_same":  # each head's own pattern for every query modality
        heads = [HeadSpec(boundary="q", pattern=p) for p in (grid, vs, grid, vs)]
    elif boundary == "2d":  # video rows: Grid on video keys, block-sparse on the others (rows scattered)
        bs = BlockSparse(top_k=4, block=BLOCK)
        pairs = {"video->video": grid, "video->text": bs, "video->image": bs}
        heads = [HeadSpec(boundary="2d", pattern=vs, by_pair=pairs)] * HQ
    elif boundary:
        heads = [HeadSpec(boundary="q", pattern=vs, by_modality={"video": grid})] * HQ
    else:
        heads = [HeadSpec(pattern=grid), HeadSpec(pattern=vs), HeadSpec(pattern=grid), HeadSpec(pattern=vs)]
    hc = HeadConfigs(
        num_layers=1, num_q_heads=HQ, num_kv_heads=HKV, layers=[LayerConfig(heads=heads, gqa=["head"] * HKV)]
    )
    return w.q.contiguous(), w.k.contiguous(), LayoutTensors(w.layout, "cpu"), hc


@pytest.fixture(autouse=True)
def _torch_paths(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def test_estimation_of_non_boundary_heads_reads_nothing():
    q, k, lt, hc = _layer(boundary=False)
    # the first call fills the request's layout caches (CPU tensors from the layout: reads, but no GPU sync there);
    # every later layer of the request finds them
    estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(q.shape[-1]))
    with count_reads() as reads:
        keeps = estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(q.shape[-1]))
    assert len(keeps) == len(layer_slots(hc, 0))
    assert not reads, dict(reads)


@pytest.mark.parametrize("config", ["q", "q_same"])
def test_estimation_of_q_boundary_heads_reads_nothing(config):
    """Q-boundary parts: every sub's row order agrees with its part's, so the incidence widths are layout facts
    (`part_row_width`, cached with the layout) and the key side has width 1: no read, as for heads without
    boundaries."""
    q, k, lt, hc = _layer(boundary=config)
    estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(q.shape[-1]))
    with count_reads() as reads:
        keeps = estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(q.shape[-1]))
    assert len(keeps) == 3 * HQ
    assert not reads, dict(reads)


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["one_chunk", "slot_per_chunk"])
def test_index_build_reads_once_per_chunk(chunk_bytes, monkeypatch):
    q, k, lt, hc = _layer(boundary=True)
    keeps = estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(q.shape[-1]))
    slots = layer_slots(hc, 0)
    if chunk_bytes is not None:
        monkeypatch.setattr(index_mod, "INDEX_CHUNK_BYTES", chunk_bytes)
    chunks = len(index_mod._slot_chunks([keeps], len(slots)))
    assert chunks == (1 if chunk_bytes is None else len(slots))
    with count_reads() as reads:
        index = index_from_keeps([keeps], block=BLOCK, num_q_heads=HQ, num_kv_heads=HKV, slot_heads=slots)
    assert index.num_slots == len(slots) == 3 * HQ
    assert dict(reads) == {"tolist": chunks}
    with count_reads() as reads:  # the kernel launch's grid: a plan-time fact, not a read
        assert index.max_heads_per_slot == 1
    assert not reads, dict(reads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("config", [False, "q", "q_same", "2d"], ids=["none", "q", "q_same", "2d"])
def test_estimation_never_synchronises_the_stream_on_a_gpu(config, monkeypatch):
    """On a GPU nothing in the estimation of these layers synchronises (reads and blocking copies alike): PyTorch's
    sync debug mode raises on the first one. 2D heads too: the Triton rounding gives scattered rows one slot each
    (no width read; added after the last GPU run of 2026-12-07, so not yet run on a GPU)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, lt, hc = _layer(boundary=config)
    q, k, lt = q.cuda(), k.cuda(), LayoutTensors(lt.layout, "cuda")
    estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(q.shape[-1]))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        estimate_layer_keeps(q, k, lt, hc, 0, scale=1 / math.sqrt(q.shape[-1]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
