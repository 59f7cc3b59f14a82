"""Scoring of NIAH answers: a response is right when it names the answer and no other choice (whole words, case and
punctuation ignored); `summarize` gives accuracy per (length, depth) cell."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["score_answer", "summarize"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def score_answer(response: str, answer: str, choices: Sequence[str]) -> float:
    """1.0 when ``response`` contains the word ``answer`` and none of the other ``choices``, else 0.0.

    Raises ValueError when ``answer`` is not one of ``choices``."""
    if answer not in choices:
        raise ValueError(f"answer {answer!r} is not one of the choices {list(choices)}")
    words = set(_words(response))
    named = {c for c in choices if c.lower() in words}
    return 1.0 if named == {answer} else 0.0


def summarize(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean score per (task, needle_in, length, depth) over result dicts with those keys and ``score``; sorted."""
    cells: dict[tuple, list[float]] = {}
    for r in results:
        cells.setdefault((r["task"], r["needle_in"], r["length"], r["depth"]), []).append(float(r["score"]))
    return [
        {"task": k[0], "needle_in": k[1], "length": k[2], "depth": k[3], "accuracy": sum(v) / len(v), "n": len(v)}
        for k, v in sorted(cells.items())
    ]
