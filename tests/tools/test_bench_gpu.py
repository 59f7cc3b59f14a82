"""tools/bench_gpu.py without a GPU: the committed H200 plots are drawn from the committed JSON, a rerun skips the
rows already in its JSON (resumable), and speedups are dense time / sparse time of the same length. The GPU run
itself is not tested here (no CUDA in CI); its CPU dry run is described in BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def bg():
    sys.path.insert(0, str(TOOLS))
    try:
        import bench_gpu

        yield bench_gpu
    finally:
        sys.path.remove(str(TOOLS))


def test_committed_plots_are_drawn_from_the_committed_json(bg, tmp_path: Path) -> None:
    paths = bg.committed_plots(tmp_path)
    names = {p.name for p in paths}
    assert {"layer_speedup_vs_length_h200.png", "kernel_tflops_h200.png", "committed_h200_2026-11-22.json"} <= names
    digest = json.loads((tmp_path / "committed_h200_2026-11-22.json").read_text())
    assert digest["layer"]["context"]["gpu"] == "NVIDIA H200"
    top = max(digest["layer"]["rows"], key=lambda r: r["n_tokens"])
    assert top["n_tokens"] > 1_000_000 and top["speedup_vs_sdpa_flash"] == pytest.approx(
        top["sdpa_flash_ms"] / top["layer_ms"]
    )
    assert any(r["what"] == "flex" for r in digest["kernel"]["rows"])


def test_rerun_skips_rows_already_written_and_computes_speedups(bg, tmp_path: Path, monkeypatch) -> None:
    n = 4096
    rows = [
        {"key": f"dense|sdpa_flash|{n}", "section": "dense", "backend": "sdpa_flash", "n": n, "ms": 30.0},
        {"key": f"dense|cudnn|{n}", "section": "dense", "backend": "cudnn", "n": n, "ms": 20.0},
        {"key": f"kernel|videochat_flash|grid|{n}", "section": "kernel", "model": "videochat_flash", "tpf": 16,
         "pattern": "grid", "label": "grid", "n": n, "ms": 5.0, "tile_density": 0.1, "recall_mean": 0.9,
         "density": 0.1},
    ]  # fmt: skip
    (tmp_path / "bench_gpu.json").write_text(json.dumps({"context": bg.context(), "runs": [], "rows": rows}))

    def fail(*_a, **_k):
        raise AssertionError("a row already in the JSON was measured again")

    monkeypatch.setattr(bg, "dense_row", fail)
    monkeypatch.setattr(bg, "kernel_row", fail)
    monkeypatch.setattr(bg, "qkv", fail)
    argv = ["--out", str(tmp_path), "--lengths", str(n), "--models", "videochat_flash", "--patterns", "grid",
            "--sections", "dense", "kernel", "--heads", "4,4", "--block", "64"]  # fmt: skip
    assert bg.main(argv) == 0
    data = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert len(data["rows"]) == 3 and len(data["runs"]) == 1
    (s,) = bg.speedup_rows(data["rows"])
    assert s["speedup_vs_sdpa_flash"] == pytest.approx(6.0) and s["speedup_vs_cudnn"] == pytest.approx(4.0)
    for name in ("bench_gpu.md", "bench_gpu_kernel.csv", "kernel_speedup_vs_length.png", "recall_vs_density.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| videochat_flash | grid | 4096 |" in (tmp_path / "bench_gpu.md").read_text()


def test_lengths_too_short_for_the_layout_are_rejected(bg, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bg.main(["--out", str(tmp_path), "--lengths", "1024", "--models", "longvila"])
