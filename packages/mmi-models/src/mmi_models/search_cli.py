"""``mmi-search``: search per-head MMInference configs for a transformers VLM on a calibration input.

    mmi-search MODEL_DIR --video clip.mp4 --prompt "describe the video" --out search_out/

Steps: load the checkpoint and its processor; capture every language layer's q/k/v in one forward
(`mmi_models.capture`, written to ``OUT/capture/``; ``--synthetic N`` uses a synthetic workload of the model's
geometry instead); then per layer `mmi_core.search_layer` (one JSON checkpoint per layer in ``OUT/layers/``: a killed
run resumes where it stopped); then ``OUT/head_configs.json`` (`HeadConfigs`, loadable by every consumer) and the
report: ``OUT/patterns.png`` (chosen pattern per layer × head), ``OUT/search.csv``, ``OUT/attention_maps.png``.

Latency: ``--latency auto`` times the real kernels (mmi-kernels, CUDA events) when CUDA is available, else the
documented CPU cost model (`mmi_core.latency.CostModel`); the output metadata says which.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from mmi_core import (
    ConfigError,
    CostModel,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    LayerSearchResult,
    SearchSpace,
    assemble_head_configs,
    paper_search_space,
    search_layer,
    synthetic_workload,
)
from mmi_models.adapter import AdapterError
from mmi_models.capture import (
    CapturedLayer,
    CaptureError,
    calibration_inputs,
    capture_layers,
    load_captured,
    load_model,
)

__all__ = ["KernelTimer", "main", "run_search"]

#: calibration length the paper's budgets are meant for (its ~25K-token sample); ``--token-scale auto`` = N / this
PAPER_CALIBRATION_TOKENS = 25_000


class KernelTimer:
    """Latency from the real kernels: the layer runs through mmi-kernels (``SparsePrefill`` backend ``kernels``)
    with the candidate's patterns, timed with CUDA events (median of ``reps`` after one warm-up); the layer's time is
    split over its heads in proportion to the cost model's per-head estimate (the kernels time a layer, not a
    head). Needs CUDA and mmi-kernels. **Not run in this repository's CI** (CPU only)."""

    name = "kernels_cuda_events"

    def __init__(self, reps: int = 5) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("KernelTimer needs CUDA")
        self.reps = reps
        self.model = CostModel()

    def layer_latency_ms(self, q, k, v, layout, patterns, selections) -> list[float]:
        from mmi_models.sparse_compute import SparsePrefill

        hq, hkv = q.shape[1], k.shape[1]
        g = hq // hkv
        gqa = [
            "group" if all(selections[h] is selections[j * g] for h in range(j * g, (j + 1) * g)) else "head"
            for j in range(hkv)
        ]
        hc = HeadConfigs(
            num_layers=1,
            num_q_heads=hq,
            num_kv_heads=hkv,
            layers=[LayerConfig(heads=[HeadSpec(pattern=p) for p in patterns], gqa=gqa)],
        )
        dev = torch.device("cuda")
        qd, kd, vd = (t.to(dev, torch.bfloat16) for t in (q, k, v))
        plan = SparsePrefill(hc, [layout], dev, backend="kernels")
        plan.run([qd], [kd], [vd], 0)
        times = []
        for _ in range(self.reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            plan.run([qd], [kd], [vd], 0)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        total = sorted(times)[len(times) // 2]
        share = self.model.layer_latency_ms(q, k, v, layout, patterns, selections)
        return [total * s / max(sum(share), 1e-30) for s in share]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": torch.cuda.get_device_name(),
            "reps": self.reps,
            "per_head_split": "layer time split by the cost model's per-head shares",
        }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmi-search", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="transformers checkpoint directory (config.json, weights, processor)")
    p.add_argument("--out", type=Path, required=True, help="output directory (resumable)")
    p.add_argument("--video", type=Path, help="calibration video file (mp4, decoded with PyAV)")
    p.add_argument("--prompt", default="", help="calibration prompt (with or without --video)")
    p.add_argument(
        "--synthetic",
        type=int,
        metavar="TOKENS",
        help="calibrate on a synthetic workload of ~TOKENS tokens with the model's geometry",
    )
    p.add_argument("--block", type=int, default=64, help="block size of every candidate (64 or 128 on GPUs)")
    p.add_argument(
        "--token-scale",
        default="auto",
        help=f"multiply the paper's token budgets (auto: N / {PAPER_CALIBRATION_TOKENS}, at most 1)",
    )
    p.add_argument("--target", type=float, default=0.2, help="latency target as a fraction of dense")
    p.add_argument("--band", type=float, default=0.1, help="candidates within +-band of the target compete")
    p.add_argument("--rows", type=int, default=256, help="sampled query rows for the output error")
    p.add_argument("--layers", type=int, help="search only the first N layers (others: dense), for quick runs")
    p.add_argument("--latency", choices=["auto", "cost_model", "kernels"], default="auto")
    p.add_argument(
        "--kernel-only",
        action="store_true",
        help="cost model without estimation overhead (short calibration inputs, where the fixed "
        "per-head estimation cost would dominate every choice)",
    )
    p.add_argument(
        "--boundaries",
        default="none",
        help="comma-separated boundary kinds to search: none, k, q ('q' only once mmi_core.layer executes it)",
    )
    p.add_argument("--no-group", action="store_true", help="do not consider GQA group execution")
    p.add_argument("--candidates", help="JSON file with a list of pattern configs (replaces the paper space)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _latency(kind: str, kernel_only: bool = False) -> Any:
    if kind == "cost_model" or (kind == "auto" and not torch.cuda.is_available()):
        if kernel_only:
            return CostModel(name="cost_model_kernel_only", estimation_ms_at_128k={})
        return CostModel()
    try:
        import mmi_kernels  # noqa: F401
    except ImportError as e:
        if kind == "kernels":
            raise CaptureError(f"--latency kernels needs mmi-kernels: {e}") from e
        return CostModel()
    return KernelTimer()


def _space(args: argparse.Namespace, n_tokens: int) -> SearchSpace:
    gqa = ("head",) if args.no_group else ("head", "group")
    boundaries = tuple(b.strip() for b in args.boundaries.split(",") if b.strip())
    if args.candidates:
        try:
            data = json.loads(Path(args.candidates).read_text())
            return SearchSpace.model_validate({"candidates": data, "gqa": gqa, "boundaries": boundaries})
        except (OSError, ValueError) as e:
            raise ConfigError(f"--candidates {args.candidates}: {e}") from None
    scale = min(1.0, n_tokens / PAPER_CALIBRATION_TOKENS) if args.token_scale == "auto" else float(args.token_scale)
    paper = paper_search_space(args.block, token_scale=scale, last_q=min(64, max(16, n_tokens // 16)), gqa=gqa)
    return SearchSpace(candidates=paper.candidates, boundaries=boundaries, gqa=gqa)


def run_search(args: argparse.Namespace) -> HeadConfigs:
    """Everything `main` does, raising CaptureError / AdapterError / ConfigError / ValueError on bad input."""
    out: Path = args.out
    if not args.model.is_dir() or not (args.model / "config.json").is_file():
        raise CaptureError(f"model path {args.model} is not a checkpoint directory (no config.json)")
    if args.synthetic is None and args.video is None and not args.prompt.strip():
        raise CaptureError("give a calibration input: --video FILE, --prompt TEXT, or --synthetic TOKENS")
    if args.video is not None and not args.video.is_file():
        raise CaptureError(f"video file {args.video} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers").mkdir(exist_ok=True)
    cap = out / "capture"

    if args.synthetic is not None:
        from transformers import AutoConfig

        from mmi_models.adapter import adapter_for

        geometry = adapter_for(AutoConfig.from_pretrained(args.model)).geometry()
        model_name, calibration = (
            args.model.name,
            f"synthetic video workload, ~{args.synthetic} tokens, seed {args.seed}",
        )

        planted: dict[int, list[str]] = {}

        def layer_inputs(i: int) -> CapturedLayer:
            w = synthetic_workload(
                args.seed + i,
                num_tokens=args.synthetic,
                num_q_heads=geometry.num_q_heads,
                num_kv_heads=geometry.num_kv_heads,
                head_dim=max(geometry.head_dim, 32),
            )
            planted[i] = list(w.head_kinds)
            return CapturedLayer(i, w.q, w.k, w.v, w.layout, None)
    else:
        loaded = load_model(args.model)
        geometry, model_name = loaded.geometry, f"{loaded.architecture} ({args.model.name})"
        calibration = f"video {args.video.name if args.video else None}, prompt {args.prompt!r}"
        if not (cap / "layout.json").is_file():
            capture_layers(loaded, calibration_inputs(loaded, args.video, args.prompt), cap)
        del loaded

        planted = {}

        def layer_inputs(i: int) -> CapturedLayer:
            return load_captured(cap, i)

    n_layers = geometry.num_layers if args.layers is None else min(args.layers, geometry.num_layers)
    first = layer_inputs(0)
    calibration += (
        f"; {first.layout.num_tokens} tokens ({', '.join(m.name.lower() for m in first.layout.modalities())})"
    )
    space = _space(args, first.layout.num_tokens)
    latency = _latency(args.latency, args.kernel_only)
    run_info = {
        "space": space.describe(),
        "latency": latency.describe(),
        "target": args.target,
        "band": args.band,
        "rows": args.rows,
        "calibration": calibration,
    }
    info_path = out / "layers" / "run.json"
    if info_path.is_file() and json.loads(info_path.read_text()) != json.loads(json.dumps(run_info)):
        raise ConfigError(f"{out}/layers holds checkpoints of a run with other settings; use another --out")
    info_path.write_text(json.dumps(run_info, indent=1))

    from tqdm import tqdm

    hq = geometry.num_q_heads
    results: list[LayerSearchResult] = []
    bar = tqdm(
        total=n_layers * hq,
        desc="mmi-search",
        disable=args.no_progress,
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {n:.1f}/{total} heads [{elapsed}<{remaining}{postfix}]",
    )
    for i in range(n_layers):
        ckpt = out / "layers" / f"layer_{i:03d}.json"
        if ckpt.is_file():
            results.append(LayerSearchResult.model_validate_json(ckpt.read_text()))
            bar.n = (i + 1) * hq
            bar.refresh()
            continue
        li = first if i == 0 else layer_inputs(i)
        done = [0.0]

        def progress(c: int, total: int, done: list[float] = done) -> None:
            step = hq * c / total - done[0]
            done[0] += step
            bar.update(step)

        bar.set_postfix_str(f"layer {i}")
        r = search_layer(
            li.q,
            li.k,
            li.v,
            li.layout,
            space,
            layer=i,
            latency=latency,
            target_fraction=args.target,
            band=args.band,
            num_rows=args.rows,
            scale=li.scale,
            seed=args.seed,
            on_candidate=progress,
        )
        bar.n = (i + 1) * hq  # exact after the fractional per-candidate steps
        bar.refresh()
        ckpt.write_text(r.model_dump_json())
        results.append(r)
    bar.close()

    meta = {
        "model": model_name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "calibration": calibration,
        "tool": "mmi-search",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "layers_searched": n_layers,
    }
    if planted:
        meta["synthetic_planted_head_kinds"] = {str(i): kinds for i, kinds in sorted(planted.items())}
    if n_layers < geometry.num_layers:  # unsearched layers stay dense, and the file says so
        meta["unsearched_layers_dense"] = list(range(n_layers, geometry.num_layers))
    hc = assemble_head_configs(results, hq, geometry.num_kv_heads, space=space, latency=latency, metadata=meta)
    if n_layers < geometry.num_layers:
        pad = LayerConfig(heads=[HeadSpec()] * hq, gqa=["head"] * geometry.num_kv_heads)
        hc = HeadConfigs(
            num_layers=geometry.num_layers,
            num_q_heads=hq,
            num_kv_heads=geometry.num_kv_heads,
            layers=[*hc.layers, *[pad] * (geometry.num_layers - n_layers)],
            metadata=hc.metadata,
        )
    hc.save(out / "head_configs.json")

    from mmi_models.search_report import write_attention_maps, write_csv, write_heatmap

    write_csv(results, out / "search.csv", geometry.num_q_heads // geometry.num_kv_heads)
    write_heatmap(results, out / "patterns.png", title=f"{model_name}: chosen pattern per head")
    write_attention_maps(first.q, first.k, first.layout, hc, 0, out / "attention_maps.png", scale=first.scale)
    return hc


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        hc = run_search(args)
    except (CaptureError, AdapterError, ConfigError, ValueError) as e:
        raise SystemExit(f"mmi-search: error: {e}") from None
    s = hc.metadata["search"]
    print(
        f"wrote {args.out / 'head_configs.json'} ({hc.num_layers} layers x {hc.num_q_heads} heads; latency "
        f"{s['latency_fraction_of_dense']:.3f} of dense by {s['latency_source']['name']}; "
        f"seconds per layer {s['seconds_per_layer']})"
    )


if __name__ == "__main__":
    main()
