"""A real ``sglang.Engine`` (0.5.17) on CPU serving a tiny Qwen2.5-VL with the mmi backend, end to end.

What it proves: the installed entry point registers ``mmi`` in the engine's scheduler process; the hybrid form
(prefill mmi, decode torch_native) builds; a two-image request is routed sparse chunk by chunk under chunked
prefill (later chunks attend to their cached prefix); a text-only request stays dense; tokens come out with finite
logprobs. CPU shims (test-only, outside the package): TRITON_INTERPRET=1 because SGLang runs its own Triton helper
kernels for any backend name other than torch_native/intel_amx; ``cpu_shim/vllm/_custom_ops.py`` for the rotary op
sglang imports off CUDA; the image processor forced to CPU inside engine_cpu_run.py. About 3-4 min on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sglang, pytest.mark.slow, pytest.mark.e2e]

HERE = Path(__file__).parent


def test_engine_on_cpu_runs_mmi(tmp_path):
    env = dict(os.environ)
    env.update(
        TRITON_INTERPRET="1",
        PYTHONPATH=os.pathsep.join([str(HERE / "cpu_shim"), env.get("PYTHONPATH", "")]),
        MMI_HEAD_CONFIGS=str(tmp_path / "hc.json"),
        MMI_MIN_SEQ_LEN="16",
        MMI_MIN_VISUAL_TOKENS="8",
        MMI_MIN_CHUNK_TOKENS="4",
        MMI_LOG_INTERVAL_S="0",
        MMI_TIMING="1",
    )
    proc = subprocess.run(
        [sys.executable, str(HERE / "engine_cpu_run.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    res = json.loads((tmp_path / "result.json").read_text())
    image_req, text_req = res["outputs"]
    assert image_req["prompt_tokens"] > 128 and text_req["prompt_tokens"] < 32  # two images of 64 tokens each
    for o in res["outputs"]:
        assert len(o["output_ids"]) == 3 and all(math.isfinite(x) for x in o["logprobs"])
    assert "mmi backend: inner=torch_native sparse_impl=reference" in log
    # the last routing line counts every extend batch: the image request's chunks are sparse, the text one dense
    counts = re.findall(r"mmi: (\d+) extend batches; (.*)", log)[-1][1]
    routes = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+) req", counts)}
    n_chunks = math.ceil(image_req["prompt_tokens"] / 48)
    assert routes.get("sparse") == n_chunks and n_chunks >= 3, counts
    assert routes.get("text_only") == 1, counts
    assert "mmi timing:" in log
