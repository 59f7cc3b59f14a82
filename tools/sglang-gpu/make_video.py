#!/usr/bin/env python3
"""Write a synthetic mp4 (moving shapes on a gradient) with OpenCV.
Usage: make_video.py OUT.mp4 FRAMES [WIDTH HEIGHT FPS]    (default 896x672 at 2 fps: Qwen2.5-VL then samples every
frame and gives 768 tokens per 2 frames, e.g. 256 frames -> 98,304 video tokens)."""

import sys

import cv2
import numpy as np

out, n = sys.argv[1], int(sys.argv[2])
w, h, fps = (int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 5 else (896, 672, 2.0)
vw = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
assert vw.isOpened(), "cv2.VideoWriter failed to open"
yy, xx = np.mgrid[0:h, 0:w]
base = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 96)], -1).astype(np.uint8)
rng = np.random.default_rng(0)
for t in range(n):
    f = base.copy()
    for k in range(6):
        cx = int((w / 2 + (w / 3) * np.sin(0.07 * t * (k + 1) + k)) % w)
        cy = int((h / 2 + (h / 3) * np.cos(0.05 * t * (k + 2) + k)) % h)
        col = (
            tuple(int(c) for c in rng.integers(0, 255, 3))
            if t == 0
            else tuple(int((40 * k + 3 * t) % 255) for _ in range(3))
        )
        if k % 2:
            cv2.circle(f, (cx, cy), 30 + 8 * k, col, -1)
        else:
            cv2.rectangle(f, (cx - 40, cy - 25), (cx + 40, cy + 25), col, -1)
    cv2.putText(f, f"frame {t}", (20, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
    vw.write(f)
vw.release()
cap = cv2.VideoCapture(out)
print(f"wrote {out}: {int(cap.get(cv2.CAP_PROP_FRAME_COUNT))} frames {w}x{h} @ {cap.get(cv2.CAP_PROP_FPS)} fps")
