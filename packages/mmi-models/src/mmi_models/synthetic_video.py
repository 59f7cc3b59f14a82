"""Short real mp4 clips of synthetic moving shapes, written with PyAV (``av``), for tests and demos.

The clip is H.264 (``libx264``, falling back to ``mpeg4`` when the PyAV build lacks x264), yuv420p, so every
decoder and the transformers video loaders read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["moving_shapes_frames", "write_moving_shapes_mp4"]


def moving_shapes_frames(num_frames: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """uint8 [num_frames, height, width, 3]: a red square moving right and a blue disc moving down on a gray
    gradient. Raises ValueError for non-positive sizes."""
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need num_frames >= 1 and height, width >= 8, got {num_frames}, {height}, {width}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), np.full_like(xx, 96)], -1)
    base = (base * 0.4 + 60).astype(np.uint8)
    side = max(height, width) // 5
    r = max(height, width) // 8
    x0, y0 = rng.integers(0, width // 3), rng.integers(0, height // 3)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        f = base.copy()
        sx = (x0 + t * width // (2 * num_frames)) % (width - side)
        f[height // 3 : height // 3 + side, sx : sx + side] = (220, 40, 40)
        cy = (y0 + t * height // (2 * num_frames)) % (height - r) + r // 2
        disc = (yy - cy) ** 2 + (xx - width * 2 // 3) ** 2 <= r * r
        f[disc] = (40, 60, 220)
        frames[t] = f
    return frames


def write_moving_shapes_mp4(
    path: str | Path, *, num_frames: int = 16, height: int = 112, width: int = 112, fps: int = 4, seed: int = 0
) -> Path:
    """Encode `moving_shapes_frames` into an mp4 file at ``path`` (even height/width required by yuv420p).

    Raises ValueError for odd sizes. Returns the path.
    """
    import av

    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even height and width, got {height}x{width}")
    frames = moving_shapes_frames(num_frames, height, width, seed=seed)
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=fps)
            stream.options = {"crf": "18", "preset": "ultrafast"}
        except Exception:  # PyAV wheels without x264: mpeg4 part 2 is always there
            stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
