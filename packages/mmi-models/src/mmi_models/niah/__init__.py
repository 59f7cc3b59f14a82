"""V-NIAH / MM-NIAH accuracy harness: generators of real mp4 haystacks with a needle, a scorer, runners against an
OpenAI-compatible endpoint or a transformers model (with or without MMInference), and a depth x length heat map."""

from mmi_models.niah.generators import (
    NEEDLE_COLORS,
    NiahPart,
    NiahSample,
    make_mm_niah,
    make_v_niah,
    needle_frame,
    write_mp4,
)
from mmi_models.niah.runner import HFAnswerer, OpenAIChatAnswerer, chat_content, heatmap_png, run_niah
from mmi_models.niah.scorer import score_answer, summarize

__all__ = [
    "NEEDLE_COLORS",
    "HFAnswerer",
    "NiahPart",
    "NiahSample",
    "OpenAIChatAnswerer",
    "chat_content",
    "heatmap_png",
    "make_mm_niah",
    "make_v_niah",
    "needle_frame",
    "run_niah",
    "score_answer",
    "summarize",
    "write_mp4",
]
