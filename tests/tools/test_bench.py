"""Smoke test of the CPU `make bench` (tools/bench.py at its tiny size): it completes and writes its files. Numbers
are not checked here (they are measured, not fixed); the files' structure is."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(TOOLS))
    try:
        import bench

        yield bench
    finally:
        sys.path.remove(str(TOOLS))


@pytest.mark.slow
def test_cpu_bench_tiny_writes_json_csv_png_and_summary(bench, tmp_path: Path) -> None:
    assert bench.main(["--size", "tiny", "--out", str(tmp_path), "--cpu-only"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    suffixes = {name.split("-", 3)[-1] if name.count("-") >= 3 else name.rsplit(".", 1)[-1] for name in files}
    for want in ("density.csv", "recall.csv", "density.png", "recall.png"):
        assert want in suffixes, files
    (j,) = tmp_path.glob("*.json")
    payload = json.loads(j.read_text())
    assert payload["context"]["device"] in ("cpu", "cuda")
    assert {"torch", "python", "git"} <= set(payload["context"]["versions"])
    sections = {s["name"]: s for s in payload["sections"]}
    assert set(sections) == {"density", "recall"}
    recall = sections["recall"]["rows"]
    assert {r["workload"] for r in recall} == {"video", "interleaved"}
    for r in recall:
        assert 0.0 <= r["recall"] <= 1.0 + 1e-6 and 0.0 < r["density"] <= 1.0 + 1e-6 and r["cpu_seconds"] > 0
    dense = [r for r in recall if r["pattern"] == "dense"]
    assert dense and all(r["recall"] == 1.0 and r["output_error"] == 0.0 for r in dense)
    (md,) = tmp_path.glob("*.md")
    text = md.read_text()
    assert "- device: " in text and "- date: " in text and "CPU timing" in text
    (c,) = tmp_path.glob("*-recall.csv")
    with c.open() as f:
        assert len(list(csv.DictReader(f))) == len(recall)
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_size_is_rejected(bench) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--size", "huge"])
