"""Minimal `decord` stand-in built on OpenCV, for the GPU image only.

sglang 0.5.17 decodes video with torchcodec (needs system FFmpeg libraries, absent on the device image) or
falls back to `decord` (no cp312 wheel of the original). This shim implements the part sglang's
VideoDecoderWrapper uses: VideoReader(path, ctx=cpu(0)), len(), [i], get_avg_fps(), get_batch(idx).asnumpy().
Frames are RGB uint8 NHWC, like decord. It decodes sequentially and keeps only the requested frames.
"""

import cv2
import numpy as np

__version__ = "0.0.0-cv2shim"


def cpu(i=0):
    return ("cpu", i)


def gpu(i=0):
    return ("gpu", i)


class _Batch:
    def __init__(self, a):
        self._a = a

    def asnumpy(self):
        return self._a


class VideoReader:
    def __init__(self, uri, ctx=None, width=-1, height=-1, num_threads=0, fault_tol=-1):
        self._uri = uri
        cap = cv2.VideoCapture(uri)
        if not cap.isOpened():
            raise RuntimeError(f"cv2 could not open video {uri!r}")
        self._fps = float(cap.get(cv2.CAP_PROP_FPS)) or 1.0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if n <= 0:  # count by decoding
            n = len(self._read(None))
        self._n = n

    def _read(self, wanted):
        cap = cv2.VideoCapture(self._uri)
        out, i = {}, 0
        last = max(wanted) if wanted else None
        while True:
            if last is not None and i > last:
                break
            ok, fr = cap.read()
            if not ok:
                break
            if wanted is None or i in wanted:
                out[i] = cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
            i += 1
        cap.release()
        return out

    def __len__(self):
        return self._n

    def get_avg_fps(self):
        return self._fps

    def get_batch(self, indices):
        idx = [int(i) for i in indices]
        got = self._read(set(idx))
        missing = [i for i in idx if i not in got]
        if missing:
            raise IndexError(f"frames {missing[:5]} not decodable (n={self._n})")
        return _Batch(np.stack([got[i] for i in idx]))

    def __getitem__(self, i):
        return self.get_batch([i]).asnumpy()[0]
