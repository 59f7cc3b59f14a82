"""SGLang plugin entry point (``[project.entry-points."sglang.srt.plugins"] mmi = "mmi_sglang.plugin:register"``).

SGLang calls `register` through ``sglang.srt.plugins.load_plugins()`` in ``launch_server``, ``sglang serve``,
``Engine.__init__`` and every scheduler process. It is small, lazy (sglang is imported inside it, the backend
module only when SGLang builds the backend) and idempotent.
"""

from __future__ import annotations

import logging

__all__ = ["BACKEND_NAME", "register"]

BACKEND_NAME = "mmi"
logger = logging.getLogger("mmi_sglang")
_registered = False


def _create_backend(model_runner):
    from mmi_sglang.backend import MMIAttnBackend

    return MMIAttnBackend(model_runner)


def register() -> None:
    """Register the ``mmi`` attention backend and its CLI choice with SGLang; log the active settings once.

    Safe to call any number of times. Bad settings are logged here and raised (`mmi_core.ConfigError`) when SGLang
    builds the backend, so that the server stops with the message instead of rejecting ``--attention-backend mmi``.
    """
    global _registered
    if _registered:
        return
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    if BACKEND_NAME not in ATTENTION_BACKENDS:
        register_attention_backend(BACKEND_NAME)(_create_backend)
    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    _registered = True

    from mmi_core import ConfigError
    from mmi_sglang.config import load_config

    try:
        cfg = load_config()
    except ConfigError as e:
        logger.error("mmi: attention backend registered, but its settings are invalid:\n%s", e)
        return
    logger.info("mmi: attention backend 'mmi' registered; settings %s", cfg.model_dump_json())
