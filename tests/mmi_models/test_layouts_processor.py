"""Layouts from real processor outputs (tiny Qwen2.5-VL and LLaVA-OneVision checkpoints, a real mp4 clip)."""

from __future__ import annotations

import pytest
import torch

from mmi_core import LayoutError, Modality, VisualGrid
from mmi_models import AdapterError, adapter_for


def _process(tiny, clip, texts, n_videos):
    frames, meta = clip
    kw = {"videos": [frames] * n_videos, "video_metadata": [meta] * n_videos} if n_videos else {}
    return tiny.processor(text=texts, return_tensors="pt", padding=True, **kw)


# tiny checkpoints: 16 frames of 112x112 -> Qwen2.5-VL: 8 merged frames of 4x4; LLaVA-OV: 16 frames of 4x4 + newline
EXPECTED = {
    "qwen2_5_vl": (VisualGrid(8, 4, 4), 0),
    "llava_onevision": (VisualGrid(16, 4, 4), 1),
}


def test_single_video_segments(tiny, clip):
    inputs = _process(tiny, clip, [tiny.messages()], 1)
    adapter = adapter_for(tiny.model)
    batch = adapter.layouts_for(inputs)
    assert batch.offsets == (0,) and batch.num_tokens == inputs["input_ids"].shape[1]
    (lay,) = batch.layouts
    grid, trailing = EXPECTED[tiny.family]
    (video,) = lay.segments_of(Modality.VIDEO)
    assert video.grid == grid
    assert lay.tokens_per_frame == 16
    # every grid token is a placeholder id; the trailing LLaVA newline is a placeholder that became text
    ids = inputs["input_ids"][0]
    placeholder = adapter.video_token_id
    assert bool((ids[video.start : video.end] == placeholder).all())
    assert int((ids == placeholder).sum()) == video.length + trailing
    assert ids[video.start - 1] != placeholder
    assert lay.num_tokens_of(Modality.TEXT) == lay.num_tokens - video.length
    assert adapter.tokens_per_frame(**{k: inputs[k] for k in adapter.metadata_keys if k in inputs}) == [16]


def test_left_padding_offsets(tiny, clip):
    long_text = tiny.messages("please describe the video and answer what shape is moving left or right")
    inputs = _process(tiny, clip, [tiny.messages(), long_text], 2)
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[1, 0] == 1  # the processor padded on the left
    batch = adapter_for(tiny.model).layouts_for(inputs)
    pads = (mask == 0).sum(1).tolist()
    assert list(batch.offsets) == pads
    for b, lay in enumerate(batch.layouts):
        assert lay.num_tokens == int(mask[b].sum())
        (video,) = lay.segments_of(Modality.VIDEO)
        ids = inputs["input_ids"][b, batch.offsets[b] :]
        assert bool((ids[video.start : video.end] == adapter_for(tiny.model).video_token_id).all())
    # same video, different prompt length: identical segment sizes
    assert batch.layouts[0].segments_of("video")[0].grid == batch.layouts[1].segments_of("video")[0].grid


def test_text_only_row_in_video_batch(tiny, clip):
    inputs = _process(tiny, clip, [tiny.messages(), "what is this"], 1)
    batch = adapter_for(tiny.model).layouts_for(inputs)
    assert batch.has_visual
    assert batch.layouts[1].modalities() == (Modality.TEXT,)
    assert batch.offsets[1] == inputs["input_ids"].shape[1] - 3


def test_no_visual_tokens(tiny):
    inputs = tiny.processor(text=["what is this"], return_tensors="pt")
    batch = adapter_for(tiny.model).layouts_for(inputs)
    assert not batch.has_visual and batch.layouts[0].modalities() == (Modality.TEXT,)


def test_qwen_mismatched_grid_is_a_clear_error(tiny_qwen, clip):
    inputs = _process(tiny_qwen, clip, [tiny_qwen.messages()], 1)
    adapter = adapter_for(tiny_qwen.model)
    bad = torch.tensor([[8, 8, 10]])  # 8 * 4 * 5 = 160 tokens, the run holds 128
    with pytest.raises(AdapterError, match="placeholder run"):
        adapter.layouts(inputs["input_ids"], inputs["attention_mask"], video_grid_thw=bad)
    with pytest.raises(AdapterError, match="whole 2x2"):
        adapter.layouts(inputs["input_ids"], video_grid_thw=torch.tensor([[8, 7, 8]]))
    with pytest.raises(AdapterError, match="describes only 0"):
        adapter.layouts(inputs["input_ids"])
    two = torch.tensor([[4, 8, 8], [4, 8, 8]])  # 64 + 64 = 128 tokens: two videos back to back fit exactly
    lay = adapter.layouts(inputs["input_ids"], video_grid_thw=two).layouts[0]
    assert [s.grid.frames for s in lay.segments_of("video")] == [4, 4]
    with pytest.raises((AdapterError, LayoutError)):
        adapter.layouts(inputs["input_ids"], video_grid_thw=torch.tensor([[4, 8, 8]]))  # 64 of 128: run left over


def test_llava_mismatched_frames_is_a_clear_error(tiny_llava, clip):
    inputs = _process(tiny_llava, clip, [tiny_llava.messages()], 1)
    adapter = adapter_for(tiny_llava.model)
    with pytest.raises(AdapterError, match="placeholder run"):
        adapter.layouts(inputs["input_ids"], video_frames=[32])
    with pytest.raises(AdapterError, match="describes 2"):
        adapter.layouts(inputs["input_ids"], video_frames=[16, 16])


def test_geometry(tiny):
    g = adapter_for(tiny.model).geometry()
    assert (g.num_layers, g.num_q_heads, g.num_kv_heads, g.head_dim) == (2, 4, 2, 16)


def test_attention_mask_with_holes_is_rejected(tiny_qwen):
    inputs = tiny_qwen.processor(text=["what is this"], return_tensors="pt")
    mask = inputs["attention_mask"].clone()
    mask[0, 1] = 0
    with pytest.raises(AdapterError, match="contiguous"):
        adapter_for(tiny_qwen.model).layouts(inputs["input_ids"], mask)


@pytest.mark.parametrize("hw", [(112, 112), (90, 200), (300, 120)], ids=["square", "wide", "tall"])
def test_llava_image_structure(tiny_llava, hw):
    """One image: base P x P grid + unpadded high-res grid with a newline per row; several images: P x P + newline
    each. The layout covers exactly the processor's placeholder runs."""
    from mmi_models import moving_shapes_frames

    img = moving_shapes_frames(1, *hw)[0]
    inputs = tiny_llava.processor(
        text=["<image>\ndescribe", "<image> and <image> what"], images=[[img], [img, img]], return_tensors="pt",
        padding=True,
    )  # fmt: skip
    adapter = adapter_for(tiny_llava.model)
    batch = adapter.layouts_for(inputs)
    single, multi = batch.layouts
    base, hi = single.segments_of(Modality.IMAGE)
    assert base.grid == VisualGrid(1, 8, 8) and hi.grid.row_extra == 1 and hi.start == base.end
    rows, cols = hi.grid.rows, hi.grid.cols
    assert {"square": rows == cols, "wide": cols > rows, "tall": rows > cols}[
        "square" if hw[0] == hw[1] else ("wide" if hw[1] > hw[0] else "tall")
    ]
    ids = inputs["input_ids"][0, batch.offsets[0] :]
    assert int((ids == adapter.image_token_id).sum()) == base.length + hi.length
    grids = [s.grid for s in multi.segments_of(Modality.IMAGE)]
    assert grids == [VisualGrid(1, 8, 8)] * 2
    ids1 = inputs["input_ids"][1, batch.offsets[1] :]
    assert int((ids1 == adapter.image_token_id).sum()) == 2 * (64 + 1)  # each image: base grid + one newline
    with pytest.raises(AdapterError, match="image_sizes describes 4"):
        adapter.layouts(inputs["input_ids"], inputs["attention_mask"], image_sizes=torch.tensor([[112, 112]] * 4))
