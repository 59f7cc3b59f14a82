#!/usr/bin/env bash
# Run tools/kernel_bench.py stages on the device machine. Usage: tools/gpu/kernel_bench.sh "<stage args>" ["<stage args>" ...]
# Each argument is one kernel_bench.py invocation (without --out); results land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/packages/mmi-core/src:$PWD/packages/mmi-kernels/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$OUT/nvidia_smi.txt"
for args in "$@"; do
  echo "=== kernel_bench.py $args"
  # shellcheck disable=SC2086
  python3 tools/kernel_bench.py --out "$OUT" $args 2>&1 | tee -a "$OUT/log.txt"
done
