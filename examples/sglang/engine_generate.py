"""Offline inference with the mmi backend: ``sglang.Engine(...).generate(video_data=...)``.

Usage: MMI_HEAD_CONFIGS=hc.json python examples/sglang/engine_generate.py MODEL_PATH VIDEO_PATH
``Engine.__init__`` loads the `sglang.srt.plugins` entry points, so the installed mmi-sglang registers ``mmi`` in
the engine's scheduler processes. The prompt must contain the model's video placeholder once per video; for
Qwen2.5-VL that is ``<|vision_start|><|video_pad|><|vision_end|>`` (the processor expands it to the video's tokens).
"""

import sys

import sglang as sgl

QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def main() -> None:
    model, video = sys.argv[1], sys.argv[2]
    engine = sgl.Engine(
        model_path=model,
        prefill_attention_backend="mmi",
        decode_attention_backend="triton",
        context_length=262144,
    )
    try:
        prompt = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{QWEN_VIDEO}Describe this video.<|im_end|>\n<|im_start|>assistant\n"
        )
        out = engine.generate(
            prompt=prompt, video_data=[video], sampling_params={"temperature": 0, "max_new_tokens": 128}
        )
        print(out["text"])
        print({k: out["meta_info"][k] for k in ("prompt_tokens", "completion_tokens") if k in out["meta_info"]})
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
