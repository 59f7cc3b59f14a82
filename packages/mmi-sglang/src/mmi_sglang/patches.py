"""The patch ledger: every change the plugin makes to SGLang code, with why, how and when it can go.

It is empty: the plugin uses only SGLang's public extension points (the ``sglang.srt.plugins`` entry point,
``register_attention_backend``, ``add_attention_backend_choices``) and reads ``ForwardBatch`` / pool objects without
modifying them. Add an entry here (and a test that checks the target still exists) before patching anything.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PATCH_LEDGER", "Patch"]


@dataclass(frozen=True)
class Patch:
    """One patch of SGLang code: ``target`` (dotted path), ``why``, ``how``, ``remove_when``."""

    target: str
    why: str
    how: str
    remove_when: str


PATCH_LEDGER: tuple[Patch, ...] = ()
