"""GPU suite of `make bench` (called by tools/bench.py on a CUDA machine; also runnable alone).

Sections (rows keyed, written to ``OUT/bench_gpu.json`` after every row; a rerun skips rows already there, so a
command sized by ``--budget-s`` (~8 min) is resumed by running it again):

- ``dense``: per length, PyTorch SDPA flash (FA2-class) and cuDNN SDPA causal attention on the suite's geometry
  (28 q / 4 kv heads, d 128, bf16): the baselines every sparse row is compared with.
- ``kernel``: the Triton sparse kernel (`mmi_kernels.sparse_attention`) on the block-level keep sets of
  ``tools/kernel_bench.py`` for the frame sizes of the four paper models (`MODELS`), lengths 16K -> 1M, patterns
  ``grid`` (stride = tokens per frame, 1 line, after a 1024-token text prefix), ``vs`` (vertical-slash with single
  key columns, our "MInference-style" path, identity order), ``a_shape`` (sink block + local blocks), ``blocks``
  (random top-k block-sparse) and ``mix`` (one KV head each of grid / vs / a_shape / blocks in one launch: a
  heterogeneous-heads mix, NOT the paper's modality-boundary patterns). Non-grid budgets are set to the grid's
  tile density on that layout ("same density"). FlexAttention runs on the identical block mask
  (`mmi_kernels.flex_export.index_to_block_mask`, every head its slot's lists; not ``vs``: single key columns). Per row:
  kernel ms, TFLOP/s on computed tiles, tile density, FlashInfer's block-sparse wrapper where it runs
  (`mmi_kernels.flashinfer_backend`; not ``vs``), and on sampled rows (``layer_bench.accuracy``) attention
  recall (of random q/k: the kernel's kept mass, not an estimator's quality) and the kernel's output error vs fp32.
- ``layer``: the full layer (estimation + index + kernel through `SparsePrefillWrapper`) on held-out synthetic
  video workloads at 256 tokens per frame, patterns grid and vs ("MInference-style" VS estimation):
  ``layer_bench.bench_length`` (time split, recall, density, output error, SDPA flash / cuDNN in the same run).

Then CSV + PNG plots (speedup vs length per model / pattern / baseline, recall vs density per pattern, TFLOP/s) and
a markdown summary with GPU, date and versions next to the JSON.
``committed_plots(dir)`` draws the committed H200 results (results/layer, results/kernels/v8) for BENCHMARKS.md.

CPU dry run (plumbing only, Triton interpreter): ``TRITON_INTERPRET=1 python tools/bench_gpu.py --out /tmp/g
--heads 4,4 --block 64 --lengths 2048 --models longvila videochat_flash --sections kernel dense``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_bench as kb  # tools/ modules, reused rather than duplicated
import layer_bench as lb

ROOT = Path(__file__).resolve().parents[1]
# tokens per frame of the four paper models' video layouts (after their merges, separator/newline tokens included)
MODELS: dict[str, dict[str, Any]] = {
    "longvila": {"tpf": 256, "what": "LongVILA: 16x16 tokens per frame"},
    "llava_video": {"tpf": 182, "what": "LLaVA-Video: 13x13 pooled tokens + 13 row newlines per frame"},
    "qwen2_5_vl": {"tpf": 252, "what": "Qwen2.5-VL: 336x588 frames, 2x2 spatial + 2-frame temporal merge: 12x21"},
    "videochat_flash": {"tpf": 16, "what": "VideoChat-Flash: 16 tokens per frame"},
}
LENGTHS = [16384, 32768, 65536, 131072, 262144, 524288, 1048576]
PATTERNS = ["grid", "vs", "a_shape", "blocks", "mix"]
DENSE = ["sdpa_flash", "cudnn"]


def log(*a: object) -> None:
    print(*a, flush=True)


try:
    from tqdm import tqdm
except ImportError:  # the GPU machine's system python may lack tqdm

    def tqdm(it, **_: Any):  # type: ignore[no-redef]
        return it


# ---------------------------------------------------------------------------------------------------------------
# keep sets
# ---------------------------------------------------------------------------------------------------------------
def pattern_a_shape(n: int, tile_density: float, dev: str):
    """Sink block 0 + the ``local`` key blocks ending at the diagonal, ``local`` set to reach ``tile_density``."""
    nb = kb.cdiv(n, kb.B)
    local = max(1, round(tile_density * (nb + 1) / 2))
    qb = torch.arange(nb, device=dev)[:, None]
    kk = torch.arange(nb, device=dev)[None, :]
    blocks = (kk == 0) | ((qb - kk >= 0) & (qb - kk < local))
    return torch.arange(n, device=dev), blocks, None


def keep_for(pattern: str, n: int, tpf: int, tile_density: float, dev: str):
    if pattern == "grid":
        order, blocks, cols = kb.pattern_grid(n, tpf, 1, dev)
    elif pattern == "vs":
        order, blocks, cols = kb.pattern_vs(n, tile_density, dev)
    elif pattern == "a_shape":
        order, blocks, cols = pattern_a_shape(n, tile_density, dev)
    elif pattern == "blocks":
        order, blocks, cols = kb.pattern_blocks(n, tile_density, dev)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return kb.SlotKeep(order, order, blocks, cols)


def causal_tile_density(keep) -> float:
    nb = keep.blocks.shape[0]
    return float(torch.tril(keep.blocks).sum()) / (nb * (nb + 1) / 2)


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
class Store:
    """The suite's JSON: context + rows keyed by ``key``; written after every row (partial results survive)."""

    def __init__(self, path: Path, ctx: dict[str, Any]) -> None:
        self.path = path
        if path.exists():
            self.data = json.loads(path.read_text())
            self.data.setdefault("runs", []).append(ctx)
        else:
            self.data = {"context": ctx, "runs": [ctx], "rows": []}
        self.keys = {r["key"] for r in self.data["rows"]}
        self.flush()

    def add(self, row: dict[str, Any]) -> None:
        self.data["rows"].append(row)
        self.keys.add(row["key"])
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        self.flush()

    def flush(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def context() -> dict[str, Any]:
    import triton

    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu (dry run: TRITON_INTERPRET, plumbing only)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "geometry": {
            "q_heads": kb.HQ,
            "kv_heads": kb.HKV,
            "head_dim": kb.D,
            "block": kb.B,
            "dtype": "bfloat16" if cuda else "float32 (CPU dry run)",
        },
    }


def qkv(n: int, dev: str, seed: int = 1):
    g = torch.Generator(device=dev).manual_seed(seed)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    q = torch.randn(n, kb.HQ, kb.D, device=dev, dtype=dtype, generator=g)
    k = torch.randn(n, kb.HKV, kb.D, device=dev, dtype=dtype, generator=g)
    v = torch.randn(n, kb.HKV, kb.D, device=dev, dtype=dtype, generator=g)
    return q, k, v


def dense_row(store: Store, n: int, backend: str, q, k, v, reps: int) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mmi_kernels.wrapper import dense_causal_attention

    which = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    row: dict[str, Any] = {"key": f"dense|{backend}|{n}", "section": "dense", "backend": backend, "n": n}
    if q.device.type == "cpu":  # a CPU dry run has neither: the math backend stands in (plumbing only)
        which, row["actual_backend"] = SDPBackend.MATH, "math (CPU stand-in)"
    try:
        with sdpa_kernel(which):
            row["ms"] = lb.cuda_ms(lambda: dense_causal_attention(q, k, v, 1 / math.sqrt(kb.D)), reps)
        row["tflops"] = 4 * kb.D * n * (n + 1) / 2 * kb.HQ / row["ms"] / 1e9
    except RuntimeError as e:
        row["error"] = str(e)[:300]
    store.add(row)


def kernel_row(store: Store, model: str, n: int, pattern: str, q, k, v, args) -> None:
    from mmi_kernels import index_from_keeps, sparse_attention

    dev = args.device
    tpf = MODELS[model]["tpf"]
    grid_keep = keep_for("grid", n, tpf, 0.0, dev)
    target = causal_tile_density(grid_keep)  # the other patterns get the grid's density on this layout
    if pattern == "mix":
        keeps = [keep_for(p, n, tpf, target, dev) for p in ("grid", "vs", "a_shape", "blocks")][: kb.HKV]
        keeps += [keeps[-1]] * (kb.HKV - len(keeps))
    else:
        keeps = [grid_keep if pattern == "grid" else keep_for(pattern, n, tpf, target, dev)] * kb.HKV
    row: dict[str, Any] = {"key": f"kernel|{model}|{pattern}|{n}", "section": "kernel", "model": model, "tpf": tpf}
    row.update(pattern=pattern, n=n, label="MInference-style" if pattern == "vs" else pattern)
    t0 = time.perf_counter()
    idx = index_from_keeps([keeps], block=kb.B, num_q_heads=kb.HQ, num_kv_heads=kb.HKV, device=dev)
    row["index_build_s"] = time.perf_counter() - t0
    nb = kb.cdiv(n, kb.B)
    causal_tiles = nb * (nb + 1) / 2
    tiles = float((idx.block_prefix.long() + idx.block_count.long()).sum()) / idx.block_prefix.shape[0]
    cols = float(idx.column_count.long().sum()) / idx.column_count.shape[0]
    row.update(tiles_per_slot=tiles, columns_per_slot=cols, tile_density=tiles / causal_tiles)
    flops = 4 * kb.D * kb.B * kb.B * tiles * kb.HQ + 4 * kb.D * kb.B * cols * kb.HQ
    out = torch.full_like(q, float("nan"))
    row["ms"] = lb.cuda_ms(lambda: sparse_attention(q, k, v, idx, out=out), args.reps)
    row["tflops_on_tiles"] = flops / row["ms"] / 1e9
    rows = torch.sort(torch.randperm(n, device=dev)[: args.rows - 1]).values
    rows = torch.cat([rows, torch.tensor([n - 1], device=dev)])
    g = kb.HQ // kb.HKV
    acc = lb.accuracy(q, k, v, out, idx, [(s * g, g) for s in range(kb.HKV)], rows)
    row.update(acc)  # recall / density / output error vs DENSE attention (of random q/k: diffuse attention)
    if pattern != "mix":  # exactness: the kernel vs fp32 attention restricted to the same kept set
        ref = kb.reference_rows(q, k, v, keeps[0], rows, 0)
        row["kernel_vs_kept_set_error"] = float((out[rows].float() - ref).norm() / ref.norm())
    if args.flex and dev == "cuda" and pattern != "vs":  # Flex has no single-column keys
        flex_row(row, q, k, v, idx, keeps, out, rows, args)
    if args.flashinfer and dev == "cuda" and pattern != "vs":
        flashinfer_row(row, q, k, v, idx, out, rows, args)
    store.add(row)


def flex_row(row: dict[str, Any], q, k, v, idx, keeps, out, rows, args) -> None:
    """FlexAttention on the identical mask: `mmi_kernels.flex_export` (every head reads its slot's lists; timed on
    pre-permuted tensors, permutation not timed), else tools/kernel_bench.flex_runner (one shared pattern)."""
    try:
        try:
            from mmi_kernels.flex_export import flex_permute, flex_sparse_attention, index_to_block_mask
        except ImportError:
            index_to_block_mask = None
        t1 = time.perf_counter()
        if index_to_block_mask is not None:
            from torch.nn.attention.flex_attention import flex_attention

            export = index_to_block_mask(idx, 0, None)
            qf, kf, vf = flex_permute(export, q, k, v)
            # one compiled graph per (shape, mask structure): without room for them all, dynamo falls back to eager
            # flex_attention, which materialises the dense [Hq, n, n] scores (1.8 TB at 131K)
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 512)
            torch._dynamo.config.accumulated_cache_size_limit = max(
                torch._dynamo.config.accumulated_cache_size_limit, 4096
            )
            fa = _FLEX_FN.setdefault("fn", torch.compile(flex_attention, dynamic=False))
            opts = {"BLOCK_M": kb.B, "BLOCK_N": kb.B} if kb.B < 128 else None

            def fn():
                return fa(qf, kf, vf, block_mask=export.block_mask, enable_gqa=export.gqa, kernel_options=opts)

            o = flex_sparse_attention(q, k, v, export, flex_fn=fa, kernel_options=opts)
            row["flex_vs_mmi_error"] = float((o[rows].float() - out[rows].float()).norm() / out[rows].float().norm())
            row["flex_via"] = "mmi_kernels.flex_export"
        elif row["pattern"] == "mix":
            return
        else:
            fn = kb.flex_runner(q, k, v, idx, keeps[0].q_order, keeps[0].k_order)
            fn()
            row["flex_via"] = "kernel_bench.flex_runner"
        torch.cuda.synchronize()
        row["flex_compile_s"] = time.perf_counter() - t1
        row["flex_ms"] = lb.cuda_ms(fn, args.reps)
    except Exception as e:  # recorded, the run goes on
        row["flex_error"] = repr(e)[:300]


def flashinfer_row(row: dict[str, Any], q, k, v, idx, out, rows, args) -> None:
    """FlashInfer's BlockSparseAttentionWrapper on the index's block part (`mmi_kernels.flashinfer_backend`)."""
    try:
        from mmi_kernels.flashinfer_backend import FlashInferBlockSparse, flashinfer_available

        ok, why = flashinfer_available()
        if not ok:
            row["flashinfer_error"] = f"unavailable: {why}"[:300]
            return
        fb = FlashInferBlockSparse()
        fb.plan(idx, head_dim=kb.D, dtype=q.dtype, scale=1 / math.sqrt(kb.D))
        o = fb.run(q, k, v)
        row["flashinfer_vs_mmi_error"] = float((o[rows].float() - out[rows].float()).norm() / out[rows].float().norm())
        row["flashinfer_ms"] = lb.cuda_ms(lambda: fb.run(q, k, v), args.reps)
    except Exception as e:  # recorded, the run goes on
        row["flashinfer_error"] = repr(e)[:300]


_FLEX_FN: dict[str, Any] = {}


def layer_row(store: Store, n: int, pattern: str, args, out: Path) -> None:
    """layer_bench.bench_length on its own record (its JSON next to ours), copied into our rows."""
    rec = {"rows": []}
    largs = SimpleNamespace(
        device=args.device, tpf=256, pattern=pattern, block=kb.B, reps=args.reps, rows=args.rows, profile=False,
        no_dense=False, workload="video",
    )  # fmt: skip
    lb.bench_length(n, largs, rec, out / f"layer_{pattern}_{n}.json")
    for r in rec["rows"]:
        store.add({"key": f"layer|{pattern}|{n}", "section": "layer", "requested_n": n, **r,
                   "label": "MInference-style" if pattern == "vs" else pattern})  # fmt: skip


def run(args) -> Store:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / "bench_gpu.json", context())
    start = time.perf_counter()
    jobs: list[tuple[str, ...]] = []
    for n in args.lengths:
        if "dense" in args.sections:
            jobs += [("dense", b, str(n)) for b in DENSE]
        if "kernel" in args.sections:
            jobs += [("kernel", m, p, str(n)) for m in args.models for p in args.patterns]
        if "layer" in args.sections and (n >= 131072 or args.device == "cpu"):
            jobs += [("layer", p, str(n)) for p in ("grid", "vs")]
    todo = [j for j in jobs if "|".join(j) not in store.keys]
    log(f"GPU suite: {len(jobs)} rows, {len(jobs) - len(todo)} already in {store.path}, budget {args.budget_s:.0f} s")
    cache: dict[int, tuple] = {}
    for job in tqdm(todo, desc="gpu suite", unit="row", file=sys.stderr):
        if time.perf_counter() - start > args.budget_s:
            log(f"budget of {args.budget_s:.0f} s spent: run the same command again to resume")
            break
        n = int(job[-1])
        if job[0] == "layer":
            cache.clear()
            if args.device == "cuda":
                torch.cuda.empty_cache()
            layer_row(store, n, job[1], args, out)
            continue
        if n not in cache:
            cache.clear()
            if args.device == "cuda":
                torch.cuda.empty_cache()
            cache[n] = qkv(n, args.device)
        q, k, v = cache[n]
        if job[0] == "dense":
            dense_row(store, n, job[1], q, k, v, 1 if n >= 524288 else args.reps)
        else:
            kernel_row(store, job[1], n, job[2], q, k, v, args)
    return store


# ---------------------------------------------------------------------------------------------------------------
# tables, plots, summary
# ---------------------------------------------------------------------------------------------------------------
def speedup_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kernel rows with speedups vs each dense baseline (and Flex) of the same length."""
    dense = {(r["backend"], r["n"]): r["ms"] for r in rows if r["section"] == "dense" and "ms" in r}
    out = []
    for r in rows:
        if r["section"] != "kernel":
            continue
        s = dict(r)
        for b in DENSE:
            if (b, r["n"]) in dense:
                s[f"speedup_vs_{b}"] = dense[(b, r["n"])] / r["ms"]
        for other in ("flex", "flashinfer"):
            if f"{other}_ms" in r:
                s[f"speedup_vs_{other}"] = r[f"{other}_ms"] / r["ms"]
        out.append(s)
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots(store: Store, out: Path) -> list[Path]:
    plt = _plt()
    ctx = store.data["context"]
    label = f"{ctx['gpu']}, {ctx['date'][:10]}, torch {ctx['torch']}, triton {ctx['triton']}"
    rows = speedup_rows(store.data["rows"])
    paths = []
    if rows:
        models = sorted({r["model"] for r in rows})
        fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
        for ax, m in zip(axes[0], models, strict=True):
            for p in PATTERNS:
                for b, style in (("sdpa_flash", "-o"), ("cudnn", "--s")):
                    pts = sorted((r["n"], r[f"speedup_vs_{b}"]) for r in rows
                                 if r["model"] == m and r["pattern"] == p and f"speedup_vs_{b}" in r)  # fmt: skip
                    if pts:
                        ax.plot(*zip(*pts, strict=True), style, label=f"{p} vs {b}", markersize=3)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens")
            ax.set_ylabel("kernel speedup (x)")
            ax.set_title(f"{m} ({MODELS.get(m, {}).get('tpf', '?')} tokens/frame)", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=5)
        fig.suptitle(f"sparse kernel vs dense attention, same length\n{label}", fontsize=8)
        fig.tight_layout()
        paths.append(out / "kernel_speedup_vs_length.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for p in PATTERNS:
            pts = [(r["density"], r["recall_mean"]) for r in rows if r["pattern"] == p and "recall_mean" in r]
            if pts:
                ax.scatter(*zip(*pts, strict=True), label=p, s=10)
        for r in store.data["rows"]:
            if r["section"] == "layer" and "recall_mean" in r:
                ax.scatter(r["density"], r["recall_mean"], marker="*", s=60, label=f"layer {r['pattern']}")
        ax.set_xscale("log")
        ax.set_xlabel("density (kept / causal pairs, sampled rows)")
        ax.set_ylabel("attention recall")
        ax.set_title(f"recall vs density (kernel rows: random q/k; layer: synthetic video)\n{label}", fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "recall_vs_density.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    layer = [r for r in store.data["rows"] if r["section"] == "layer" and "layer_ms" in r]
    if layer:
        paths.append(layer_speedup_png(layer, out / "layer_speedup_vs_length.png", label))
    return paths


def layer_speedup_png(layer: list[dict[str, Any]], path: Path, label: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for p in sorted({r["pattern"] for r in layer}):
        mine = sorted((r for r in layer if r["pattern"] == p), key=lambda r: r["n_tokens"])
        for b, style in (("sdpa_flash", "-o"), ("cudnn", "--s"), ("sdpa_math", ":^")):  # math: CPU dry run only
            pts = [(r["n_tokens"], r[f"speedup_vs_{b}"]) for r in mine if f"speedup_vs_{b}" in r]
            if pts:
                axes[0].plot(*zip(*pts, strict=True), style, label=f"{p} layer vs {b}")
                for x, y in pts:
                    axes[0].annotate(f"{y:.1f}x", (x, y), fontsize=7)
    axes[0].set_xscale("log", base=2)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("tokens")
    axes[0].set_ylabel("speedup of the full sparse layer (x)")
    axes[0].legend(fontsize=7)
    mine = sorted(layer, key=lambda r: (r["pattern"], r["n_tokens"]))
    xs = range(len(mine))
    bottom = [0.0] * len(mine)
    for part in ("estimate_ms", "index_ms", "kernel_ms"):
        vals = [r[part] for r in mine]
        axes[1].bar(xs, vals, bottom=bottom, label=part.replace("_ms", ""))
        bottom = [a + b for a, b in zip(bottom, vals, strict=True)]
    axes[1].set_xticks(list(xs), [f"{r['pattern']}\n{r['n_tokens'] // 1024}K" for r in mine], fontsize=7)
    axes[1].set_ylabel("ms per layer (28 q heads)")
    axes[1].set_title("time split (separately timed parts)", fontsize=8)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"full sparse layer (estimation + index + kernel) vs dense SDPA\n{label}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tables(store: Store, out: Path) -> list[Path]:
    paths = []
    for section in ("dense", "kernel", "layer"):
        rows = [r for r in store.data["rows"] if r["section"] == section]
        if section == "kernel":
            rows = speedup_rows(store.data["rows"])
        if not rows:
            continue
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        path = out / f"bench_gpu_{section}.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        paths.append(path)
    ctx = store.data["context"]
    lines = ["# mmi GPU suite", "", f"- device: {ctx['gpu']}", f"- date: {ctx['date']}"]
    lines += [f"- versions: torch {ctx['torch']}, triton {ctx['triton']}, cuda {ctx['cuda']}, cudnn {ctx['cudnn']}"]
    cols = ["tile_density", "ms", "tflops_on_tiles", "speedup_vs_sdpa_flash", "speedup_vs_cudnn", "speedup_vs_flex"]
    cols += ["speedup_vs_flashinfer", "recall_mean", "output_error_mean"]
    head = "density | ms | TFLOP/s tiles | vs SDPA flash | vs cuDNN | vs Flex | vs FlashInfer | recall | out err"
    lines += [f"- geometry: {ctx['geometry']}", "", f"| model | pattern | tokens | {head} |", "|" + "---|" * 12]
    for r in speedup_rows(store.data["rows"]):
        vals = [f"{r[k]:.3g}" if k in r else "-" for k in cols]
        lines.append(f"| {r['model']} | {r['label']} | {r['n']} | " + " | ".join(vals) + " |")
    path = out / "bench_gpu.md"
    path.write_text("\n".join(lines) + "\n")
    return [*paths, path]


# ---------------------------------------------------------------------------------------------------------------
# the committed H200 results, drawn for BENCHMARKS.md
# ---------------------------------------------------------------------------------------------------------------
def committed_plots(out: Path) -> list[Path]:
    """PNGs + a JSON digest under ``out`` from results/layer/layer_bench_grid_h200_2026-11-22.json (full layer) and
    results/kernels/v8/kernel_bench_time_*.json (kernel TFLOP/s vs FlexAttention and cuDNN)."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    layer_file = ROOT / "results/layer/layer_bench_grid_h200_2026-11-22.json"
    lrec = json.loads(layer_file.read_text())
    label = f"{lrec['gpu']}, {lrec['date'][:10]}, torch {lrec['torch']}, triton {lrec['triton']}"
    paths = [layer_speedup_png(lrec["rows"], out / "layer_speedup_vs_length_h200.png", label)]
    krows, kctx = [], None
    for f in sorted((ROOT / "results/kernels/v8").glob("kernel_bench_time_*.json")):
        d = json.loads(f.read_text())
        kctx = d
        for r in d["results"]:
            if "ms" in r:
                krows.append({"file": f.name, "block": d.get("block", 64), **r})
    kernels = [r for r in krows if r["what"] in ("mmi", "flex")]
    cats = sorted({(r["n"], r["block"], r["kind"], r["target_density"]) for r in kernels})
    fig, ax = plt.subplots(figsize=(12, 4.5))
    w = 0.4
    for i, what in enumerate(("mmi", "flex")):
        vals = []
        for c in cats:
            m = [r["tflops"] for r in kernels if r["what"] == what and (r["n"], r["block"], r["kind"],
                                                                         r["target_density"]) == c]  # fmt: skip
            vals.append(m[0] if m else 0.0)
        ax.bar([j + i * w for j in range(len(cats))], vals, width=w, label="mmi Triton" if what == "mmi" else "Flex")
    for r in krows:
        if r["what"] == "dense_cudnn":
            ax.axhline(r["tflops"], ls=":", c="k", lw=0.8)
            ax.annotate(f"cuDNN dense causal {r['n'] // 1024}K: {r['tflops']:.0f}", (0, r["tflops"]), fontsize=7)
    ax.set_xticks([j + w / 2 for j in range(len(cats))],
                  [f"{k}\n{d:.2f}\n{n // 1024}K b{b}" for n, b, k, d in cats], fontsize=6)  # fmt: skip
    ax.set_ylabel("TFLOP/s on computed tiles")
    ctx_label = f"{kctx['gpu']}, {kctx['date_utc'][:10]}, torch {kctx['torch']}, triton {kctx['triton']}"
    ax.set_title(f"sparse kernel throughput (pattern, target density, length, block)\n{ctx_label}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "kernel_tflops_h200.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    digest = {
        "made_from": [str(layer_file.relative_to(ROOT)), "results/kernels/v8/kernel_bench_time_*.json"],
        "layer": {"context": {k: v for k, v in lrec.items() if k != "rows"}, "rows": lrec["rows"]},
        "kernel": {"context": {k: v for k, v in kctx.items() if k != "results"}, "rows": krows},
    }
    paths.append(out / "committed_h200_2026-11-22.json")
    paths[-1].write_text(json.dumps(digest, indent=1))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "local" / "gpu")
    ap.add_argument("--sections", nargs="+", default=["dense", "kernel", "layer"], choices=["dense", "kernel", "layer"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--patterns", nargs="+", default=PATTERNS, choices=PATTERNS)
    ap.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop starting rows after this (rerun resumes)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=32, help="sampled query rows for recall / output error")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--heads", default="28,4", help="query,kv heads (smaller for a CPU dry run)")
    ap.add_argument("--no-flex", dest="flex", action="store_false")
    ap.add_argument("--no-flashinfer", dest="flashinfer", action="store_false")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    hq, hkv = (int(x) for x in args.heads.split(","))
    kb.HQ, kb.HKV, kb.B = hq, hkv, args.block
    lb.HQ, lb.HKV = hq, hkv
    if min(args.lengths) <= kb.TEXT_PREFIX + 2 * max(MODELS[m]["tpf"] for m in args.models):
        ap.error(f"lengths must exceed the {kb.TEXT_PREFIX}-token text prefix plus two frames")
    store = run(args)
    paths = write_tables(store, args.out)
    try:
        paths += plots(store, args.out)
    except ImportError as e:  # the GPU machine's system python may lack matplotlib: the data is written already
        log(f"no PNG plots ({e}); redraw later with tools/bench_gpu.py on a machine with matplotlib")
    log("wrote " + ", ".join(str(p) for p in [store.path, *paths]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
