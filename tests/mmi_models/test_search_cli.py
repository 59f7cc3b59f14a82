"""`mmi-search` end to end on a tiny Qwen2.5-VL checkpoint with a real mp4, resume after a kill, and bad inputs."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

if not torch.cuda.is_available():  # KernelTimer tests: the Triton kernel in the interpreter (set before Triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mmi_core import (
    BlockSparse,
    Grid,
    HeadConfigs,
    ReferenceEvaluator,
    VerticalSlash,
    sample_rows,
    synthetic_workload,
)
from mmi_models import apply_mminference, load_head_configs, write_moving_shapes_mp4
from mmi_models.adapter import adapter_for
from mmi_models.search_cli import KernelTimer, main

pytestmark = pytest.mark.e2e

# a small space (the paper space on 138 tokens takes ~5 s per layer on 2 CPU cores; see docs/search/README.md)
CANDIDATES = [
    {"kind": "grid", "stride": "frame", "block": 16, "sink": 4, "last_q": 16},
    {"kind": "vertical_slash", "vertical": 8, "slash": 4, "sink": 4, "local": 8, "last_q": 16, "block": 16},
    {"kind": "a_shape", "sink": 16, "local": 32, "block": 16},
    {"kind": "block_sparse", "top_k": 2, "block": 16},
]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_moving_shapes_mp4(tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=16, fps=4)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    p = tmp_path_factory.mktemp("c") / "candidates.json"
    p.write_text(json.dumps(CANDIDATES))
    return p


def _args(tiny_qwen, out, video, candidates, *extra):
    return [
        str(tiny_qwen.path),
        "--out",
        str(out),
        "--video",
        str(video),
        "--prompt",
        "describe the video",
        "--candidates",
        str(candidates),
        "--rows",
        "48",
        "--no-progress",
        *extra,
    ]


def test_cli_writes_loadable_configs_and_report_and_resumes(tiny_qwen, video, candidates, tmp_path, capsys):
    out = tmp_path / "out"
    main(_args(tiny_qwen, out, video, candidates))
    assert "head_configs.json" in capsys.readouterr().out
    geometry = adapter_for(tiny_qwen.model).geometry()
    hc = HeadConfigs.load(out / "head_configs.json")
    hc.validate_for(geometry.num_layers, geometry.num_q_heads, geometry.num_kv_heads)
    load_head_configs(out / "head_configs.json", geometry)
    meta = hc.metadata
    assert meta["search"]["latency_source"]["name"] == "cost_model"
    assert "video clip.mp4" in meta["calibration"] and "video" in meta["calibration"].split(";")[1]
    assert meta["model"].startswith("Qwen2_5_VL") and meta["date"]
    assert len(meta["per_head"]) == geometry.num_layers
    assert all(set(h) >= {"pattern", "output_error", "recall", "latency_ms"} for lay in meta["per_head"] for h in lay)
    assert set(meta["per_head"][0][0]["error_by_modality"]) == {"text", "video"}  # errors per query modality
    for name in ("patterns.png", "attention_maps.png", "search.csv"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "search.csv").open()))
    assert len(rows) == geometry.num_layers * geometry.num_q_heads
    assert all(float(r["output_error"]) >= 0.0 and float(r["latency_ms"]) > 0 for r in rows)

    # the configs drive the transformers integration
    handle = apply_mminference(tiny_qwen.model, out / "head_configs.json", min_tokens=16)
    handle.remove()

    # killed after layer 0: layer 1 is searched again, layer 0 comes from its checkpoint
    first = (out / "layers" / "layer_000.json").read_text()
    (out / "layers" / "layer_001.json").unlink()
    (out / "head_configs.json").unlink()
    main(_args(tiny_qwen, out, video, candidates))
    assert (out / "layers" / "layer_000.json").read_text() == first
    assert (out / "layers" / "layer_001.json").is_file()
    assert HeadConfigs.load(out / "head_configs.json").layers == hc.layers
    # a resumed run with other settings is refused
    with pytest.raises(SystemExit, match="other settings"):
        main(_args(tiny_qwen, out, video, candidates, "--target", "0.5"))


def test_cli_bad_inputs_fail_clearly(tiny_qwen, video, candidates, tmp_path):
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        main([str(tmp_path / "missing"), "--out", str(tmp_path / "o1"), "--prompt", "hi"])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not an mp4 file" * 100)
    with pytest.raises(SystemExit, match="cannot decode video"):
        main(_args(tiny_qwen, tmp_path / "o2", bad, candidates))
    with pytest.raises(SystemExit, match="does not exist"):
        main(_args(tiny_qwen, tmp_path / "o3", tmp_path / "nope.mp4", candidates))
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(SystemExit, match="empty search space"):
        main(_args(tiny_qwen, tmp_path / "o4", video, empty))
    with pytest.raises(SystemExit, match="boundaries"):
        main(_args(tiny_qwen, tmp_path / "o6", video, candidates, "--boundaries", "none,diagonal"))
    with pytest.raises(SystemExit, match="calibration input"):
        main([str(tiny_qwen.path), "--out", str(tmp_path / "o5")])
    with pytest.raises(SystemExit, match="FRAMESxROWSxCOLS"):
        main([str(tiny_qwen.path), "--out", str(tmp_path / "o7"), "--synthetic-video", "4x8"])


@pytest.mark.slow
def test_cli_synthetic_paper_space_recovers_planted_heads(tiny_qwen, tmp_path):
    """The full paper space (29 candidates) on a synthetic workload with the tiny model's geometry (dev seed 0,
    planted kinds grid / vertical_slash / a_shape / grid): every planted kind is chosen at matched latency."""
    out = tmp_path / "syn"
    main(
        [
            str(tiny_qwen.path),
            "--out",
            str(out),
            "--synthetic",
            "2048",
            "--block",
            "32",
            "--kernel-only",
            "--rows",
            "96",
            "--target",
            "0.35",
            "--layers",
            "1",
            "--no-progress",
        ]
    )
    hc = HeadConfigs.load(out / "head_configs.json")
    planted = hc.metadata["synthetic_planted_head_kinds"]["0"]
    assert planted == ["grid", "vertical_slash", "a_shape", "grid"]
    assert [s.pattern.kind for s in hc.layers[0].heads] == planted
    assert all(h["in_band"] for h in hc.metadata["per_head"][0])
    assert hc.metadata["search"]["latency_source"]["name"] == "cost_model_kernel_only"
    # unsearched layers stay dense and the file says so
    assert all(s.is_dense for s in hc.layers[1].heads) and hc.metadata["unsearched_layers_dense"] == [1]


# -- the real-kernel latency source (KernelTimer) on the CPU: the Triton kernel under TRITON_INTERPRET=1 ------------
needs_interpreter = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="KernelTimer on the CPU needs TRITON_INTERPRET=1 before Triton is imported",
)
KT_KINDS = ("grid", "vertical_slash")


@needs_interpreter
@pytest.mark.slow
def test_kernel_timer_evaluates_exactly_like_the_reference():
    """Outputs, recall and keep masks from the index the kernel executes equal mmi-core's reference evaluation of
    the same configuration (GPU estimation = mmi-core estimation in fp32); latencies are measured, one per head."""
    w = synthetic_workload(5, num_tokens=192, num_q_heads=2, num_kv_heads=1, head_kinds=KT_KINDS)
    rows = sample_rows(w.layout.num_tokens, 24, 0)
    kt, ref = KernelTimer("cpu", reps=1), ReferenceEvaluator()
    cands = [
        (Grid(stride="frame", block=16, last_q=16, sink=4), "group"),
        (VerticalSlash(vertical=8, slash=4, sink=4, local=8, last_q=16, block=16), "head"),
        (BlockSparse(top_k=2, block=16), "group"),
    ]
    for cand, gqa in cands:
        hc = HeadConfigs.uniform(1, 2, 1, cand, gqa=gqa)
        a = kt.evaluate(w.q, w.k, w.v, w.layout, hc, rows)
        b = ref.evaluate(w.q, w.k, w.v, w.layout, hc, rows)
        torch.testing.assert_close(a.out.cpu(), b.out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.recall, b.recall, atol=1e-6, rtol=1e-6)
        assert len(a.latency_ms) == 2 and all(x > 0 for x in a.latency_ms)
        for x, y in zip(
            kt.row_keep_masks(w.q, w.k, w.layout, hc, rows),
            ref.row_keep_masks(w.q, w.k, w.layout, hc, rows),
            strict=True,
        ):
            assert torch.equal(x.cpu(), y), type(cand).__name__
    assert kt.describe()["name"] == "kernels_timed"


def test_kernel_timer_refuses_the_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        KernelTimer("cpu")


@needs_interpreter
@pytest.mark.slow
def test_cli_with_the_real_kernel_latency_source(tiny_qwen, video, candidates, tmp_path):
    """``--latency kernels --device cpu``: every candidate runs through mmi-kernels' wrapper (the Triton kernel in the
    interpreter), the configs load, the metadata names the kernel source, the report is written."""
    out = tmp_path / "kern"
    main(
        _args(
            tiny_qwen, out, video, candidates, "--latency", "kernels", "--device", "cpu", "--reps", "1", "--layers", "1"
        )
    )
    hc = HeadConfigs.load(out / "head_configs.json")
    src = hc.metadata["search"]["latency_source"]
    assert src["name"] == "kernels_timed" and src["reps"] == 1
    assert all(h["latency_ms"] > 0 for h in hc.metadata["per_head"][0])
    assert all(s.is_dense for s in hc.layers[1].heads)
    for name in ("patterns.png", "attention_maps.png", "search.csv"):
        assert (out / name).stat().st_size > 0, name
