"""An SGLang frontend-language program (``sgl.function``) with video input, against a server running the mmi backend.

Usage: python examples/sglang/frontend_program.py VIDEO_PATH [--url http://127.0.0.1:30000] [--frames 16]

Limits of ``sgl.video(path, num_frames)`` in sglang 0.5.17 (read from sglang/lang/interpreter.py and utils.py):
- the client decodes the file with OpenCV and samples ``num_frames`` frames evenly; they travel as ONE ``image_data``
  entry (a ``video:``-prefixed base64 blob) behind the chat template's *image* token, so the server builds image
  items, not a video with ``video_grid_thw``: no temporal merge, and the frame count is what you pass, not the clip's;
- only one image/video per program (the runtime endpoint asserts a single image);
- mmi then sees image segments and runs sparse only if they pass the thresholds (MMI_MIN_VISUAL_TOKENS etc.); Grid
  heads get no video frame stride from them. For long videos use the OpenAI ``video_url`` request or
  ``Engine.generate(video_data=...)`` instead, which keep the video a video.
"""

import argparse

import sglang as sgl


@sgl.function
def describe_video(s, video_path, num_frames):
    s += sgl.user(sgl.video(video_path, num_frames) + "Describe what happens in this video.")
    s += sgl.assistant(sgl.gen("answer", max_tokens=128, temperature=0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--url", default="http://127.0.0.1:30000")
    ap.add_argument("--frames", type=int, default=16)
    a = ap.parse_args()
    sgl.set_default_backend(sgl.RuntimeEndpoint(a.url))
    state = describe_video.run(video_path=a.video, num_frames=a.frames)
    print(state["answer"])


if __name__ == "__main__":
    main()
