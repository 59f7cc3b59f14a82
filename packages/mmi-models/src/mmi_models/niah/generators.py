"""V-NIAH and MM-NIAH samples: real mp4 haystacks (PyAV) with a needle at a requested depth, and their questions.

- V-NIAH (`make_v_niah`): one long generated video (`mmi_models.synthetic_video.moving_shapes_frames`: a red square
  and a blue disc moving on a gray gradient); at frame ``round(depth * (frames - 1))`` the frame is replaced by the
  needle: a large filled square of a named colour (not red or blue) centred on a white background. The question asks
  the colour of the large square shown in one frame; the choices are the named colours.
- MM-NIAH (`make_mm_niah`): ``segments`` parts in order, one part in four a text segment (filler sentences) and the
  rest short video clips (25% text segments interleaved between frames). The needle is either a sentence in a text
  segment (``"the secret colour is <c>"``) or a needle frame in a clip; ``depth`` picks the part and the frame.

Every sample is a `NiahSample` (pydantic, frozen): its ordered `parts` (video files and text), the question, the
choices and the answer, the needle's part and frame. Files are written under the given directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmi_models.synthetic_video import moving_shapes_frames

__all__ = [
    "NEEDLE_COLORS",
    "NiahPart",
    "NiahSample",
    "make_mm_niah",
    "make_v_niah",
    "needle_frame",
    "write_mp4",
]

# Named colours of the needle (none is the haystack's red or blue), RGB.
NEEDLE_COLORS: dict[str, tuple[int, int, int]] = {
    "green": (20, 200, 40),
    "yellow": (240, 220, 20),
    "magenta": (220, 30, 220),
    "cyan": (20, 220, 230),
    "orange": (250, 140, 10),
    "black": (10, 10, 10),
}
_FILLER = (
    "the weather report says the day is calm and the road is quiet",
    "a man walks to the market and buys bread and milk",
    "the teacher writes a long list of words on the board",
    "two birds sit on the roof and look at the garden",
    "the train leaves the station in the morning and arrives at noon",
)
V_QUESTION = "In one frame of the video a large square appears on a white background. What color is that square?"
MM_QUESTION = (
    "Somewhere in the video frames or in the text there is a secret color (a large square on a white background in "
    "one frame, or a sentence saying the secret color). What is the secret color?"
)


class NiahPart(BaseModel):
    """One part of a prompt, in order: a video file or a text segment."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: Literal["video", "text"]
    path: str | None = None  # mp4 file of a video part
    text: str | None = None  # the text of a text part
    frames: int = 0  # frames of a video part


class NiahSample(BaseModel):
    """One needle-in-a-haystack question with its haystack (``parts``) and the truth."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    task: Literal["v_niah", "mm_niah"]
    parts: list[NiahPart]
    question: str
    choices: list[str]
    answer: str
    depth: float = Field(ge=0.0, le=1.0)
    length: int  # haystack size: total video frames (V-NIAH) or total parts (MM-NIAH)
    needle_in: Literal["video", "text"]
    needle_part: int  # index into parts
    needle_frame: int | None = None  # frame index inside parts[needle_part] when the needle is a frame

    def prompt_text(self) -> str:
        """The question with its choices, as sent after the haystack."""
        return f"{self.question} Answer with one word from: {', '.join(self.choices)}."


def needle_frame(color: str, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: white background, centred filled square of ``NEEDLE_COLORS[color]`` with side
    ``min(height, width) // 2``. Raises KeyError for an unknown colour."""
    rgb = NEEDLE_COLORS[color]
    f = np.full((height, width, 3), 255, dtype=np.uint8)
    side = min(height, width) // 2
    y0, x0 = (height - side) // 2, (width - side) // 2
    f[y0 : y0 + side, x0 : x0 + side] = rgb
    return f


def write_mp4(path: str | Path, frames: np.ndarray, *, fps: int = 4) -> Path:
    """Encode uint8 [T, H, W, 3] frames into an mp4 (H.264, mpeg4 fallback, yuv420p). Raises ValueError for odd
    sizes or a wrong array shape."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2 or t < 1:
        raise ValueError(f"need >= 1 frame of even height and width, got {t} frames of {h}x{w}")
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=fps)
            stream.options = {"crf": "18", "preset": "ultrafast"}
        except Exception:  # PyAV builds without x264
            stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _check(depth: float, frames: int, height: int, width: int) -> None:
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if frames < 1 or height < 16 or width < 16:
        raise ValueError(f"need frames >= 1 and height, width >= 16, got {frames}, {height}, {width}")


def make_v_niah(
    out_dir: str | Path,
    *,
    frames: int,
    depth: float,
    color: str = "green",
    height: int = 112,
    width: int = 112,
    fps: int = 4,
    seed: int = 0,
) -> NiahSample:
    """Write one V-NIAH video of ``frames`` frames with the needle frame at ``round(depth * (frames - 1))``.

    Raises ValueError (depth outside [0, 1], bad sizes) or KeyError (unknown colour)."""
    _check(depth, frames, height, width)
    needle = needle_frame(color, height, width)
    video = moving_shapes_frames(frames, height, width, seed=seed)
    at = round(depth * (frames - 1))
    video[at] = needle
    sid = f"v_niah-f{frames}-d{depth:.2f}-{color}-s{seed}"
    path = write_mp4(Path(out_dir) / f"{sid}.mp4", video, fps=fps)
    return NiahSample(
        id=sid,
        task="v_niah",
        parts=[NiahPart(type="video", path=str(path), frames=frames)],
        question=V_QUESTION,
        choices=list(NEEDLE_COLORS),
        answer=color,
        depth=depth,
        length=frames,
        needle_in="video",
        needle_part=0,
        needle_frame=at,
    )


def make_mm_niah(
    out_dir: str | Path,
    *,
    segments: int,
    depth: float,
    needle_in: Literal["video", "text"] = "text",
    color: str = "green",
    frames_per_clip: int = 8,
    height: int = 112,
    width: int = 112,
    fps: int = 4,
    seed: int = 0,
) -> NiahSample:
    """Write one MM-NIAH sample: ``segments`` parts, part ``i`` a text segment when ``i % 4 == 3`` (25%), else a
    clip of ``frames_per_clip`` frames. The needle goes into the text or video part nearest to ``depth`` (over the
    parts of that modality, in order), and for a clip into its frame nearest to ``depth`` within the clip's span.

    Raises ValueError (fewer than 4 segments, depth outside [0, 1], bad sizes) or KeyError (unknown colour)."""
    _check(depth, frames_per_clip, height, width)
    if segments < 4:
        raise ValueError(f"MM-NIAH needs >= 4 segments (one in four is text), got {segments}")
    rng = np.random.default_rng(seed)
    kinds = ["text" if i % 4 == 3 else "video" for i in range(segments)]
    candidates = [i for i, k in enumerate(kinds) if k == needle_in]
    pos = depth * (segments - 1)
    needle_part = min(candidates, key=lambda i: (abs(i - pos), i))
    sid = f"mm_niah-p{segments}-d{depth:.2f}-{needle_in}-{color}-s{seed}"
    parts: list[NiahPart] = []
    needle_at: int | None = None
    for i, kind in enumerate(kinds):
        if kind == "text":
            sentences = [_FILLER[j] for j in rng.integers(0, len(_FILLER), size=3)]
            if i == needle_part:
                sentences.insert(1, f"the secret color is {color}")
            parts.append(NiahPart(type="text", text=". ".join(sentences) + "."))
            continue
        clip = moving_shapes_frames(frames_per_clip, height, width, seed=seed * 1000 + i)
        if i == needle_part:
            # the depth inside the span this part covers, mapped to the clip's frames
            lo, hi = i / segments, (i + 1) / segments
            inner = min(max((depth - lo) / (hi - lo), 0.0), 1.0)
            needle_at = round(inner * (frames_per_clip - 1))
            clip[needle_at] = needle_frame(color, height, width)
        path = write_mp4(Path(out_dir) / f"{sid}-part{i}.mp4", clip, fps=fps)
        parts.append(NiahPart(type="video", path=str(path), frames=frames_per_clip))
    return NiahSample(
        id=sid,
        task="mm_niah",
        parts=parts,
        question=MM_QUESTION,
        choices=list(NEEDLE_COLORS),
        answer=color,
        depth=depth,
        length=segments,
        needle_in=needle_in,
        needle_part=needle_part,
        needle_frame=needle_at,
    )
