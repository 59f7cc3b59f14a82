#!/usr/bin/env bash
# Check the mmi SGLang plugin against the NEWEST sglang release, in its own throw-away virtual environment.
# Not part of `make test` (downloads sglang + its pinned torch, a few GB; needs PyPI). The project itself is locked to
# sglang 0.5.17 (the GPU machine's torch 2.11); mmi-sglang declares sglang>=0.5.17,<0.6.
#
# Usage (repo root):  tools/check_sglang_latest.sh [SGLANG_SPEC]      e.g. tools/check_sglang_latest.sh 'sglang==0.5.23'
# Env: CHECK_VENV (default /tmp/mmi-sglang-latest), TORCH_INDEX (default the CPU wheel index of pytorch.org).
# Output: the installed sglang/torch versions, whether the version is inside the declared window, and the result of
# the plugin's tests (tests/mmi_sglang) run in that environment. Exit status = pytest's.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
SPEC=${1:-sglang}
VENV=${CHECK_VENV:-/tmp/mmi-sglang-latest}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
UV=$(command -v uv || echo "$HOME/.local/bin/uv")
[ -x "$UV" ] || python3 -m pip install -q uv
UV=$(command -v uv || echo "$HOME/.local/bin/uv")

rm -rf "$VENV"
"$UV" venv -q --python 3.12 "$VENV"
PY=$VENV/bin/python
# sglang pins its torch; take CPU wheels of that torch so the check runs on a machine without a GPU.
"$UV" pip install -q --python "$PY" --index-strategy unsafe-best-match --extra-index-url "$TORCH_INDEX" \
  "$SPEC" pytest pytest-timeout av
# The workspace packages without their dependency resolution (mmi-sglang's own pin would pull sglang back into the
# window); their other dependencies (pydantic, numpy, transformers, triton) come with sglang.
"$UV" pip install -q --python "$PY" --no-deps -e packages/mmi-core -e packages/mmi-kernels -e packages/mmi-models \
  -e packages/mmi-sglang
"$PY" - <<'PY'
from importlib.metadata import version
from packaging.specifiers import SpecifierSet
v = version("sglang")
window = SpecifierSet(">=0.5.17,<0.6")
print(f"sglang {v}, torch {version('torch')}; inside the declared window {window}: {v in window}")
PY
"$PY" -m pytest -x -q -p no:cacheprovider tests/mmi_sglang
