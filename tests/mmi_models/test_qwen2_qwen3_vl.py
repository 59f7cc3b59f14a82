"""Qwen2-VL and Qwen3-VL through their real processors and models (tiny checkpoints, a real mp4): layouts, exact
dense generation, counted sparse prefill. Qwen3-VL's per-frame timestamps must become frame prefixes."""

from __future__ import annotations

import pytest
import torch

from mmi_core import AShape, Dense, HeadConfigs, Modality
from mmi_models import adapter_for, apply_mminference, write_tiny_checkpoint

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl"])
def tiny_qwen_variant(request, tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = write_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()


def _inputs(processor, clip):
    frames, meta = clip
    content = [{"type": "video"}, {"type": "text", "text": "describe the video"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(
        text=[text, "what is the red square doing"],
        videos=[frames],
        video_metadata=[meta],
        return_tensors="pt",
        padding=True,
    )


def test_layout_and_generation(tiny_qwen_variant, clip):
    family, processor, model = tiny_qwen_variant
    inputs = _inputs(processor, clip)
    adapter = adapter_for(model)
    assert adapter.family == ("qwen3_vl" if family == "qwen3_vl" else "qwen2_5_vl")
    batch = adapter.layouts_for(inputs)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    (video,) = batch.layouts[0].segments_of(Modality.VIDEO)
    ids = inputs["input_ids"][0]
    on_grid = ids[video.start : video.end][video.grid.on_grid_mask()]
    assert on_grid.numel() == t * h * w // 4 and bool((on_grid == adapter.video_token_id).all())
    assert (video.grid.frames, video.grid.rows, video.grid.cols) == (t, h // 2, w // 2)
    if family == "qwen3_vl":
        # every merged frame: "<x.y seconds>" + <|vision_start|> as prefix, <|vision_end|> as suffix
        assert video.grid.frame_prefix > 1 and video.grid.frame_suffix == 1
        start_id = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        end_id = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
        per = video.grid.tokens_per_frame
        for f in range(t):
            frame = ids[video.start + f * per : video.start + (f + 1) * per]
            assert frame[video.grid.frame_prefix - 1] == start_id and frame[-1] == end_id
    else:
        assert video.grid.tokens_per_frame == h * w // 4
    assert batch.offsets[1] > 0 and batch.layouts[1].modalities() == (Modality.TEXT,)

    want = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    t_cfg = model.config.get_text_config()
    geo = (t_cfg.num_hidden_layers, t_cfg.num_attention_heads, t_cfg.num_key_value_heads)
    handle = apply_mminference(model, HeadConfigs.uniform(*geo, Dense()), min_tokens=16)
    try:
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), want)
        handle = apply_mminference(model, HeadConfigs.uniform(*geo, AShape(sink=16, local=16, block=16)), min_tokens=16)
        with torch.no_grad():
            logits = model(**inputs).logits
        assert torch.isfinite(logits).all()
        assert handle.stats.sparse == geo[0] and handle.stats.dense["no_visual_tokens"] == geo[0]
    finally:
        handle.remove()
