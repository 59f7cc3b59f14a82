"""Layouts of the remote-code families (LongVILA, VideoChat-Flash, LLaVA-Video's LLaVA-NeXT code) and Qwen3-VL on
synthetic inputs built from their published token structure, plus the adapter registry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmi_core import Modality, VisualGrid
from mmi_models import AdapterError, adapter_for, get_adapter, known_architectures
from mmi_models.families.expanded import MEDIA_TOKEN_ID

M = MEDIA_TOKEN_ID


def _config(arch: str, **kw):
    base = dict(
        architectures=[arch], num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096
    )
    return SimpleNamespace(**{**base, **kw})


def test_registry_lists_known_architectures():
    names = known_architectures()
    for arch in (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "LlavaOnevisionForConditionalGeneration",
        "LlavaQwenForCausalLM",
        "LlavaLlamaModel",
        "VideoChatFlashQwenForCausalLM",
    ):
        assert arch in names
    assert get_adapter("LlavaLlamaModel").family == "longvila"
    with pytest.raises(AdapterError, match=r"no mmi adapter for architecture 'BertModel'.*Qwen2_5_VLForCond"):
        get_adapter("BertModel")
    with pytest.raises(AdapterError, match="known architectures"):
        adapter_for(_config("GPT2LMHeadModel"))


def test_longvila_default_frames():
    ad = adapter_for(_config("LlavaLlamaModel"))
    ids = torch.tensor([5, 6, M, M, M, 7, 8])  # three frames, each an image token followed by "\n" in the prompt
    # VILA expands each frame to 14x14 tokens; the "\n" text token after each frame is the frame's suffix. Here the
    # three media tokens are back to back (one per frame): each is a 1-frame video of 14x14 + 1 separator
    batch = ad.layouts(ids, video_frames=[1, 1, 1])
    lay = batch.layouts[0]
    grids = [s.grid for s in lay.segments_of(Modality.VIDEO)]
    assert grids == [VisualGrid(1, 14, 14, frame_suffix=1)] * 3
    assert lay.num_tokens == 7 - 3 + 3 * 197
    assert ad.geometry().num_kv_heads == 8


def test_longvila_one_media_token_per_video_and_256_tokens_per_frame():
    ad = adapter_for(_config("LlavaLlamaModel", image_size=448))  # the paper's 256 tokens per frame
    batch = ad.layouts(torch.tensor([[1, 2, M, 3], [1, M, 2, 3]]), video_frames=[64, 8])
    a, b = batch.layouts
    assert a.segments_of("video")[0].grid == VisualGrid(64, 16, 16, frame_suffix=1)
    assert a.tokens_per_frame == 257 and b.tokens_per_frame == 257
    assert (a.segments[0].length, a.segments[-1].length) == (2, 1)
    # VILA pads after expansion on the right by default: offsets 0, width = longest row
    assert batch.offsets == (0, 0) and batch.num_tokens == a.num_tokens
    left = adapter_for(_config("LlavaLlamaModel", image_size=448, tokenizer_padding_side="left"))
    lb = left.layouts(torch.tensor([[1, 2, M, 3], [1, M, 2, 3]]), video_frames=[64, 8])
    assert lb.offsets == (0, a.num_tokens - b.num_tokens)


def test_videochat_flash_16_tokens_per_frame():
    ad = adapter_for(_config("VideoChatFlashQwenForCausalLM", num_attention_heads=28, num_key_value_heads=4))
    lay = ad.layouts(torch.tensor([9, 9, M, 9]), video_frames=[512]).layouts[0]
    (v,) = lay.segments_of("video")
    assert v.grid == VisualGrid(512, 1, 16) and v.start == 2 and lay.num_tokens == 3 + 512 * 16
    assert ad.tokens_per_frame(video_frames=[512]) == [16]
    with pytest.raises(AdapterError, match="describes only 0"):
        ad.layouts(torch.tensor([9, M]))


@pytest.mark.parametrize(
    ("position", "grid", "trailing"),
    [
        ("grid", VisualGrid(32, 14, 14, row_extra=1), 0),
        ("frame", VisualGrid(32, 14, 14, frame_suffix=1), 0),
        ("one_token", VisualGrid(32, 14, 14), 1),
        ("nothing", VisualGrid(32, 14, 14), 0),
    ],
)
def test_llava_video_remote_newlines(position, grid, trailing):
    ad = adapter_for(_config("LlavaQwenForCausalLM", mm_newline_position=position))
    lay = ad.layouts(torch.tensor([1, M, 2]), video_frames=[32]).layouts[0]
    (v,) = lay.segments_of("video")
    assert v.grid == grid
    assert lay.num_tokens == 2 + grid.num_tokens + trailing
    if position == "grid":
        assert lay.tokens_per_frame == 14 * 15  # a newline after every row breaks a pure 196 stride
        assert int(grid.on_grid_mask().sum()) == 32 * 196


def test_llava_video_average_pooling_floor():
    ad = adapter_for(_config("LlavaQwenForCausalLM", mm_spatial_pool_mode="average"))
    assert ad.tokens_per_frame(video_frames=[4]) == [13 * 14]  # 27 // 2 = 13 rows of 13 + newline


def _qwen3_config():
    text = SimpleNamespace(num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    return SimpleNamespace(
        architectures=["Qwen3VLForConditionalGeneration"],
        video_token_id=99,
        image_token_id=98,
        vision_config=SimpleNamespace(spatial_merge_size=2),
        text_config=text,
    )


def test_qwen3_vl_timestamps_are_frame_prefixes():
    ad = adapter_for(_qwen3_config())
    vs, ve, pad = 7, 8, 99

    def frame(ts_tokens: int) -> list[int]:
        return [3] * ts_tokens + [vs] + [pad] * 4 + [ve]

    # frames 0..2 have 3-token timestamps, frame 3 a 4-token one -> two segments
    ids = torch.tensor([1, 2, *frame(3), *frame(3), *frame(3), *frame(4), 5])
    lay = ad.layouts(ids, video_grid_thw=torch.tensor([[4, 4, 4]])).layouts[0]
    vids = lay.segments_of("video")
    assert [s.grid for s in vids] == [
        VisualGrid(3, 2, 2, frame_prefix=4, frame_suffix=1),
        VisualGrid(1, 2, 2, frame_prefix=5, frame_suffix=1),
    ]
    assert vids[0].start == 2 and vids[-1].end == ids.numel() - 1
    on = torch.cat([s.grid.on_grid_mask() for s in vids])
    assert bool((ids[vids[0].start : vids[-1].end][on] == pad).all())
    with pytest.raises(AdapterError, match="4 frames of 6 tokens"):
        ad.layouts(ids, video_grid_thw=torch.tensor([[4, 4, 6]]))
    assert ad.geometry().head_dim == 128
