"""Tiny, random-weight, fully local checkpoints of real architectures, for tests and demos.

`write_tiny_checkpoint(family, path)` writes a directory that ``from_pretrained`` (model, processor, tokenizer)
loads offline: a config with tiny dimensions, random weights (safetensors), a word-level tokenizer built here with
the ``tokenizers`` library whose vocabulary holds the family's real special tokens (``<|video_pad|>``,
``<|vision_start|>`` ... / ``<image>``, ``<video>``) at the ids the config names, and the family's real image and
video processor configs (sizes shrunk so a clip gives a few hundred tokens). Nothing is downloaded.

CLI: ``mmi-tiny-checkpoint {qwen2_5_vl,llava_onevision,qwen2_vl,qwen3_vl} OUT_DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import torch

__all__ = ["TINY_FAMILIES", "main", "write_tiny_checkpoint"]

TinyFamily = Literal["qwen2_5_vl", "llava_onevision", "qwen2_vl", "qwen3_vl"]
TINY_FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "llava_onevision", "qwen2_vl", "qwen3_vl")

# Plain words of the tiny vocabulary: enough for prompts in tests; anything else maps to <unk>.
_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "on",
    "and",
    "is",
    "are",
    "what",
    "which",
    "who",
    "where",
    "when",
    "how",
    "describe",
    "video",
    "image",
    "frame",
    "shape",
    "moving",
    "red",
    "green",
    "blue",
    "square",
    "circle",
    "left",
    "right",
    "up",
    "down",
    "color",
    "first",
    "last",
    "what's",
    "happening",
    "this",
    "that",
    "there",
    "here",
    "system",
    "user",
    "assistant",
    "you",
    "helpful",
    "please",
    "answer",
    "question",
    "one",
    "two",
    "three",
    "four",
    "five",
    "yes",
    "no",
]
_PUNCT = list(".,?!:;'\"()[]{}<>-_/\\|=+*&^%$#@~`0123456789")
_VOCAB_SIZE = 512

_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_LLAVA_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")

_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}<video>\n{% elif c['type'] == 'image' %}"
    "<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tokenizer(specials: tuple[str, ...], chat_template: str):
    """A word-level tokenizer: ids 0..n_words-1 plain words, then the special tokens at the end of the vocabulary
    (ids ``_VOCAB_SIZE - len(specials) ..``). Returns (transformers tokenizer, {special: id})."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", *_WORDS, *_PUNCT]
    first_special = _VOCAB_SIZE - len(specials)
    if len(words) > first_special:
        raise AssertionError("tiny vocabulary overflow")  # a programming error in this module, not user input
    vocab = {w: i for i, w in enumerate(words)}
    # Fill the gap with filler tokens so that the special ids are fixed and the embedding matrix is fully used.
    for i in range(len(words), first_special):
        vocab[f"tok{i}"] = i
    special_ids = {s: first_special + i for i, s in enumerate(specials)}
    vocab.update(special_ids)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word-level pieces with spaces
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(specials),
        padding_side="left",
    )
    hf.chat_template = chat_template
    return hf, special_ids


def _qwen2_5_vl(path: Path) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer, ids = _build_tokenizer(_QWEN_SPECIALS, _QWEN_CHAT_TEMPLATE)
    text = _qwen_text(ids, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        **_qwen_ids(ids),
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # Pixel budgets: a 112x112 frame -> 8x8 patches -> 4x4 = 16 tokens per (merged) frame.
    px = dict(size={"shortest_edge": 28 * 28, "longest_edge": 224 * 224})
    image_processor = Qwen2VLImageProcessor(**px)
    video_processor = Qwen2VLVideoProcessor(**px, fps=2.0, do_sample_frames=False)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=_QWEN_CHAT_TEMPLATE,
    )
    _save(model, processor, ids, path)


def _qwen_text(ids: dict[str, int], **extra: object) -> dict[str, object]:
    return dict(
        vocab_size=_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **extra,
    )


def _qwen_ids(ids: dict[str, int]) -> dict[str, int]:
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _save(model, processor, ids: dict[str, int], path: Path) -> None:
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _qwen2_vl(path: Path) -> None:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer, ids = _build_tokenizer(_QWEN_SPECIALS, _QWEN_CHAT_TEMPLATE)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14)
    config = Qwen2VLConfig(
        text_config=_qwen_text(ids, rope_parameters=rope),
        vision_config=vision,
        tie_word_embeddings=False,
        **_qwen_ids(ids),
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    px = dict(size={"shortest_edge": 28 * 28, "longest_edge": 224 * 224})
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**px),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**px, do_sample_frames=False),
        chat_template=_QWEN_CHAT_TEMPLATE,
    )
    _save(Qwen2VLForConditionalGeneration(config).eval(), processor, ids, path)


def _qwen3_vl(path: Path) -> None:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer, ids = _build_tokenizer(_QWEN_SPECIALS, _QWEN_CHAT_TEMPLATE)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=16,
        num_position_embeddings=64,
        deepstack_visual_indexes=[1],
    )
    config = Qwen3VLConfig(
        text_config=_qwen_text(ids, head_dim=16, rope_parameters=rope),
        vision_config=vision,
        tie_word_embeddings=False,
        **_qwen_ids(ids),
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    # 128x128 frames -> 8x8 patches of 16 -> 4x4 = 16 tokens per merged frame, each with its timestamp
    px = dict(size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256}, patch_size=16)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**px, merge_size=2),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**px, do_sample_frames=False),
        chat_template=_QWEN_CHAT_TEMPLATE,
    )
    _save(Qwen3VLForConditionalGeneration(config).eval(), processor, ids, path)


def _llava_onevision(path: Path) -> None:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer, ids = _build_tokenizer(_LLAVA_SPECIALS, _LLAVA_CHAT_TEMPLATE)
    image_size, patch = 112, 14  # 8x8 patches per frame, pooled 2x2 -> 4x4 = 16 video tokens per frame
    text = dict(
        model_type="qwen2",
        vocab_size=_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]],
        tie_word_embeddings=False,
    )
    config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    size = {"height": image_size, "width": image_size}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=config.image_grid_pinpoints)
    video_processor = LlavaOnevisionVideoProcessor(size=size, do_sample_frames=False)
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=(image_size // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=_LLAVA_CHAT_TEMPLATE,
    )
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)


def write_tiny_checkpoint(family: TinyFamily | str, path: str | Path, *, seed: int = 0) -> Path:
    """Write a complete tiny checkpoint of ``family`` (one of `TINY_FAMILIES`) into directory ``path``.

    The directory holds config.json, model.safetensors, generation_config.json, tokenizer files, and the
    processor / image-processor / video-processor configs; ``AutoModelForImageTextToText.from_pretrained(path)`` and
    ``AutoProcessor.from_pretrained(path)`` load it with ``HF_HUB_OFFLINE=1``. Weights are random (``seed``).
    Raises ValueError for an unknown family. Returns the directory.
    """
    writers = {
        "qwen2_5_vl": _qwen2_5_vl,
        "llava_onevision": _llava_onevision,
        "qwen2_vl": _qwen2_vl,
        "qwen3_vl": _qwen3_vl,
    }
    if family not in writers:
        raise ValueError(f"unknown tiny-checkpoint family {family!r}; known: {', '.join(TINY_FAMILIES)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        writers[family](out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmi-tiny-checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=TINY_FAMILIES)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_tiny_checkpoint(args.family, args.out_dir, seed=args.seed)
    print(f"wrote a tiny {args.family} checkpoint to {out}")


if __name__ == "__main__":
    main()
