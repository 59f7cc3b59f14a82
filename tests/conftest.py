"""Shared test fixtures and marker handling for every package's tests.

Markers (declared in the root pyproject.toml): ``gpu`` tests are skipped without CUDA; ``sglang`` tests are skipped
when sglang cannot be imported. Keep-set pictures: ``#`` = kept (query, key) pair, ``.`` = not kept, one line per
query row, one character per key, original order.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    has_sglang = importlib.util.find_spec("sglang") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "sglang" in item.keywords and not has_sglang:
            item.add_marker(pytest.mark.skip(reason="needs the sglang package"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same torch RNG state, so random inputs are reproducible per test."""
    torch.manual_seed(0)


def parse_picture(text: str) -> torch.Tensor:
    """bool [rows, cols] from a picture of ``#``/``.`` lines (blank lines and surrounding spaces ignored)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    widths = {len(line) for line in lines}
    assert len(widths) == 1, f"ragged picture: widths {sorted(widths)}"
    assert set("".join(lines)) <= {"#", "."}, "pictures use only '#' and '.'"
    return torch.tensor([[c == "#" for c in line] for line in lines], dtype=torch.bool)


def draw_picture(mask: torch.Tensor) -> str:
    """The picture of a bool [rows, cols] mask (inverse of `parse_picture`), for readable assertion messages."""
    return "\n".join("".join("#" if x else "." for x in row) for row in mask.tolist())


@pytest.fixture
def picture() -> Callable[[str], torch.Tensor]:
    return parse_picture


@pytest.fixture
def draw() -> Callable[[torch.Tensor], str]:
    return draw_picture


@pytest.fixture
def device() -> torch.device:
    """The GPU when there is one, else the CPU (for tests that run on both)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
