"""GPU evidence for the transformers path (issue #8): prefill of a long video prompt through `generate`, dense vs mmi.

A random-init Qwen2.5-VL built here with the **real 7B language-model attention geometry** (hidden 3584, 28 q / 4 kv
heads, head_dim 128, MLP 18944) but only ``--layers`` decoder layers, a one-block vision tower (its output width
3584) and a 32K vocabulary: the attention work per layer is the real model's, the rest is scaled down and said so.
Inputs are built directly (no video decoding on the GPU machine): random ``pixel_values_videos`` with a
``video_grid_thw`` that yields ``--frames`` merged frames of ``--rows x --cols`` tokens, wrapped in text. Each
variant runs ``generate(max_new_tokens=1)`` (prefill + one token) after a warm-up; CUDA-synchronised wall time,
median of ``--reps``. Variants: dense (the model's SDPA attention), mmi (``apply_mminference`` with uniform Grid
heads, block 128), mmi-default (the Qwen2.5-VL family default policy).

Usage: python3 tools/hf_prefill_bench.py --out DIR [--frames 128 --rows 16 --cols 32] [--layers 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch


def build_model(layers: int, hidden: int, heads: int, kv: int, inter: int, dev: str, dtype: torch.dtype):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    half = hidden // heads // 2  # M-RoPE sections (t, h, w) over half the head dim: 16/24/24 at head_dim 128
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    ids = {"video": 31000, "image": 31001, "vstart": 31002, "vend": 31003, "eos": 31004}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=32000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=1 << 21,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
            tie_word_embeddings=False, eos_token_id=ids["eos"], pad_token_id=ids["eos"],
        ),
        vision_config=dict(depth=1, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=hidden,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vstart"],
        vision_end_token_id=ids["vend"], tie_word_embeddings=False,
    )  # fmt: skip
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(dev, dtype).eval()
    return model, ids


def build_inputs(ids: dict, frames: int, rows: int, cols: int, dev: str, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(1)
    t, h, w = frames, rows * 2, cols * 2  # grid_thw in patches: 2x2 spatial merge; t = merged frames
    n_video = t * rows * cols
    pre = torch.randint(0, 30000, (100,), generator=g)
    post = torch.randint(0, 30000, (50,), generator=g)
    input_ids = torch.cat(
        [pre, torch.tensor([ids["vstart"]]), torch.full((n_video,), ids["video"]), torch.tensor([ids["vend"]]), post]
    )[None].to(dev)
    pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=g).to(dev, dtype)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor([[t, h, w]], device=dev),
    }


def timed_generate(model, inputs: dict, reps: int) -> tuple[float, torch.Tensor]:
    out = None
    times = []
    for i in range(reps + 1):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)  # fmt: skip
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - t0)
    assert out is not None
    return sorted(times)[len(times) // 2], out.logits[0][0].float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--min-tokens", type=int, default=4096)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--geometry", default="3584,28,4,18944", help="hidden,q heads,kv heads,mlp (CPU dry runs)")
    args = ap.parse_args()
    from mmi_core import Grid, HeadConfigs
    from mmi_models import apply_mminference

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    hidden, heads, kv, inter = (int(x) for x in args.geometry.split(","))
    model, ids = build_model(args.layers, hidden, heads, kv, inter, dev, dtype)
    inputs = build_inputs(ids, args.frames, args.rows, args.cols, dev, dtype)
    n = inputs["input_ids"].shape[1]
    import transformers

    rec: dict = {
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "prompt_tokens": n,
        "video_tokens": args.frames * args.rows * args.cols,
        "tokens_per_frame": args.rows * args.cols,
        "model": f"Qwen2.5-VL random init: {args.layers} layers of hidden {hidden}, {heads} q / {kv} kv heads, "
        f"head_dim {hidden // heads}, MLP {inter}; 1-block vision tower; vocab 32000",
        "variants": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "hf_prefill_bench.json"
    s, ref = timed_generate(model, inputs, args.reps)
    rec["variants"]["dense_sdpa"] = {"generate_s": s}
    print(f"{n} tokens: dense {s:.3f} s", flush=True)
    path.write_text(json.dumps(rec, indent=1))
    grid = HeadConfigs.uniform(
        args.layers, heads, kv, Grid(stride="frame", block=args.block), metadata={"bench": "grid"}
    )
    for name, cfg in (("mmi_grid", grid), ("mmi_default_policy", None)):
        handle = apply_mminference(model, cfg, min_tokens=args.min_tokens)
        s, logits = timed_generate(model, inputs, args.reps)
        err = float((logits - ref).norm() / ref.norm())
        rec["variants"][name] = {
            "generate_s": s,
            "speedup_vs_dense": rec["variants"]["dense_sdpa"]["generate_s"] / s,
            "first_token_logits_rel_error_vs_dense": err,
            "stats": handle.stats.as_dict(),
        }
        handle.remove()
        print(f"  {name}: {s:.3f} s, logits rel err {err:.3e}, stats {handle.stats.as_dict()}", flush=True)
        path.write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
