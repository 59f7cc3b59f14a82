"""``mmi-search``: search per-head MMInference configs for a transformers VLM on a calibration input.

    mmi-search MODEL_DIR --video clip.mp4 --prompt "describe the video" --out search_out/

Steps: load the checkpoint and its processor; capture every language layer's q/k/v in one forward
(`mmi_models.capture`, written to ``OUT/capture/``; ``--synthetic N`` uses a synthetic workload of the model's
geometry instead); then per layer `mmi_core.search_layer` (one JSON checkpoint per layer in ``OUT/layers/``: a killed
run resumes where it stopped); then ``OUT/head_configs.json`` (`HeadConfigs`, loadable by every consumer) and the
report: ``OUT/patterns.png`` (chosen pattern per layer × head), ``OUT/search.csv``, ``OUT/attention_maps.png``.

Calibration without a video decoder: ``--synthetic-video FxRxC`` feeds random pixel patches of an F-frame R×C-token
video through the model (Qwen2-VL family configs; `mmi_models.capture.synthetic_video_inputs`).

Latency: ``--latency auto`` runs every candidate through the real kernels (`KernelTimer`: mmi-kernels'
`SparsePrefillWrapper`, timed with CUDA events; errors from the keep sets the kernel executes) when CUDA is available,
else the documented CPU cost model (`mmi_core.latency.CostModel`) with mmi-core's reference evaluation;
``--latency kernels --device cpu`` runs the kernel path on the CPU under ``TRITON_INTERPRET=1`` (tiny inputs only).
The output metadata says which.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmi_core import (
    ConfigError,
    CostModel,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    LayerEvaluation,
    LayerSearchResult,
    ReferenceEvaluator,
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
    LoadedModel,
    calibration_inputs,
    capture_layers,
    load_captured,
    load_model,
    synthetic_video_inputs,
)

__all__ = ["KernelTimer", "main", "run_search"]

#: calibration length the paper's budgets are meant for (its ~25K-token sample); ``--token-scale auto`` = N / this
PAPER_CALIBRATION_TOKENS = 25_000


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KernelTimer:
    """Real-kernel evaluation of search candidates (a `mmi_core.LayerEvaluator`).

    Latency: the candidate layer runs through mmi-kernels' `SparsePrefillWrapper` as at inference (planned once;
    each timed run = GPU estimation + index build + the Triton sparse kernel; an all-dense layer = PyTorch SDPA):
    ``warmup`` untimed runs, then the median of ``reps`` — CUDA events on a GPU; wall clock on the CPU, where the
    kernel runs under ``TRITON_INTERPRET=1`` (a correctness path, its times mean nothing). The layer time is split
    over heads in proportion to `CostModel.priced_ms` of each head's computed tiles and columns in the same index
    (the kernels time a layer, not a head).

    Output and recall: from the keep sets the kernel executes (`estimate_layer_keeps` -> `index_from_keeps`,
    public mmi-kernels API), expanded to bool ``[rows, n_k]`` on the sampled rows and applied in fp32 with the
    reference semantics, so the errors are comparable with a CPU search's (and equal on CPU, where estimation runs
    in fp32). Memory beyond the inputs: the index and ``rows × n_k`` masks/scores per head.

    A RuntimeError of the kernel path (out of memory, a kernel that does not compile) is raised as ValueError, so
    the search skips that candidate and lists it with the reason (``skipped`` in the layer result).

    ``device``: default CUDA when available, else CPU; ``warmup``: default 1 on CUDA, 0 on CPU. Raises RuntimeError
    without mmi-kernels, for CUDA without a GPU, or for the CPU without ``TRITON_INTERPRET=1`` (it must be set
    before Triton is imported).
    """

    name = "kernels_timed"

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        reps: int = 5,
        warmup: int | None = None,
        dtype: torch.dtype | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        dev = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("KernelTimer on CUDA: no GPU is available")
        if dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "KernelTimer on the CPU runs the Triton kernel under the interpreter: set TRITON_INTERPRET=1 before "
                "Python starts (or use the cost model)"
            )
        try:  # after the checks: importing Triton's kernels without the interpreter would fix them as JIT for good
            import mmi_kernels  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"KernelTimer needs mmi-kernels: {e}") from e
        warmup = (1 if dev.type == "cuda" else 0) if warmup is None else warmup
        if reps < 1 or warmup < 0:
            raise ValueError(f"reps must be >= 1 and warmup >= 0, got {reps}, {warmup}")
        self.device, self.reps, self.warmup = dev, reps, warmup
        self.dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        self.cost = cost_model or CostModel()
        self._src: tuple[torch.Tensor, ...] = ()
        self._cast: tuple[torch.Tensor, ...] = ()

    def _inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(q, k, v in the kernel dtype, q, k, v in fp32) on the device; cached for the layer in flight."""
        if len(self._src) != 3 or any(a is not b for a, b in zip(self._src, (q, k, v), strict=True)):
            f32 = tuple(t.to(self.device, torch.float32) for t in (q, k, v))
            self._src = (q, k, v)
            self._cast = (*(t.to(self.dtype) for t in f32), *f32)
        return self._cast

    def _time_ms(self, fn: Any) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.reps):
            if self.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def _index(self, qd: torch.Tensor, kd: torch.Tensor, layout: Any, hc: HeadConfigs, layer: int, scale: Any) -> Any:
        """The layer's `SparseIndex` (one request), or None when every head is dense."""
        from mmi_kernels import LayoutTensors, estimate_layer_keeps, index_from_keeps, layer_slots

        blocks = {h.block for h in hc.layers[layer].heads} - {None}
        if not blocks:
            return None
        keeps = estimate_layer_keeps(qd, kd, LayoutTensors(layout, self.device), hc, layer, scale=scale)
        return index_from_keeps(
            [keeps],
            block=blocks.pop(),
            num_q_heads=hc.num_q_heads,
            num_kv_heads=hc.num_kv_heads,
            slot_heads=layer_slots(hc, layer),
            device=self.device,
        )

    def _head_masks(self, index: Any, hq: int, n_q: int, n_k: int, rows: torch.Tensor) -> list[torch.Tensor]:
        if index is None:
            r = rows.to(self.device, torch.int64)
            causal = torch.arange(n_k, device=self.device)[None, :] <= (r + n_k - n_q)[:, None]
            return [causal] * hq
        import mmi_kernels  # imported lazily: see __init__

        masks: list[torch.Tensor] = [torch.empty(0)] * hq
        for s in range(index.num_slots):
            m = mmi_kernels.index_keep_mask(index, 0, s, rows)
            first, count = int(index.slot_q_head[s]), int(index.slot_num_heads[s])
            for h in range(first, first + count):
                masks[h] = m
        return masks

    def row_keep_masks(self, q, k, layout, head_configs, rows, *, layer=0, scale=None) -> list[torch.Tensor]:
        qd, kd = (t.to(self.device, self.dtype) for t in (q, k))
        index = self._index(qd, kd, layout, head_configs, layer, scale)
        return self._head_masks(index, q.shape[1], q.shape[0], k.shape[0], rows)

    def evaluate(self, q, k, v, layout, head_configs, rows, *, scale=None) -> LayerEvaluation:
        from mmi_kernels import SparsePrefillWrapper

        qd, kd, vd, q32, k32, v32 = self._inputs(q, k, v)
        n_q, hq, d = q.shape
        n_k, hkv = k.shape[0], k.shape[1]
        g = hq // hkv
        w = SparsePrefillWrapper(head_configs, min_tokens=0, sparse_text_only=True)
        w.plan([layout], q_lens=[n_q], device=self.device)  # once per batch at inference: not timed
        try:
            total = self._time_ms(lambda: w.run(qd, kd, vd, 0, scale=scale))
            index = self._index(qd, kd, layout, head_configs, 0, scale)
        except RuntimeError as e:  # e.g. out of memory, a kernel that does not compile: the search skips it
            raise ValueError(f"kernel path failed: {type(e).__name__}: {str(e)[:300]}") from e
        masks = self._head_masks(index, hq, n_q, n_k, rows)
        sc = 1.0 / math.sqrt(d) if scale is None else scale
        r = rows.to(self.device, torch.int64)
        causal = torch.arange(n_k, device=self.device)[None, :] <= (r + n_k - n_q)[:, None]
        out = torch.empty(r.numel(), hq, d, device=self.device)
        recall = torch.empty(hq)
        for h in range(hq):
            s = (q32[r, h] @ k32[:, h // g].T) * sc
            p = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)
            recall[h] = (p * masks[h]).sum(-1).mean().cpu()
            out[:, h] = torch.softmax(s.masked_fill(~masks[h], float("-inf")), -1) @ v32[:, h // g]
        heads = head_configs.layers[0].heads
        if index is None:
            share = [1.0] * hq
        else:
            share = [0.0] * hq
            tiles = (index.block_prefix + index.block_count).sum(1).tolist()
            cols = index.column_count.sum(1).tolist()
            for s_ in range(index.num_slots):
                first, count = int(index.slot_q_head[s_]), int(index.slot_num_heads[s_])
                for h in range(first, first + count):  # every head of a slot computes all of the slot's tiles
                    share[h] = self.cost.priced_ms(heads[h].pattern, index.block, tiles[s_], cols[s_], n_q, n_k, d)
        return LayerEvaluation(out, recall, [total * x / max(sum(share), 1e-30) for x in share])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu (interpreter)",
            "kernel_dtype": str(self.dtype).removeprefix("torch."),
            "reps": self.reps,
            "warmup": self.warmup,
            "timed": "SparsePrefillWrapper.run (estimation + index + sparse kernel; dense: SDPA), median",
            "per_head_split": "layer time split by CostModel.priced_ms shares of each head's tiles and columns",
            "torch": torch.__version__,
            "triton": _version("triton"),
        }


def _version(pkg: str) -> str:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:  # not installed / no metadata
        return "unknown"


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
    p.add_argument(
        "--synthetic-video",
        metavar="FxRxC",
        help="calibrate on a synthetic video through the model (Qwen2-VL family): F merged frames of R x C tokens, "
        "random pixels, built from the config (no processor, no video decoding)",
    )
    p.add_argument(
        "--latency",
        choices=["auto", "cost_model", "kernels"],
        default="auto",
        help="kernels: real kernels timed (KernelTimer; on CPU needs TRITON_INTERPRET=1); auto: kernels on CUDA",
    )
    p.add_argument("--device", help="device of the kernel evaluation (default: cuda when available, else cpu)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per candidate (median) with --latency kernels")
    p.add_argument(
        "--kernel-only",
        action="store_true",
        help="cost model without estimation overhead (short calibration inputs, where the fixed "
        "per-head estimation cost would dominate every choice)",
    )
    p.add_argument(
        "--boundaries",
        default="none",
        help="comma-separated boundary kinds to search: none, k, q, 2d (the per-pair stage)",
    )
    p.add_argument("--no-group", action="store_true", help="do not consider GQA group execution")
    p.add_argument("--candidates", help="JSON file with a list of pattern configs (replaces the paper space)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _latency(args: argparse.Namespace) -> CostModel | KernelTimer:
    """The latency source: `CostModel` (optionally without estimation) or `KernelTimer`."""
    kind = args.latency
    if kind == "cost_model" or (kind == "auto" and not torch.cuda.is_available()):
        if args.kernel_only:
            return CostModel(name="cost_model_kernel_only", estimation_ms_at_128k={})
        return CostModel()
    try:
        return KernelTimer(args.device, reps=args.reps)
    except RuntimeError as e:
        if kind == "kernels":
            raise CaptureError(f"--latency kernels: {e}") from e
        return CostModel()


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


def run_search(
    args: argparse.Namespace,
    *,
    loaded: LoadedModel | None = None,
    on_layer: Callable[[LayerSearchResult], None] | None = None,
) -> HeadConfigs:
    """Everything `main` does, raising CaptureError / AdapterError / ConfigError / ValueError on bad input.
    ``loaded``: an already built model (e.g. a random-init one, `tools/search_gpu.py`) instead of ``args.model``;
    ``on_layer(result)`` is called after each layer (checkpointed ones included)."""
    out: Path = args.out
    if loaded is None and (not args.model.is_dir() or not (args.model / "config.json").is_file()):
        raise CaptureError(f"model path {args.model} is not a checkpoint directory (no config.json)")
    synthetic_video = _grid(args.synthetic_video) if args.synthetic_video else None
    if args.synthetic is None and synthetic_video is None and args.video is None and not args.prompt.strip():
        raise CaptureError(
            "give a calibration input: --video FILE, --prompt TEXT, --synthetic-video FxRxC or --synthetic TOKENS"
        )
    if args.video is not None and not args.video.is_file():
        raise CaptureError(f"video file {args.video} does not exist")
    latency = _latency(args)
    device = latency.device if isinstance(latency, KernelTimer) else torch.device("cpu")
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers").mkdir(exist_ok=True)
    cap = out / "capture"

    if args.synthetic is not None:
        from transformers import AutoConfig

        from mmi_models.adapter import adapter_for

        geometry = loaded.geometry if loaded else adapter_for(AutoConfig.from_pretrained(args.model)).geometry()
        model_name, calibration = (
            (loaded.path.name if loaded else args.model.name),
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
        if loaded is None:
            loaded = load_model(args.model)
        geometry, model_name = loaded.geometry, f"{loaded.architecture} ({loaded.path.name})"
        if synthetic_video is not None:
            f, r, c = synthetic_video
            calibration = f"synthetic video {f}x{r}x{c} (random pixels, seed {args.seed}) in random text"
        else:
            calibration = f"video {args.video.name if args.video else None}, prompt {args.prompt!r}"
        if not (cap / "layout.json").is_file():
            if synthetic_video is not None:
                dtype = next(loaded.model.parameters()).dtype
                inputs = synthetic_video_inputs(loaded.model.config, *synthetic_video, seed=args.seed, dtype=dtype)
            else:
                inputs = calibration_inputs(loaded, args.video, args.prompt)
            t0 = time.perf_counter()
            capture_layers(loaded, inputs, cap)
            (cap / "capture_seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
            del inputs
        loaded = None

        planted = {}

        def layer_inputs(i: int) -> CapturedLayer:
            return load_captured(cap, i)

    def on_device(li: CapturedLayer) -> CapturedLayer:
        return CapturedLayer(li.layer, li.q.to(device), li.k.to(device), li.v.to(device), li.layout, li.scale)

    n_layers = geometry.num_layers if args.layers is None else min(args.layers, geometry.num_layers)
    first = on_device(layer_inputs(0))
    calibration += (
        f"; {first.layout.num_tokens} tokens ({', '.join(m.name.lower() for m in first.layout.modalities())})"
    )
    space = _space(args, first.layout.num_tokens)
    run_info = {
        "space": space.describe(),
        "latency": latency.describe(),
        "target": args.target,
        "band": args.band,
        "rows": args.rows,
        "calibration": calibration,
    }
    info_path = out / "layers" / "run.json"
    if info_path.is_file() and _settings(json.loads(info_path.read_text())) != _settings(
        json.loads(json.dumps(run_info))
    ):
        raise ConfigError(f"{out}/layers holds checkpoints of a run with other settings; use another --out")
    info_path.write_text(json.dumps(run_info, indent=1))

    from tqdm import tqdm

    hq = geometry.num_q_heads
    evaluator = latency if isinstance(latency, KernelTimer) else ReferenceEvaluator(latency)
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
            if on_layer is not None:
                on_layer(results[-1])
            continue
        li = first if i == 0 else on_device(layer_inputs(i))
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
            evaluator=evaluator,
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
        del li
        if on_layer is not None:
            on_layer(r)
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
    write_attention_maps(
        first.q, first.k, first.layout, hc, 0, out / "attention_maps.png", scale=first.scale, evaluator=evaluator
    )
    return hc


def _settings(info: dict[str, Any]) -> dict[str, Any]:
    """What must match for a resume: the run info without measured facts of the latency source (its device name,
    versions)."""
    lat = info.get("latency", {})
    return {**info, "latency": {k: lat.get(k) for k in ("name", "reps", "kernel_dtype", "rates_tflops")}}


def _grid(text: str) -> tuple[int, int, int]:
    """``"FxRxC"`` -> (frames, rows, cols). Raises CaptureError for anything else."""
    try:
        f, r, c = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise CaptureError(f"--synthetic-video wants FRAMESxROWSxCOLS (e.g. 64x16x32), got {text!r}") from None
    if min(f, r, c) < 1:
        raise CaptureError(f"--synthetic-video grid must be positive, got {text!r}")
    return f, r, c


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
