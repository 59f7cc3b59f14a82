"""Run a real ``sglang.Engine`` on CPU with the mmi backend; used by test_sglang_engine.py (run as a script).

Usage: engine_cpu_run.py OUT_DIR. Writes a tiny random-weight Qwen2.5-VL checkpoint (mmi_models.tiny), head configs
for it (2 layers, 4 q / 2 kv heads; layer 0 sparse, layer 1 Dense), starts the engine with
``--prefill-attention-backend mmi --decode-attention-backend torch_native`` and a small chunked-prefill size, sends
a two-image request and a text-only request, and writes OUT_DIR/result.json. The environment must carry the CPU
shims (see the test): TRITON_INTERPRET=1 for SGLang's own Triton helper kernels, cpu_shim/ on PYTHONPATH.
"""

import json
import sys
import time
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    t0 = time.time()
    from mmi_core import Dense, HeadConfigs, HeadSpec, LayerConfig, VerticalSlash
    from mmi_models.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint("qwen2_5_vl", out / "ckpt")
    vs = HeadSpec(pattern=VerticalSlash(vertical=8, slash=4, last_q=16, sink=4, local=16, block=16))
    layers = [
        LayerConfig(heads=[vs] * 4, gqa=["group"] * 2),
        LayerConfig(heads=[HeadSpec(pattern=Dense())] * 4, gqa=["group"] * 2),
    ]
    HeadConfigs(num_layers=2, num_q_heads=4, num_kv_heads=2, layers=layers).save(out / "hc.json")

    import numpy as np
    import sglang as sgl
    from PIL import Image
    from sglang.srt.multimodal.processors.base_processor import BaseMultimodalProcessor

    # test-only: without a GPU the fast image processor must run on CPU (sglang picks cuda unless its CPU engine mode
    # is on, and that mode needs sgl-kernel's CPU build); the processor runs in this (tokenizer-manager) process
    BaseMultimodalProcessor._fast_image_processor_device = lambda self, processor: "cpu"

    engine = sgl.Engine(
        model_path=str(ckpt),
        device="cpu",
        prefill_attention_backend="mmi",
        decode_attention_backend="torch_native",
        mm_attention_backend="sdpa",
        sampling_backend="pytorch",
        disable_cuda_graph=True,
        chunked_prefill_size=48,
        max_total_tokens=2048,
        log_level="info",
    )
    started = time.time() - t0
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((224, 224, 3)) * 255).astype(np.uint8)) for _ in range(2)]
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    prompts = [
        f"<|im_start|>user\n{pad}{pad}describe the image<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\ndescribe the video<|im_end|>\n<|im_start|>assistant\n",
    ]
    params = {"temperature": 0, "max_new_tokens": 3}
    try:
        a = engine.generate(prompt=prompts[0], image_data=images, sampling_params=params, return_logprob=True)
        b = engine.generate(prompt=prompts[1], sampling_params=params, return_logprob=True)
    finally:
        engine.shutdown()
    res = {
        "startup_s": round(started, 1),
        "total_s": round(time.time() - t0, 1),
        "outputs": [
            {
                "prompt_tokens": o["meta_info"]["prompt_tokens"],
                "output_ids": o["output_ids"],
                "logprobs": [x[0] for x in o["meta_info"]["output_token_logprobs"]],
            }
            for o in (a, b)
        ],
    }
    (out / "result.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
