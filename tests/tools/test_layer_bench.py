"""tools/layer_bench.py without a GPU: the ``--workload mixed`` path completes at a tiny size (kernels under
TRITON_INTERPRET=1) and writes the rows the GPU run will fill: time split, density, recall, output error per config
(no boundary, Q-boundary, 2D-boundary) and the boundary cost against the no-boundary row.

The Triton interpreter costs ~40 ms per 16x16 tile on the shared CPU, so the dry run here uses ~100 tokens (images
shrunk to 2x2 patches, 16-token frames) and two query heads; the bench's own code path is unchanged."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined (CPU CI)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lb():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import layer_bench

        saved = layer_bench.HQ, layer_bench.HKV
        yield layer_bench
        layer_bench.HQ, layer_bench.HKV = saved
    finally:
        sys.path.remove(str(ROOT / "tools"))


def test_mixed_dry_run_writes_rows_for_every_config(lb, tmp_path: Path, monkeypatch) -> None:
    real = lb.real_frame_spec

    def tiny_spec(tpf: int):
        spec = real(tpf)
        mixed = {**spec.mixed, "image_rows": [2, 2], "image_cols": [2, 2], "visual_segments": [2, 3]}
        return spec.model_copy(update={"mixed": mixed})

    monkeypatch.setattr(lb, "real_frame_spec", tiny_spec)
    lb.HQ, lb.HKV = 2, 1
    args = SimpleNamespace(device="cpu", tpf=16, block=16, reps=1, rows=8, no_dense=True, profile=False)
    args.mixed_configs = "none,q,2d"
    rec: dict = {"rows": []}
    out = tmp_path / "layer_bench_mixed.json"
    lb.bench_mixed_length(96, args, rec, out)
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"none", "q", "2d"}
    for r in rows.values():
        assert r["workload"] == "mixed" and 0.15 <= r["text_share"] <= 0.35 and r["segments"].endswith("T")
        for key in ("estimate_ms", "index_ms", "kernel_ms", "layer_ms", "layer_pipelined_ms"):
            assert r[key] > 0
        assert 0 < r["density"] <= 1 and 0 < r["recall_mean"] <= 1 + 1e-6
        assert 0 <= r["output_error_mean"] < 0.05  # the kernel's output against fp32 dense on sampled rows
    for c in ("q", "2d"):
        assert rows[c]["boundary_cost"] == pytest.approx(rows[c]["layer_ms"] / rows["none"]["layer_ms"])
        assert rows[c]["density_none"] == rows["none"]["density"]
        ratio = rows[c]["layer_pipelined_ms"] / rows["none"]["layer_pipelined_ms"]
        assert rows[c]["boundary_cost_pipelined"] == pytest.approx(ratio)


def test_mixed_head_configs(lb) -> None:
    lb.HQ, lb.HKV = 6, 2
    kinds = ("grid", "vertical_slash", "a_shape") * 2
    q = lb.mixed_head_configs("q", 64, kinds).layers[0].heads
    assert all(s.boundary == "q" and s.by_modality["video"].kind == "grid" for s in q)
    d2 = lb.mixed_head_configs("2d", 64, kinds).layers[0].heads
    assert all(s.boundary == "2d" and s.by_pair["video->text"].kind == "block_sparse" for s in d2)
    none = lb.mixed_head_configs("none", 64, kinds).layers[0].heads
    assert [s.boundary for s in none] == ["none"] * 6
    assert [s.pattern.kind for s in none] == ["grid", "vertical_slash", "vertical_slash"] * 2
    with pytest.raises(ValueError, match="unknown mixed config"):
        lb.mixed_head_configs("k", 64, kinds)
