"""mmi benchmark entry point (`make bench`, `make bench-gpu`).

Sections are plain functions ``section(ctx) -> Table`` registered in ``SECTIONS``; each one returns rows that are
printed and written to ``results/local/`` (git-ignored) as JSON + CSV + a markdown summary, together with the device,
the date and the versions. Present sections:

- ``density`` (CPU, every machine): how much of the causal (query, key) grid each reference pattern keeps on a small
  video layout (text 64 + 16 frames of 8x8 + text 32 = 1120 tokens), computed with `mmi_core` only.

Later issues add estimation recall tables and the GPU kernel suite as further sections; on a CUDA machine this
script says that the GPU suite is not present yet and runs the CPU sections.

Usage: ``python tools/bench.py [--sections density] [--out results/local]``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    ModalityLayout,
    Selection,
    VerticalSlash,
    VisualGrid,
    ashape_selection,
    block_sparse_selection,
    dense_selection,
    density,
    grid_selection,
    vertical_slash_selection,
)

try:
    from tqdm import tqdm
except ImportError:  # the GPU machine's system python may lack tqdm

    def tqdm(it: Iterable, **_: Any) -> Iterable:  # type: ignore[no-redef]
        return it


ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# context and result tables
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """Where and when the benchmark runs; written next to every result."""

    device: str
    device_name: str
    date: str
    versions: dict[str, str]

    @classmethod
    def detect(cls) -> Context:
        if torch.cuda.is_available():
            device, name = "cuda", torch.cuda.get_device_name(0)
        else:
            device, name = "cpu", platform.processor() or platform.machine()
        versions = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "mmi_core": _package_version("mmi-core"),
            "git": _git_commit(),
        }
        if device == "cuda":
            versions["cuda"] = str(torch.version.cuda)
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(device, name, date, versions)


@dataclass
class Table:
    """One section's result: a title, a note on what was measured, and rows of equal keys."""

    name: str
    title: str
    note: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # source tree on PYTHONPATH (GPU machine): no installed metadata
        return "source"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------
# section: density of the reference patterns (CPU)
# ---------------------------------------------------------------------------------------------------------------
def small_video_layout() -> ModalityLayout:
    """text 64 + video 16 frames of 8x8 (64 tokens per frame) + text 32 = 1120 tokens."""
    return ModalityLayout.from_parts([("text", 64), ("video", VisualGrid(frames=16, rows=8, cols=8)), ("text", 32)])


def reference_patterns(layout: ModalityLayout, block: int) -> list[tuple[str, str, Callable[[], Selection]]]:
    """(name, parameters, builder) of every reference pattern on ``layout`` with explicit (not estimated) indices."""
    n = layout.num_tokens
    video = layout.segments_of("video")[0]
    tpf = layout.tokens_per_frame or 1
    frame_starts = torch.arange(video.start, video.end, tpf)
    nqb = -(-n // block)

    def evenly_spaced_blocks(top_k: int) -> torch.Tensor:
        top = torch.full((nqb, top_k), -1, dtype=torch.int64)
        for qb in range(nqb):
            ids = torch.linspace(0, qb, top_k + 2).round().long()[1:-1].unique()  # strictly between 0 and qb
            top[qb, : ids.numel()] = ids
        return top

    vs = VerticalSlash(vertical=frame_starts.numel(), slash=3, sink=30, local=64, block=block)
    vs_offsets = torch.tensor([tpf, 2 * tpf, 4 * tpf])
    grid = Grid(stride="frame", lines=1, sink=64, local=1, block=block)
    grid4 = Grid(stride="frame", lines=4, sink=64, local=1, block=block)
    grid_slash = Grid(stride="frame", hline=False, vline=False, slash=True, sink=64, local=1, block=block)
    lines4 = [video.start + r for r in (0, 16, 32, 48)]
    return [
        ("dense", "-", lambda: dense_selection(n, n, block)),
        ("a_shape", "sink 64, local 128", lambda: ashape_selection(n, n, AShape(sink=64, local=128, block=block))),
        ("a_shape", "sink 64, local 256", lambda: ashape_selection(n, n, AShape(sink=64, local=256, block=block))),
        (
            "vertical_slash",
            f"columns: frame starts ({frame_starts.numel()}) + sink 30; offsets {vs_offsets.tolist()} + local 64",
            lambda: vertical_slash_selection(n, n, vs, frame_starts, vs_offsets),
        ),
        (
            "block_sparse",
            "top 2 evenly spaced causal blocks + block 0 + diagonal",
            lambda: block_sparse_selection(n, n, BlockSparse(top_k=2, block=block), evenly_spaced_blocks(2)),
        ),
        (
            "grid",
            f"stride {tpf} (frame), 1 line at the video start, h+v+slash, sink 64, local 1",
            lambda: grid_selection(layout, n, grid, tpf, [video.start]),
        ),
        (
            "grid",
            f"stride {tpf} (frame), 4 lines {[r - video.start for r in lines4]}, h+v+slash, sink 64, local 1",
            lambda: grid_selection(layout, n, grid4, tpf, lines4),
        ),
        (
            "grid",
            f"stride {tpf} (frame), slash only, sink 64, local 1",
            lambda: grid_selection(layout, n, grid_slash, tpf, [video.start]),
        ),
    ]


def density_section(ctx: Context) -> Table:
    layout = small_video_layout()
    n = layout.num_tokens
    table = Table(
        name="density",
        title=f"Density of the reference patterns on text 64 + 16 frames x 8x8 + text 32 ({n} tokens)",
        note=(
            "density = kept (query, key) pairs / causal pairs, from mmi_core.keep_mask on all rows; tiles = kept "
            "(query block, key block) pairs, the work unit of a block-sparse kernel (dense causal in the last row); "
            "columns = kept single key columns. Indices are explicit, not estimated."
        ),
    )
    start = time.perf_counter()
    jobs = [(block, *p) for block in (64, 128) for p in reference_patterns(layout, block)]
    for block, name, params, build in tqdm(jobs, desc="density", unit="pattern", file=sys.stderr):
        sel = build()
        table.rows.append(
            {
                "pattern": name,
                "parameters": params,
                "block": block,
                "tokens": n,
                "density": round(density(sel), 4),
                "tiles": int(sel.blocks.sum()),
                "causal_tiles": int(dense_selection(n, n, block).blocks.sum()),
                "columns": 0 if sel.columns is None else int(sel.columns.sum()),
            }
        )
    table.seconds = time.perf_counter() - start
    return table


# ---------------------------------------------------------------------------------------------------------------
# registry, output
# ---------------------------------------------------------------------------------------------------------------
SECTIONS: dict[str, Callable[[Context], Table]] = {"density": density_section}
GPU_SECTIONS: dict[str, Callable[[Context], Table]] = {}  # the kernel suite (a later issue) registers here


def markdown(ctx: Context, tables: list[Table]) -> str:
    lines = [
        "# mmi benchmark",
        "",
        f"- date: {ctx.date}",
        f"- device: {ctx.device} ({ctx.device_name})",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ctx.versions.items()),
        "",
    ]
    for t in tables:
        lines += [f"## {t.title}", "", t.note, "", f"({t.seconds:.1f} s)", ""]
        if t.rows:
            keys = list(t.rows[0])
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in t.rows]
            lines.append("")
    return "\n".join(lines)


def write(ctx: Context, tables: list[Table], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = ctx.date.replace(":", "").replace("-", "")
    base = out / f"bench-{ctx.device}-{stamp}"
    paths = [base.with_suffix(".json"), base.with_suffix(".md")]
    payload = {"context": ctx.__dict__, "sections": [t.__dict__ for t in tables]}
    paths[0].write_text(json.dumps(payload, indent=1))
    paths[1].write_text(markdown(ctx, tables))
    for t in tables:
        if not t.rows:
            continue
        path = Path(f"{base}-{t.name}.csv")
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["date", "device", "torch", *t.rows[0]])
            w.writeheader()
            for r in t.rows:
                w.writerow({"date": ctx.date, "device": ctx.device_name, "torch": ctx.versions["torch"], **r})
        paths.append(path)
    return paths


def print_table(t: Table) -> None:
    print(f"\n{t.title}  ({t.seconds:.1f} s)")
    keys = list(t.rows[0]) if t.rows else []
    widths = {k: max(len(k), *(len(str(r[k])) for r in t.rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in t.rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))
    print(t.note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=[*SECTIONS, *GPU_SECTIONS])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "local")
    args = parser.parse_args(argv)

    ctx = Context.detect()
    print(f"mmi bench: {ctx.device} ({ctx.device_name}), {ctx.date}, torch {ctx.versions['torch']}")
    if ctx.device == "cuda" and not GPU_SECTIONS:
        print("GPU suite: not present yet (kernel benchmarks arrive with the kernel issue); running the CPU sections.")
    elif ctx.device == "cpu":
        print("CPU: running the embedded CPU sections (the GPU suite needs CUDA).")
    tables = [SECTIONS[name](ctx) for name in args.sections if name in SECTIONS]
    if ctx.device == "cuda":
        tables += [GPU_SECTIONS[name](ctx) for name in args.sections if name in GPU_SECTIONS]
    for t in tables:
        print_table(t)
    paths = write(ctx, tables, args.out)
    print("\nwrote " + ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
