"""CLI: generate a V-NIAH / MM-NIAH grid (lengths x depths), ask a model, score, write results and the heat map.

    python -m mmi_models.niah --out DIR --endpoint http://127.0.0.1:30000 --model NAME [--video-url file]
    python -m mmi_models.niah --out DIR --hf PATH_OR_ID [--mmi]   # transformers, optionally with MMInference

Writes DIR/samples/*.mp4, DIR/results.jsonl (resumable), DIR/summary.json and DIR/heatmap.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from mmi_models.niah.generators import NEEDLE_COLORS, make_mm_niah, make_v_niah
from mmi_models.niah.runner import HFAnswerer, OpenAIChatAnswerer, heatmap_png, run_niah
from mmi_models.niah.scorer import summarize


def samples(args: argparse.Namespace, folder: Path) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    colors = list(NEEDLE_COLORS)
    out = []
    for i, length in enumerate(args.lengths):
        for j, depth in enumerate(args.depths):
            color = colors[(i * len(args.depths) + j) % len(colors)]
            kw = dict(depth=depth, color=color, height=args.size, width=args.size, seed=i * 100 + j)
            if "v_niah" in args.tasks:
                out.append(make_v_niah(folder, frames=length, **kw))
            if "mm_niah" in args.tasks:
                # three parts in four are clips: about `length` video frames in all
                segments = max(4, -(-4 * length // (3 * args.frames_per_clip)))
                for where in ("text", "video"):
                    out.append(
                        make_mm_niah(
                            folder, segments=segments, needle_in=where, frames_per_clip=args.frames_per_clip, **kw
                        )
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--endpoint", help="base URL of an OpenAI-compatible server")
    ap.add_argument("--model", default="default", help="model name sent to the endpoint")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--video-url", choices=["data", "file"], default="data")
    ap.add_argument("--hf", help="transformers model path or id (instead of --endpoint)")
    ap.add_argument("--mmi", action="store_true", help="with --hf: apply_mminference (family default configs)")
    ap.add_argument("--tasks", nargs="+", default=["v_niah", "mm_niah"], choices=["v_niah", "mm_niah"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="video frames per haystack")
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--frames-per-clip", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="frame height and width (even)")
    args = ap.parse_args(argv)
    if bool(args.endpoint) == bool(args.hf):
        ap.error("give exactly one of --endpoint and --hf")
    if args.endpoint:
        answer = OpenAIChatAnswerer(args.endpoint, args.model, api_key=args.api_key, video_url=args.video_url)
        what = f"endpoint {args.endpoint} model {args.model}"
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(args.hf)
        import torch

        model = AutoModelForImageTextToText.from_pretrained(args.hf, dtype="auto").eval()
        if torch.cuda.is_available():  # no device_map: it needs `accelerate`, not a dependency here
            model = model.to("cuda")
        if args.mmi:
            from mmi_models import apply_mminference

            apply_mminference(model)
        answer = HFAnswerer(model, processor)
        what = f"transformers {args.hf}" + (" + MMInference" if args.mmi else "")
    results = run_niah(samples(args, args.out / "samples"), answer, args.out)
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cells = summarize(results)
    (args.out / "summary.json").write_text(json.dumps({"what": what, "date": date, "cells": cells}, indent=1))
    heatmap_png(results, args.out / "heatmap.png", title=f"NIAH accuracy: {what}, {date}")
    for c in cells:
        print(c)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
