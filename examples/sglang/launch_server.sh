#!/usr/bin/env bash
# Serve a video VLM with the mmi attention backend (sglang 0.5.17; `pip install mmi-sglang` registers the backend
# through the `sglang.srt.plugins` entry point, nothing else to import).
# Usage: examples/sglang/launch_server.sh MODEL_PATH HEAD_CONFIGS_JSON [extra launch_server flags]
set -euo pipefail
MODEL=${1:?model path, e.g. Qwen/Qwen2.5-VL-7B-Instruct}
HC=${2:?head-config JSON (mmi-search output), or "" to use the model family default shipped by mmi-models}
shift 2
[ -n "$HC" ] && export MMI_HEAD_CONFIGS=$HC
export MMI_INNER_BACKEND=${MMI_INNER_BACKEND:-triton}   # stock backend for decode, text and short extends
export MMI_MIN_SEQ_LEN=${MMI_MIN_SEQ_LEN:-65536}        # sparse only for long multimodal extends
# Hybrid form: mmi for prefill, a stock backend for decode (CUDA graphs stay with the stock backend).
# `--attention-backend mmi` alone works too (decode is delegated to MMI_INNER_BACKEND).
exec python -m sglang.launch_server --model-path "$MODEL" \
  --prefill-attention-backend mmi --decode-attention-backend triton \
  --context-length 262144 --enable-metrics "$@"
