"""GPU evidence for issue #9: `mmi-search` with the real-kernel latency source on a random-init Qwen2.5-VL with the
**7B language-model attention geometry** and a long synthetic video; seconds per layer and the 28-layer extrapolation.

Exact command (one GPU, from the repository root; needs torch, triton, transformers, pydantic, matplotlib, tqdm;
no sglang, no flashinfer, no PyAV, no weights, no internet):

    PYTHONPATH=packages/mmi-core/src:packages/mmi-kernels/src:packages/mmi-models/src \\
        python3 tools/search_gpu.py --out $OUT --layers 3 --tokens 131072

What it does:

1. builds a random-init ``Qwen2_5_VLForConditionalGeneration`` (``tools/hf_prefill_bench.build_model``): ``--layers``
   decoder layers of hidden 3584, 28 q / 4 kv heads, head_dim 128 (the 7B attention), MLP cut to ``--mlp`` (default
   4864; 18944 in the real model: the MLP does not enter the search), a one-block vision tower, a 32K vocabulary; bf16;
2. feeds a synthetic video (`mmi_models.capture.synthetic_video_inputs`: random pixel patches, ``--rows`` × ``--cols``
   tokens per merged frame, as many frames as fit ``--tokens``, wrapped in 150 random text tokens) through one
   forward that captures every layer's q/k/v (``OUT/capture/``, ~1.2 GB per layer at 128K tokens);
3. runs `mmi_models.search_cli.run_search` over the paper's search space (`mmi_core.paper_search_space`, 29
   candidates at ``--block``) with ``--latency kernels``: every candidate layer runs through mmi-kernels'
   `SparsePrefillWrapper` (GPU estimation + index + Triton sparse kernel), timed with CUDA events (median of
   ``--reps`` after a warm-up); errors and recall on ``--sample-rows`` rows from the keep sets the kernel executes;
4. writes ``OUT/search_gpu.json`` after every layer (device, versions, tokens, per-layer search seconds, capture
   seconds, peak GPU memory, the 28-layer extrapolation ``28 × mean seconds per layer + capture``) and, at the end,
   ``OUT/head_configs.json``, ``OUT/patterns.png``, ``OUT/search.csv``, ``OUT/attention_maps.png``.

Resumable: per-layer checkpoints in ``OUT/layers/`` and the capture in ``OUT/capture/`` are reused by a rerun with
the same ``--out`` (the model is rebuilt, the forward is not rerun).

Random weights carry no attention structure: the chosen patterns say nothing about Qwen2.5-VL-7B; the time per layer
(estimation, index, kernels, error evaluation for 29 candidates × 28 heads) is what this measures.

CPU dry run (``--tiny``: hidden 128, 4 q / 2 kv heads, 2 layers, 4 frames of 4 × 8 tokens = 280 tokens, block 16):

    .venv/bin/python tools/search_gpu.py --out /tmp/search_gpu_dry --tiny                    # cost model, seconds
    TRITON_INTERPRET=1 .venv/bin/python tools/search_gpu.py --out /tmp/sg --tiny --latency kernels  # the kernel path
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

TOOLS = Path(__file__).resolve().parent
TEXT_TOKENS = 152  # 100 text + <vision_start> + <vision_end> + 50 text (synthetic_video_inputs defaults)
FULL_LAYERS = 28  # Qwen2.5-VL-7B's decoder layers: the extrapolation target


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=3, help="decoder layers built and searched (2-3)")
    ap.add_argument("--tokens", type=int, default=131072, help="target prompt length (frames = what fits)")
    ap.add_argument("--rows", type=int, default=16, help="tokens per merged frame row")
    ap.add_argument("--cols", type=int, default=32, help="tokens per merged frame column")
    ap.add_argument("--block", type=int, default=64, help="block size of every candidate")
    ap.add_argument("--sample-rows", type=int, default=256, help="query rows sampled for the errors")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per candidate (median)")
    ap.add_argument("--target", type=float, default=0.2)
    ap.add_argument("--band", type=float, default=0.1)
    ap.add_argument("--mlp", type=int, default=4864, help="MLP width of the random model (18944 in the real 7B)")
    ap.add_argument("--latency", choices=["kernels", "cost_model"], default=None, help="default: kernels on CUDA")
    ap.add_argument("--candidates", help="JSON list of pattern configs instead of the paper space")
    ap.add_argument("--tiny", action="store_true", help="CPU dry-run geometry (see the module docstring)")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    sys.path.insert(0, str(TOOLS))
    from hf_prefill_bench import build_model
    from mmi_models.adapter import adapter_for
    from mmi_models.capture import LoadedModel
    from mmi_models.search_cli import _parser, run_search

    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if a.tiny:
        hidden, heads, kv, mlp, rows, cols, block, frames = 128, 4, 2, 256, 4, 8, 16, 4
        layers = min(a.layers, 2)
    else:
        hidden, heads, kv, mlp, rows, cols, block = 3584, 28, 4, a.mlp, a.rows, a.cols, a.block
        frames, layers = max(1, (a.tokens - TEXT_TOKENS) // (rows * cols)), a.layers
    latency = a.latency or ("kernels" if cuda else "cost_model")
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, _ids = build_model(layers, hidden, heads, kv, mlp, dev, dtype)
    build_s = time.perf_counter() - t0
    geometry = adapter_for(model).geometry()
    name = f"qwen2.5-vl-random-init_h{hidden}_q{heads}_kv{kv}_L{layers}"
    loaded = LoadedModel(model, None, Path(name), geometry, "Qwen2_5_VLForConditionalGeneration")

    cli = [
        str(out / name),  # not read: the model is passed in
        "--out",
        str(out),
        "--synthetic-video",
        f"{frames}x{rows}x{cols}",
        "--latency",
        latency,
        "--block",
        str(block),
        "--rows",
        str(64 if a.tiny else a.sample_rows),
        "--reps",
        str(a.reps),
        "--target",
        str(a.target),
        "--band",
        str(a.band),
        *(["--candidates", a.candidates] if a.candidates else []),
        *(["--no-progress"] if a.no_progress else []),
    ]
    args = _parser().parse_args(cli)
    import transformers
    import triton

    rec: dict[str, Any] = {
        "what": "mmi-search wall time per layer, real-kernel latency source (issue #9 GPU evidence)",
        "command": " ".join(["python3", "tools/search_gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "transformers": transformers.__version__,
        },
        "model": f"random-init Qwen2.5-VL: {layers} decoder layers of hidden {hidden}, {heads} q / {kv} kv heads, "
        f"head_dim {hidden // heads}, MLP {mlp}; 1-block vision tower; vocab 32000; {str(dtype)[6:]}",
        "video": {"frames": frames, "tokens_per_frame": rows * cols, "video_tokens": frames * rows * cols},
        "prompt_tokens": frames * rows * cols + TEXT_TOKENS,
        "latency_source": latency,
        "block": block,
        "model_build_seconds": round(build_s, 3),
        "layers": [],
    }
    path = out / "search_gpu.json"

    def write(final: bool = False) -> None:
        secs = [r["search_seconds"] for r in rec["layers"]]
        cap = out / "capture" / "capture_seconds.json"
        rec["capture_seconds"] = json.loads(cap.read_text())["seconds"] if cap.is_file() else None
        if cuda:
            rec["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if secs:
            per = sum(secs) / len(secs)
            rec["seconds_per_layer_mean"] = round(per, 3)
            rec[f"extrapolated_{FULL_LAYERS}_layers_search_seconds"] = round(FULL_LAYERS * per, 1)
            rec[f"extrapolated_{FULL_LAYERS}_layers_total_seconds"] = round(
                FULL_LAYERS * per + (rec["capture_seconds"] or 0.0) * FULL_LAYERS / layers, 1
            )
            if len(secs) > 1:  # the first layer pays Triton's compilation
                rest = sum(secs[1:]) / (len(secs) - 1)
                rec["seconds_per_layer_after_first"] = round(rest, 3)
                rec[f"extrapolated_{FULL_LAYERS}_layers_search_seconds_from_later_layers"] = round(
                    secs[0] + (FULL_LAYERS - 1) * rest, 1
                )
            rec["extrapolation"] = (
                f"{FULL_LAYERS} x mean search seconds per layer (+ the capture forward scaled by "
                f"{FULL_LAYERS}/{layers}); the first layer includes Triton compilation"
            )
        rec["complete"] = final
        path.write_text(json.dumps(rec, indent=1))

    def on_layer(r: Any) -> None:
        rec["layers"] = [x for x in rec["layers"] if x["layer"] != r.layer]
        rec["layers"].append(
            {
                "layer": r.layer,
                "search_seconds": round(r.seconds, 3),
                "chosen": [c.label for c in r.heads],
                "latency_fraction_of_dense": round(
                    sum(c.latency_ms for c in r.heads) / max(sum(c.dense_latency_ms for c in r.heads), 1e-30), 4
                ),
                "skipped_candidates": sorted(r.skipped),
            }
        )
        write()
        print(f"layer {r.layer}: {r.seconds:.1f} s", flush=True)

    t0 = time.perf_counter()
    hc = run_search(args, loaded=loaded, on_layer=on_layer)
    rec["run_search_seconds"] = round(time.perf_counter() - t0, 3)
    rec["head_configs"] = str(out / "head_configs.json")
    rec["latency_fraction_of_dense"] = hc.metadata["search"]["latency_fraction_of_dense"]
    write(final=True)
    print(json.dumps(rec, indent=1))
    return rec


if __name__ == "__main__":
    main()
