#!/usr/bin/env python3
# ruff: noqa: E402, E501  (vendored harness script: lazy import after writing configs; long Jinja lines)
"""Write a weightless Qwen2.5-VL-7B-shaped checkpoint directory for `--load-format dummy`.

Files: config.json (real 7B-Instruct dimensions), generation_config.json, preprocessor_config.json,
video_preprocessor_config.json, chat_template.json, tokenizer.json, tokenizer_config.json.
The tokenizer is a byte-level BPE with no merges (1 token per UTF-8 byte, ids 0..255 are bytes, 256..151642 are
never-produced fillers) plus Qwen2.5-VL's 22 special tokens at their real ids 151643..151664, so
<|video_pad|> = 151656 etc. Needs only the `tokenizers` package.
Usage: make_ckpt.py OUT_DIR
"""

import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "ckpt-qwen2_5_vl_7b_dummy"
os.makedirs(out, exist_ok=True)
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
FIRST_SPECIAL = 151643

config = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 152064,
    "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "in_channels": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
        "model_type": "qwen2_5_vl",
    },
}
proc = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "Qwen2_5_VLProcessor",
}
CHAT = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content or 'video_url' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def dump(name, obj):
    with open(os.path.join(out, name), "w") as f:
        json.dump(obj, f, indent=1)


dump("config.json", config)
dump(
    "generation_config.json",
    {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": False},
)
dump("preprocessor_config.json", dict(proc, image_processor_type="Qwen2VLImageProcessor"))
dump(
    "video_preprocessor_config.json",
    dict(proc, video_processor_type="Qwen2VLVideoProcessor", min_pixels=100352, max_pixels=602112),
)
dump("chat_template.json", {"chat_template": CHAT})

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
for i in range(len(vocab), FIRST_SPECIAL):
    vocab[f"<|filler_{i}|>"] = i
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
for i, s in enumerate(SPECIALS):
    assert tok.token_to_id(s) == FIRST_SPECIAL + i, (s, tok.token_to_id(s))
tok.save(os.path.join(out, "tokenizer.json"))
dump(
    "tokenizer_config.json",
    {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1048576,
        "clean_up_tokenization_spaces": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "split_special_tokens": False,
        "added_tokens_decoder": {
            str(FIRST_SPECIAL + i): {
                "content": s,
                "special": True,
                "normalized": False,
                "lstrip": False,
                "rstrip": False,
                "single_word": False,
            }
            for i, s in enumerate(SPECIALS)
        },
        "chat_template": CHAT,
    },
)
print("wrote", out, sorted(os.listdir(out)))
