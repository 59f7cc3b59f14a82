"""tools/search_gpu.py (issue #9's GPU evidence command) as a CPU dry run: the --tiny geometry through the same code
path (random-init Qwen2.5-VL, synthetic video without PyAV, capture, mmi-search, report), cost-model latency and a
small candidate list so it stays a few seconds. The GPU run itself needs CUDA (not in CI)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from mmi_core import HeadConfigs

TOOLS = Path(__file__).resolve().parents[2] / "tools"
CANDIDATES = [
    {"kind": "grid", "stride": "frame", "block": 16, "sink": 4, "last_q": 16},
    {"kind": "vertical_slash", "vertical": 8, "slash": 4, "sink": 4, "local": 8, "last_q": 16, "block": 16},
    {"kind": "a_shape", "sink": 16, "local": 32, "block": 16},
]


@pytest.fixture(scope="module")
def sg():
    sys.path.insert(0, str(TOOLS))
    try:
        import search_gpu

        yield search_gpu
    finally:
        sys.path.remove(str(TOOLS))


def test_tiny_dry_run_writes_evidence_configs_and_report(sg, tmp_path: Path) -> None:
    cands = tmp_path / "c.json"
    cands.write_text(json.dumps(CANDIDATES))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--tiny", "--layers", "2", "--latency", "cost_model", "--no-progress"]
    rec = sg.main([*argv, "--candidates", str(cands)])
    on_disk = json.loads((out / "search_gpu.json").read_text())
    assert on_disk == json.loads(json.dumps(rec)) and rec["complete"]
    assert rec["prompt_tokens"] == 280 and rec["video"] == {"frames": 4, "tokens_per_frame": 32, "video_tokens": 128}
    assert [r["layer"] for r in rec["layers"]] == [0, 1] and all(r["search_seconds"] > 0 for r in rec["layers"])
    per = sum(r["search_seconds"] for r in rec["layers"]) / 2
    assert rec["extrapolated_28_layers_search_seconds"] == pytest.approx(28 * per, abs=0.2)
    assert rec["capture_seconds"] > 0 and rec["device"] == "cpu (dry run)"
    hc = HeadConfigs.load(out / "head_configs.json")
    assert hc.num_layers == 2 and hc.num_q_heads == 4 and hc.num_kv_heads == 2
    assert hc.metadata["search"]["latency_source"]["name"] == "cost_model"
    assert "synthetic video 4x4x8" in hc.metadata["calibration"]
    assert rec["layers"][0]["chosen"] == [h["pattern"] for h in hc.metadata["per_head"][0]] and all(
        len(r["chosen"]) == 4 for r in rec["layers"]
    )
    for name in ("patterns.png", "attention_maps.png", "search.csv"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(csv.DictReader((out / "search.csv").open()))) == 2 * 4

    # a rerun resumes: capture and both layer checkpoints are reused, nothing is searched again
    before = {p.name: p.read_text() for p in (out / "layers").glob("layer_*.json")}
    again = sg.main([*argv, "--candidates", str(cands)])
    assert {p.name: p.read_text() for p in (out / "layers").glob("layer_*.json")} == before
    assert again["layers"] == rec["layers"]


@pytest.mark.gpu
def test_tiny_run_with_the_real_kernels_on_cuda(sg, tmp_path: Path) -> None:
    """On a GPU machine (make test-gpu): the --tiny geometry through the CUDA kernel path, every candidate timed."""
    rec = sg.main(["--out", str(tmp_path / "gpu"), "--tiny", "--latency", "kernels", "--reps", "2", "--no-progress"])
    assert rec["complete"] and rec["latency_source"] == "kernels" and rec["device"] != "cpu (dry run)"
    hc = HeadConfigs.load(tmp_path / "gpu" / "head_configs.json")
    assert hc.metadata["search"]["latency_source"]["name"] == "kernels_timed"
    assert all(not r["skipped_candidates"] for r in rec["layers"]), rec["layers"]
