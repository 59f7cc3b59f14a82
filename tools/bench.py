"""mmi benchmark entry point (`make bench`, `make bench-gpu`).

Sections are plain functions ``section(ctx) -> Table`` registered in ``SECTIONS``; each one returns rows that are
printed and written to ``results/local/`` (git-ignored) as JSON + CSV + a markdown summary, together with the device,
the date and the versions. Present sections:

- ``density`` (CPU, every machine): how much of the causal (query, key) grid each reference pattern keeps on a small
  video layout (text 64 + 16 frames of 8x8 + text 32 = 1120 tokens), computed with `mmi_core` only.
- ``recall`` (CPU, every machine): `mmi_core.synthetic.recall_density_table` on held-out synthetic workloads (video
  and interleaved): recall, density and output error of the estimated selections per (planted head kind, pattern),
  with the wall seconds of each workload kind on this machine's CPU (PyTorch reference code, not kernels).

On a CUDA machine ``tools/bench_gpu.py`` adds the GPU suite (kernel suite over the four paper models' layouts, full
layer with time split); each of its commands is sized by ``--budget-s`` and resumable.
PNG plots (density per pattern, recall vs density per pattern) are written next to the JSON/CSV/markdown.

Usage: ``python tools/bench.py [--size tiny|default] [--sections density recall] [--out results/local]``;
``python tools/bench.py --committed-plots results/bench`` redraws the plots of the committed GPU JSON.
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
# section: estimated recall / density / output error on held-out synthetic workloads (CPU)
# ---------------------------------------------------------------------------------------------------------------
SIZES: dict[str, dict[str, int]] = {
    # tokens per workload, held-out seeds, sampled query rows
    "tiny": {"tokens": 1024, "seeds": 1, "sample": 32},
    "default": {"tokens": 8192, "seeds": 4, "sample": 256},  # recall_density_table's own defaults
}
SIZE = "default"


def recall_section(ctx: Context) -> Table:
    from mmi_core.synthetic import recall_density_table

    size = SIZES[SIZE]
    table = Table(
        name="recall",
        title=(
            f"Estimated patterns on held-out synthetic workloads ({size['tokens']} tokens, {size['seeds']} seed(s), "
            f"{size['sample']} sampled query rows)"
        ),
        note=(
            "mmi_core.synthetic.recall_density_table: one query head per planted kind; Grid estimated with "
            "stride search, the other patterns' budgets bisected to the Grid's density on the first head (same "
            "density). recall = attention mass kept, output_error = relative L2 vs dense attention on the sampled "
            f"rows. cpu_seconds: wall time of the whole workload kind on this machine's CPU ({ctx.device_name}), "
            "PyTorch reference code: a CPU timing, not a kernel speed."
        ),
    )
    start = time.perf_counter()
    for workload in tqdm(("video", "interleaved"), desc="recall", unit="workload", file=sys.stderr):
        t0 = time.perf_counter()
        rows = recall_density_table(size["seeds"], workload=workload, num_tokens=size["tokens"], sample=size["sample"])
        secs = round(time.perf_counter() - t0, 1)
        for r in rows:
            table.rows.append(
                {
                    "workload": workload,
                    "head_kind": r["head_kind"],
                    "pattern": r["pattern"],
                    "recall": round(r["recall"], 4),
                    "min_recall": round(r["min_recall"], 4),
                    "density": round(r["density"], 4),
                    "output_error": round(r["output_error"], 4),
                    "seeds": r["seeds"],
                    "cpu_seconds": secs,
                }
            )
    table.seconds = time.perf_counter() - start
    return table


# ---------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tables(ctx: Context, tables: list[Table], base: Path) -> list[Path]:
    """PNG per plottable section: density per pattern (bars), recall vs density per pattern and workload."""
    plt = _pyplot()
    paths = []
    label = f"{ctx.device} ({ctx.device_name}), {ctx.date}, torch {ctx.versions['torch']}"
    for t in tables:
        if not t.rows:
            continue
        if t.name == "density":
            fig, ax = plt.subplots(figsize=(9, 4.5))
            for i, block in enumerate(sorted({r["block"] for r in t.rows})):
                rows = [r for r in t.rows if r["block"] == block]
                xs = [j + 0.4 * i for j in range(len(rows))]
                ax.bar(xs, [r["density"] for r in rows], width=0.4, label=f"block {block}")
                ax.set_xticks([j + 0.2 for j in range(len(rows))])
                ax.set_xticklabels([f"{r['pattern']}\n{r['parameters'][:22]}" for r in rows], fontsize=6)
            ax.set_ylabel("density (kept / causal pairs)")
            ax.set_title(f"{t.title}\n{label}", fontsize=8)
            ax.legend()
        elif t.name == "recall":
            workloads = sorted({r["workload"] for r in t.rows})
            fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4.5), squeeze=False)
            for ax, wk in zip(axes[0], workloads, strict=True):
                for pattern in sorted({r["pattern"] for r in t.rows}):
                    rows = [r for r in t.rows if r["workload"] == wk and r["pattern"] == pattern]
                    ax.scatter([r["density"] for r in rows], [r["recall"] for r in rows], label=pattern)
                    for r in rows:
                        ax.annotate(r["head_kind"][:4], (r["density"], r["recall"]), fontsize=6)
                ax.set_xscale("log")
                ax.set_xlabel("density (log)")
                ax.set_ylabel("attention recall")
                ax.set_title(f"{wk} (point label: planted head kind)", fontsize=8)
                ax.legend(fontsize=7)
            fig.suptitle(f"{t.title}\n{label}", fontsize=8)
        else:
            continue
        fig.tight_layout()
        path = Path(f"{base}-{t.name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# registry, output
# ---------------------------------------------------------------------------------------------------------------
SECTIONS: dict[str, Callable[[Context], Table]] = {"density": density_section, "recall": recall_section}
GPU_SECTIONS: dict[str, Callable[[Context], Table]] = {}  # tools/bench_gpu.py registers the GPU suite here


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
    try:
        return paths + plot_tables(ctx, tables, base)
    except ImportError as e:  # the GPU machine's system python may lack matplotlib
        print(f"no PNG plots ({e})")
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
    parser.add_argument("--size", choices=list(SIZES), default="default", help="tiny: the smoke test's size")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU suite on a CUDA machine")
    parser.add_argument("--gpu-budget-s", type=float, default=480.0, help="GPU suite: stop starting rows after this")
    parser.add_argument("--committed-plots", type=Path, default=None, help="only redraw the committed GPU plots here")
    args = parser.parse_args(argv)
    global SIZE
    SIZE = args.size
    if args.committed_plots is not None:
        import bench_gpu

        paths = bench_gpu.committed_plots(args.committed_plots)
        print("wrote " + ", ".join(str(p) for p in paths))
        return 0

    ctx = Context.detect()
    print(f"mmi bench: {ctx.device} ({ctx.device_name}), {ctx.date}, torch {ctx.versions['torch']}")
    if ctx.device == "cuda":
        print("CUDA: CPU sections here, then the GPU suite: python tools/bench_gpu.py (see BENCHMARKS.md).")
    else:
        print("CPU: running the embedded CPU sections (the GPU suite, tools/bench_gpu.py, needs CUDA).")
    tables = [SECTIONS[name](ctx) for name in args.sections if name in SECTIONS]
    for t in tables:
        print_table(t)
    paths = write(ctx, tables, args.out)
    print("\nwrote " + ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in paths))
    if ctx.device == "cuda" and not args.cpu_only:
        import bench_gpu  # tools/ is on sys.path when this file runs as a script

        return bench_gpu.main(["--out", str(args.out / "gpu"), "--budget-s", str(args.gpu_budget_s)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
