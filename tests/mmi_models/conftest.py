"""Shared fixtures of the mmi-models tests: tiny checkpoints (written once per session, offline) and an mp4 clip."""

from __future__ import annotations

import os

# Nothing in these tests may download: make any accidental hub access fail loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mmi_models import write_moving_shapes_mp4, write_tiny_checkpoint

PROMPT = "describe the video"


@dataclass
class Tiny:
    family: str
    path: Path
    processor: Any
    model: Any

    def messages(self, text: str = PROMPT, video: bool = True) -> str:
        content = ([{"type": "video"}] if video else []) + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(frames uint8 [16, 112, 112, 3], VideoMetadata) decoded from a real mp4 by transformers' PyAV loader."""
    from transformers.video_utils import load_video

    path = write_moving_shapes_mp4(tmp_path_factory.mktemp("video") / "shapes.mp4", num_frames=16, fps=4)
    return load_video(str(path), backend="pyav")


def _tiny(family: str, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = write_tiny_checkpoint(family, tmp_path_factory.mktemp(family))
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return Tiny(family, path, processor, model)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _tiny("qwen2_5_vl", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _tiny("llava_onevision", tmp_path_factory)


@pytest.fixture(params=["qwen2_5_vl", "llava_onevision"])
def tiny(request: pytest.FixtureRequest) -> Tiny:
    return request.getfixturevalue("tiny_qwen" if request.param == "qwen2_5_vl" else "tiny_llava")
