"""NIAH harness: generators write decodable mp4s with the needle exactly where requested, the scorer scores known
answers right, and the runner works end to end on a tiny checkpoint through the HF path and through a local
OpenAI-compatible server backed by the same model (plumbing only: a random tiny model's answers mean nothing)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from mmi_models.niah import (
    NEEDLE_COLORS,
    HFAnswerer,
    OpenAIChatAnswerer,
    chat_content,
    heatmap_png,
    make_mm_niah,
    make_v_niah,
    run_niah,
    score_answer,
    summarize,
)


def _decode(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _is_needle(frame: np.ndarray, color: str) -> bool:
    h, w, _ = frame.shape
    centre = frame[h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8].reshape(-1, 3).astype(float).mean(0)
    corner = frame[:6, :6].reshape(-1, 3).astype(float).mean(0)
    return bool(np.abs(centre - NEEDLE_COLORS[color]).max() < 30 and corner.min() > 225)


@pytest.mark.parametrize(("frames", "depth", "want"), [(9, 0.0, 0), (9, 0.5, 4), (10, 1.0, 9), (13, 0.3, 4)])
def test_v_niah_needle_frame_is_where_requested(tmp_path: Path, frames: int, depth: float, want: int) -> None:
    s = make_v_niah(tmp_path, frames=frames, depth=depth, color="yellow", height=64, width=96)
    assert s.needle_frame == want and s.answer == "yellow" and s.needle_in == "video"
    video = _decode(s.parts[0].path)
    assert video.shape == (frames, 64, 96, 3)
    hits = [t for t in range(frames) if _is_needle(video[t], "yellow")]
    assert hits == [want]


@pytest.mark.parametrize("needle_in", ["text", "video"])
def test_mm_niah_interleaves_25_percent_text_and_places_the_needle(tmp_path: Path, needle_in: str) -> None:
    s = make_mm_niah(tmp_path, segments=8, depth=0.6, needle_in=needle_in, color="magenta", frames_per_clip=6,
                     height=48, width=48)  # fmt: skip
    kinds = [p.type for p in s.parts]
    assert kinds.count("text") == 2 and len(kinds) == 8 and kinds[3] == kinds[7] == "text"
    assert s.parts[s.needle_part].type == needle_in
    texts = [i for i, p in enumerate(s.parts) if p.type == "text" and "secret color is magenta" in p.text]
    needles = []
    for i, p in enumerate(s.parts):
        if p.type == "video":
            v = _decode(p.path)
            assert v.shape[0] == 6
            needles += [(i, t) for t in range(6) if _is_needle(v[t], "magenta")]
    if needle_in == "text":
        assert texts == [s.needle_part] and needles == [] and s.needle_frame is None
    else:
        assert texts == [] and needles == [(s.needle_part, s.needle_frame)]
        assert s.needle_part == 4  # depth 0.6 of 8 parts: part 4.2 -> nearest video part 4


def test_generators_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="depth"):
        make_v_niah(tmp_path, frames=4, depth=1.5)
    with pytest.raises(ValueError, match="even"):
        make_v_niah(tmp_path, frames=4, depth=0.5, height=63, width=64)
    with pytest.raises(ValueError, match="segments"):
        make_mm_niah(tmp_path, segments=3, depth=0.5)
    with pytest.raises(KeyError):
        make_v_niah(tmp_path, frames=4, depth=0.5, color="plaid")


def test_scorer_scores_known_answers() -> None:
    choices = list(NEEDLE_COLORS)
    assert score_answer("Green.", "green", choices) == 1.0
    assert score_answer("The square is GREEN", "green", choices) == 1.0
    assert score_answer("yellow", "green", choices) == 0.0
    assert score_answer("green or yellow", "green", choices) == 0.0  # hedging names two choices
    assert score_answer("greenish", "green", choices) == 0.0  # whole words only
    assert score_answer("", "green", choices) == 0.0
    with pytest.raises(ValueError, match="not one of"):
        score_answer("red", "red", choices)
    cells = summarize(
        [
            {"task": "v_niah", "needle_in": "video", "length": 8, "depth": 0.5, "score": 1.0},
            {"task": "v_niah", "needle_in": "video", "length": 8, "depth": 0.5, "score": 0.0},
        ]
    )
    assert cells == [{"task": "v_niah", "needle_in": "video", "length": 8, "depth": 0.5, "accuracy": 0.5, "n": 2}]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list:
    d = tmp_path_factory.mktemp("niah")
    out = [make_v_niah(d, frames=4, depth=x, color="green", height=56, width=56) for x in (0.0, 1.0)]
    out.append(make_mm_niah(d, segments=4, depth=0.5, needle_in="text", frames_per_clip=2, height=56, width=56))
    return out


def _check_results(results: list[dict], samples: list, out: Path) -> None:
    assert [r["id"] for r in results] == [s.id for s in samples]
    assert all(isinstance(r["response"], str) and r["score"] in (0.0, 1.0) for r in results)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(samples)
    png = heatmap_png(results, out / "heatmap.png", title="plumbing")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
def test_runner_hf_path_end_to_end_on_tiny_checkpoint(tiny_qwen, samples, tmp_path: Path) -> None:
    answer = HFAnswerer(tiny_qwen.model, tiny_qwen.processor, max_new_tokens=3)
    results = run_niah(samples, answer, tmp_path)
    _check_results(results, samples, tmp_path)
    # resumable: a second run asks nothing
    again = run_niah(samples, lambda s: pytest.fail("asked again"), tmp_path)
    assert again == results
    # the same runner with MMInference applied (family default configs, sparse from 16 tokens on)
    from mmi_models import apply_mminference

    handle = apply_mminference(tiny_qwen.model, min_tokens=16)
    try:
        mmi = run_niah(samples[:1], answer, tmp_path / "mmi")
    finally:
        handle_stats = handle.stats.as_dict()
        handle.remove()
    assert mmi[0]["id"] == samples[0].id and isinstance(mmi[0]["response"], str)
    assert handle_stats["sparse"] > 0, handle_stats


@pytest.mark.e2e
def test_runner_against_local_openai_compatible_server(tiny_qwen, samples, tmp_path: Path) -> None:
    model = HFAnswerer(tiny_qwen.model, tiny_qwen.processor, max_new_tokens=3)
    seen: list[list[str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert self.path == "/v1/chat/completions"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][0]["content"]
            seen.append([c["type"] for c in content])
            text = model.answer_content(content)
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        results = run_niah(samples, OpenAIChatAnswerer(url, "tiny"), tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    _check_results(results, samples, tmp_path)
    assert seen[0] == ["video_url", "text"]
    assert seen[2] == ["video_url", "video_url", "video_url", "text", "text"]
    # the same prompt through the HF path directly gives the same (greedy) answer as through the server
    assert results[0]["response"] == model(samples[0])
    assert chat_content(samples[0])[0]["video_url"]["url"].startswith("data:video/mp4;base64,")
