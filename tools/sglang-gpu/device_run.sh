#!/usr/bin/env bash
# Last device call: add the last carried part, install all wheels, make the mmi packages importable and their SGLang
# entry point discoverable, check imports, build the dummy checkpoint, head configs and videos, run server_test.py.
# Usage on the device (repo root):
#   bash tools/sglang-gpu/device_run.sh .carry/pN [FRAMES] [LONG_FRAMES] [server_test.py options] [-- extra server args]
# Everything useful lands in $OUT (results.json, server_<variant>.log, run.log).
set -u
T=$SECONDS
LAST=$1; FRAMES=${2:-256}; LONG=${3:-0}; shift 3 2>/dev/null || shift $#
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
H=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$H/../.." && pwd)
mkdir -p /root/stash && cp "$LAST"/*.whl /root/stash/
echo "wheels: $(ls /root/stash/*.whl | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site /root/stash/*.whl 2>&1 | grep -v -i warning | tail -5
# The mmi packages travel as source with the working tree. SGLang finds plugins through entry points, which need a
# distribution's metadata: write a minimal dist-info for mmi-sglang into /root/site so that load_plugins() registers
# the backend in every process it starts (launcher, tokenizer manager, schedulers).
DI=/root/site/mmi_sglang-0.1.0.dist-info; mkdir -p "$DI"
printf 'Metadata-Version: 2.1\nName: mmi-sglang\nVersion: 0.1.0\n' > "$DI/METADATA"
printf '[sglang.srt.plugins]\nmmi = mmi_sglang.plugin:register\n' > "$DI/entry_points.txt"
MMI_PATH=$ROOT/packages/mmi-core/src:$ROOT/packages/mmi-kernels/src:$ROOT/packages/mmi-models/src:$ROOT/packages/mmi-sglang/src
export PYTHONPATH=/root/site:$H/shim:$MMI_PATH
echo "install done at $((SECONDS-T)) s"
timeout 180 python3 - <<'PY' 2>&1 | grep -v -i warn | tail -20
import time, importlib; t=time.time()
import torch; print("gpu", torch.cuda.get_device_name(0), "cap", torch.cuda.get_device_capability(0))
for m in ["transformers", "sgl_kernel", "flashinfer", "xgrammar", "decord", "sglang.launch_server",
          "sglang.srt.models.qwen2_5_vl", "sglang.srt.multimodal.processors.qwen_vl",
          "sglang.srt.layers.attention.triton_backend", "sglang.srt.managers.scheduler",
          "mmi_core", "mmi_kernels", "mmi_models", "mmi_sglang", "mmi_sglang.backend"]:
    try:
        mod = importlib.import_module(m); print("OK", m, getattr(mod, "__version__", ""))
    except Exception as e:
        print("FAIL", m, type(e).__name__, str(e)[:300])
from importlib.metadata import entry_points
print("sglang plugins:", [f"{e.name}={e.value}" for e in entry_points(group="sglang.srt.plugins")])
import mmi_kernels; print("mmi_kernels.SparsePrefillWrapper:", hasattr(mmi_kernels, "SparsePrefillWrapper"))
from sglang.srt.plugins import load_plugins; load_plugins()
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS; print("mmi registered:", "mmi" in ATTENTION_BACKENDS)
from sglang.srt.utils.video_decoder import _BACKEND; print("video backend", _BACKEND)
print(f"imports {time.time()-t:.1f} s")
PY
echo "import check done at $((SECONDS-T)) s"
python3 "$H/make_ckpt.py" /root/ckpt 2>&1 | tail -1
python3 "$H/make_head_configs.py" /root/hc 2>&1 | tail -1
python3 "$H/make_video.py" /root/v_main.mp4 "$FRAMES"
LONGARG=()
if [ "$LONG" -gt 0 ]; then python3 "$H/make_video.py" /root/v_long.mp4 "$LONG"; LONGARG=(--video-long /root/v_long.mp4); fi
BUDGET=$(( ${RUN_BUDGET_S:-540} - (SECONDS-T) ))
echo "server test budget ${BUDGET} s (at $((SECONDS-T)) s)"
python3 "$H/server_test.py" --ckpt /root/ckpt --out "$OUT" --video /root/v_main.mp4 --head-configs /root/hc \
  "${LONGARG[@]}" --budget-s "$BUDGET" "$@" 2>&1 | grep -v -i warn | tail -60
for f in "$OUT"/server_*.log; do echo "--- $f tail"; grep -v -i "warn" "$f" | tail -25; done
echo "total $((SECONDS-T)) s"
