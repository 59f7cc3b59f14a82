"""The captured q/k/v are exactly what the language attention sees: dense attention on them reproduces the input of
each layer's o_proj (the attention output) on the tiny Qwen2.5-VL checkpoint with a real mp4."""

from __future__ import annotations

import pytest
import torch

from mmi_core import Modality, dense_attention_reference
from mmi_models import write_moving_shapes_mp4
from mmi_models.adapter import adapter_for
from mmi_models.capture import LoadedModel, calibration_inputs, capture_layers, load_captured

pytestmark = pytest.mark.e2e


def test_captured_qkv_reproduce_the_attention_output(tiny_qwen, tmp_path):
    video = write_moving_shapes_mp4(tmp_path / "clip.mp4", num_frames=8, fps=4)
    adapter = adapter_for(tiny_qwen.model)
    loaded = LoadedModel(tiny_qwen.model, tiny_qwen.processor, tiny_qwen.path, adapter.geometry(), "qwen")
    inputs = calibration_inputs(loaded, video, "describe the video")
    seen: dict[int, torch.Tensor] = {}
    attn = [
        m
        for m in tiny_qwen.model.modules()
        if hasattr(m, "o_proj") and hasattr(m, "layer_idx") and getattr(m, "config", None) is adapter.text_config
    ]
    hooks = [
        m.o_proj.register_forward_pre_hook(lambda mod, a, i=int(m.layer_idx): seen.__setitem__(i, a[0])) for m in attn
    ]
    try:
        layout = capture_layers(loaded, inputs, tmp_path / "cap")
    finally:
        for h in hooks:
            h.remove()
    assert tiny_qwen.model.config.get_text_config()._attn_implementation == "sdpa"  # restored
    assert Modality.VIDEO in layout.modalities() and layout.num_tokens == inputs["input_ids"].shape[1]
    for i in range(loaded.geometry.num_layers):
        c = load_captured(tmp_path / "cap", i)
        assert c.layout == layout and c.q.shape[1] == loaded.geometry.num_q_heads
        o = dense_attention_reference(c.q, c.k, c.v, scale=c.scale)
        want = seen[i][0].reshape(o.shape[0], o.shape[1], o.shape[2]).float()
        torch.testing.assert_close(o, want, atol=1e-4, rtol=1e-4)
