"""Run NIAH samples against a model and draw the depth x length heat map.

Two answerers, both ``callable(sample) -> str``:
- `OpenAIChatAnswerer`: any OpenAI-compatible ``/v1/chat/completions`` endpoint (SGLang with or without mmi, vLLM,
  ...): the sample's parts become content parts in order (``video_url`` with a ``data:video/mp4;base64`` URL or a
  ``file://`` URL for a server on the same machine, and ``text``), then the question. Standard library only.
- `HFAnswerer`: a transformers VLM and its processor (optionally patched with
  `mmi_models.transformers_attention.apply_mminference`): videos decoded with transformers' PyAV loader, the chat
  template applied to the same ordered parts, greedy generation.

`run_niah` scores every sample (`mmi_models.niah.scorer.score_answer`) and writes ``results.jsonl`` as it goes;
`heatmap_png` draws accuracy per (depth, length).
CLI: ``python -m mmi_models.niah --endpoint http://127.0.0.1:30000 --model NAME --out DIR`` (or ``--hf PATH``).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from mmi_models.niah.generators import NiahSample
from mmi_models.niah.scorer import score_answer, summarize

__all__ = ["HFAnswerer", "OpenAIChatAnswerer", "chat_content", "heatmap_png", "run_niah"]

Answerer = Callable[[NiahSample], str]


def chat_content(sample: NiahSample, video_url: Literal["data", "file"] = "data") -> list[dict[str, Any]]:
    """OpenAI chat content parts of ``sample``: its parts in order, then the question (``prompt_text``)."""
    content: list[dict[str, Any]] = []
    for p in sample.parts:
        if p.type == "text":
            content.append({"type": "text", "text": p.text})
        elif video_url == "file":
            content.append({"type": "video_url", "video_url": {"url": Path(p.path).resolve().as_uri()}})
        else:
            b64 = base64.b64encode(Path(p.path).read_bytes()).decode()
            content.append({"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64}"}})
    content.append({"type": "text", "text": sample.prompt_text()})
    return content


class OpenAIChatAnswerer:
    """POST ``{base_url}/v1/chat/completions`` with the sample as one user message; returns the reply's text.

    Raises urllib.error.URLError / HTTPError on transport errors and ValueError on a reply without choices."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_tokens: int = 16,
        timeout_s: float = 600.0,
        video_url: Literal["data", "file"] = "data",
    ) -> None:
        self.url = base_url.rstrip("/") + ("/chat/completions" if base_url.rstrip("/").endswith("/v1") else
                                           "/v1/chat/completions")  # fmt: skip
        self.model, self.api_key, self.max_tokens = model, api_key, max_tokens
        self.timeout_s, self.video_url = timeout_s, video_url

    def __call__(self, sample: NiahSample) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": chat_content(sample, self.video_url)}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            reply = json.loads(resp.read())
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"reply without choices[0].message.content: {str(reply)[:300]}") from e


class HFAnswerer:
    """Greedy answers of a transformers VLM (``model``, ``processor``) to NIAH samples or to OpenAI chat content.

    The content parts go into one user message in order (``{"type": "video"}`` / ``{"type": "text"}``); videos
    (``file://`` or ``data:video/mp4;base64,`` URLs) are decoded with
    ``transformers.video_utils.load_video(..., backend="pyav")``. Patch the model with `apply_mminference`
    beforehand to run it with MMInference. Raises ValueError for other URL schemes or part types."""

    def __init__(self, model: Any, processor: Any, *, max_new_tokens: int = 8) -> None:
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens

    def __call__(self, sample: NiahSample) -> str:
        return self.answer_content(chat_content(sample, "file"))

    def answer_content(self, content: Sequence[dict[str, Any]]) -> str:
        """Greedy reply to one user message of OpenAI content parts (``text`` and ``video_url``)."""
        import tempfile
        import urllib.parse

        import torch
        from transformers.video_utils import load_video

        parts, videos, metas = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i, c in enumerate(content):
                if c.get("type") == "text":
                    parts.append({"type": "text", "text": c["text"]})
                    continue
                if c.get("type") != "video_url":
                    raise ValueError(f"content part {i}: unsupported type {c.get('type')!r}")
                url = c["video_url"]["url"]
                if url.startswith("data:"):
                    path = Path(tmp) / f"part{i}.mp4"
                    path.write_bytes(base64.b64decode(url.split(",", 1)[1]))
                elif url.startswith("file://"):
                    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
                else:
                    raise ValueError(f"content part {i}: only file:// and data: video URLs, got {url[:40]!r}")
                frames, meta = load_video(str(path), backend="pyav")
                videos.append(frames)
                metas.append(meta)
                parts.append({"type": "video"})
        text = self.processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if videos:
            kwargs.update(videos=videos, video_metadata=metas)
        inputs = self.processor(**kwargs).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def run_niah(
    samples: Iterable[NiahSample], answer: Answerer, out_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """Ask every sample, score it, return one result dict per sample (appended to ``out_dir/results.jsonl`` as it
    goes when ``out_dir`` is given; samples whose id is already there are skipped: resumable)."""
    done: dict[str, dict[str, Any]] = {}
    path = None
    if out_dir is not None:
        path = Path(out_dir) / "results.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    done[r["id"]] = r
    results = []
    for s in samples:
        if s.id in done:
            results.append(done[s.id])
            continue
        t0 = time.perf_counter()
        response = answer(s)
        r = {
            "id": s.id,
            "task": s.task,
            "needle_in": s.needle_in,
            "length": s.length,
            "depth": s.depth,
            "answer": s.answer,
            "response": response,
            "score": score_answer(response, s.answer, s.choices),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        results.append(r)
        if path is not None:
            with path.open("a") as f:
                f.write(json.dumps(r) + "\n")
    return results


def heatmap_png(results: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Accuracy heat map: depth (rows) x length (columns) per (task, needle_in) panel. Returns ``path``.

    Raises ValueError when ``results`` is empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = summarize(results)
    if not cells:
        raise ValueError("no results to plot")
    panels = sorted({(c["task"], c["needle_in"]) for c in cells})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (task, where) in zip(axes[0], panels, strict=True):
        mine = [c for c in cells if (c["task"], c["needle_in"]) == (task, where)]
        lengths = sorted({c["length"] for c in mine})
        depths = sorted({c["depth"] for c in mine})
        grid = np.full((len(depths), len(lengths)), np.nan)
        for c in mine:
            grid[depths.index(c["depth"]), lengths.index(c["length"])] = c["accuracy"]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [str(x) for x in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("length (frames)" if task == "v_niah" else "length (parts)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{task} (needle in {where})", fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
