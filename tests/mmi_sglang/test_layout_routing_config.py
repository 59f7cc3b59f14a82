"""mmi-sglang pieces that need no sglang: settings, layouts from SGLang-shaped mm_inputs, per-batch routing, lazy
import. The multimodal items here are duck-typed stand-ins with the attributes SGLang's ``MultimodalDataItem`` has
(the real objects are exercised in test_sglang_backend.py)."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from mmi_core import ConfigError, Dense, HeadConfigs, LayoutError, ModalityLayout, VisualGrid
from mmi_sglang import ENV_VARS, PATCH_LEDGER, MMIServeConfig, load_config, request_layout, resolve_head_configs
from mmi_sglang.routing import DENSE_REASONS, route_batch


class _Mod(enum.Enum):  # same member names as sglang's Modality
    IMAGE = 1
    VIDEO = 2
    AUDIO = 3


def _item(modality: str, offsets, grid=None):
    it = SimpleNamespace(modality=_Mod[modality], offsets=offsets)
    if grid is not None:
        setattr(it, "video_grid_thw" if modality == "VIDEO" else "image_grid_thw", torch.tensor(grid))
    return it


def _mm(*items):
    return SimpleNamespace(mm_items=list(items))


# -- layouts ------------------------------------------------------------------------------------------------------
def test_layout_two_videos_and_an_image():
    # text 5 | video t=2 of 4x6 (merge 2 -> 2x3 = 6 tok/frame) | text 3 | image 1x(6x4 -> 3x2) | text 2 | video t=3 2x2
    mm = _mm(
        _item("VIDEO", [(5, 16), (26, 28)], [[2, 4, 6], [3, 2, 2]]),
        _item("IMAGE", [(20, 25)], [[1, 6, 4]]),
        _item("AUDIO", [(29, 30)]),
    )
    got = request_layout(mm, 32, merge=2)
    want = ModalityLayout.from_parts(
        [
            ("text", 5),
            ("video", VisualGrid(2, 2, 3)),
            ("text", 3),
            ("image", VisualGrid(1, 3, 2)),
            ("video", VisualGrid(3, 1, 1)),
            ("text", 3),
        ]
    )
    assert got == want


def test_layout_per_frame_items_share_one_grid_row():
    # Qwen3-VL style: one item per frame with timestamps between frames; the grid row is consumed frame by frame
    mm = _mm(_item("VIDEO", [(3, 6), (9, 12), (15, 18)], [[3, 4, 4]]))
    got = request_layout(mm, 20, merge=2)
    parts = [("text", 3), ("video", VisualGrid(1, 2, 2)), ("text", 2), ("video", VisualGrid(1, 2, 2)), ("text", 2)]
    assert got == ModalityLayout.from_parts([*parts, ("video", VisualGrid(1, 2, 2)), ("text", 1)])


def test_layout_chunk_ends_inside_a_frame():
    # video of 3 frames x 6 tokens at [4, 22); the chunk stops at 17: two whole frames + a 1-token partial frame
    mm = _mm(_item("VIDEO", [(4, 21)], [[3, 4, 6]]))
    got = request_layout(mm, 17, merge=2)
    want = ModalityLayout.from_parts([("text", 4), ("video", VisualGrid(2, 2, 3)), ("video", VisualGrid(1, 1, 1))])
    assert got == want
    assert request_layout(mm, 3, merge=2) == ModalityLayout.text(3)


def test_layout_merge_guessed_when_config_has_none():
    mm = _mm(_item("VIDEO", [(0, 11)], [[2, 4, 6]]))
    assert request_layout(mm, 12, merge=None) == ModalityLayout.from_parts([("video", VisualGrid(2, 2, 3))])


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([_item("VIDEO", [(0, 10)], [[2, 4, 6]])], "whole frames"),  # 11 tokens, frames of 6
        ([_item("VIDEO", [(0, 11)], [[3, 4, 6]])], "more frames"),  # grid says 3 frames, span holds 2
        ([_item("VIDEO", [(0, 5), (6, 11)], [[1, 4, 6]])], "more spans"),
        ([_item("IMAGE", [(0, 5)], [[1, 4, 6]]), _item("IMAGE", [(3, 8)], [[1, 4, 6]])], "overlap"),
        ([_item("VIDEO", [(0, 5)], [[1, 4]])], "3 numbers"),
    ],
    ids=["not-whole-frames", "too-few-frames", "too-many-spans", "overlap", "bad-grid-shape"],
)
def test_layout_errors_name_the_problem(items, match):
    with pytest.raises(LayoutError, match=match):
        request_layout(_mm(*items), 40, merge=2)


# -- routing ------------------------------------------------------------------------------------------------------
def _cfg(**kw):
    return MMIServeConfig(**{"min_seq_len": 16, "min_visual_tokens": 8, "min_chunk_tokens": 4, **kw})


def test_route_batch_reasons_and_rows():
    video = _mm(_item("VIDEO", [(2, 25)], [[4, 4, 6]]))  # 24 video tokens
    small = _mm(_item("IMAGE", [(1, 6)], [[1, 4, 6]]))  # 6 image tokens
    broken = _mm(_item("VIDEO", [(0, 10)], [[2, 4, 6]]))
    routes = route_batch(
        _cfg(),
        prefix_lens=[0, 10, 0, 29, 0, 0],
        extend_lens=[30, 20, 12, 1, 20, 20],
        mm_inputs=[video, video, None, video, small, broken],
        merge=2,
    )
    assert [r.reason for r in routes.requests] == [
        "sparse",
        "sparse",
        "text_only",
        "short_chunk",
        "few_visual_tokens",
        "layout_error",
    ]
    assert [r.q_start for r in routes.requests] == [0, 30, 50, 62, 63, 83]
    assert routes.requests[1].layout.num_tokens == 30 and routes.requests[1].n_k == 30
    assert "whole frames" in routes.requests[5].error
    assert routes.counts() == {"sparse": 2, "text_only": 1, "short_chunk": 1, "few_visual_tokens": 1, "layout_error": 1}
    assert {r.reason for r in routes.requests} - {"sparse"} <= set(DENSE_REASONS)
    short = route_batch(_cfg(min_seq_len=100), [0], [30], [video], 2)
    assert short.requests[0].reason == "short_sequence"
    off = route_batch(_cfg(enabled=False), [0], [30], [video], 2)
    assert off.requests[0].reason == "disabled" and not off.any_sparse
    none = route_batch(_cfg(), [0], [30], [video], 2, sparse_available=False)
    assert none.requests[0].reason == "no_sparse_impl"


def test_route_batch_rejects_inconsistent_lists():
    with pytest.raises(ValueError, match="mm_inputs"):
        route_batch(_cfg(), [0, 0], [4, 4], [None], 2)


# -- settings -----------------------------------------------------------------------------------------------------
def test_config_env_and_json(tmp_path):
    f = tmp_path / "mmi.json"
    f.write_text(json.dumps({"min_seq_len": 100, "inner_backend": "triton", "timing": True}))
    cfg = load_config({"MMI_SGLANG_CONFIG": str(f), "MMI_MIN_SEQ_LEN": "200", "MMI_ENABLED": "off"})
    assert (cfg.min_seq_len, cfg.inner_backend, cfg.timing, cfg.enabled) == (200, "triton", True, False)
    assert load_config({}) == MMIServeConfig()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"MMI_MIN_SEQ_LEN": "-3"}, "MMI_MIN_SEQ_LEN"),
        ({"MMI_MIN_SEQ_LEN": "lots"}, "MMI_MIN_SEQ_LEN"),
        ({"MMI_INNER_BACKEND": "mmi"}, "cannot be 'mmi'"),
        ({"MMI_SPARSE_IMPL": "fast"}, "MMI_SPARSE_IMPL"),
        ({"MMI_TIMING": "maybe"}, "MMI_TIMING"),
        ({"MMI_HEAD_CONFIGS": "/nonexistent/hc.json"}, "does not exist"),
        ({"MMI_SGLANG_CONFIG": "/nonexistent/mmi.json"}, "does not exist"),
    ],
    ids=["negative", "not-a-number", "inner-is-mmi", "bad-impl", "bad-bool", "missing-head-configs", "missing-file"],
)
def test_config_errors_name_the_variable(env, match):
    with pytest.raises(ConfigError, match=match):
        load_config(env)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config({"MMI_SGLANG_CONFIG": str(bad)})
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"min_seq_lenn": 3}))
    with pytest.raises(ConfigError, match="min_seq_lenn"):
        load_config({"MMI_SGLANG_CONFIG": str(extra)})


def test_head_configs_resolution(tmp_path):
    hc = HeadConfigs.uniform(3, 8, 4, Dense())
    path = tmp_path / "hc.json"
    hc.save(path)
    cfg = MMIServeConfig(head_configs=str(path))
    hf = SimpleNamespace(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"])
    r1 = resolve_head_configs(cfg, hf, 3, 8, 4, tp_rank=1, tp_size=2)
    assert (r1.num_q_heads, r1.num_kv_heads) == (4, 2)
    with pytest.raises(ConfigError, match="the model has"):
        resolve_head_configs(cfg, hf, 4, 8, 4)
    path.write_text('{"num_layers": 3}')
    with pytest.raises(ConfigError, match="invalid head configs"):
        resolve_head_configs(cfg, hf, 3, 8, 4)


def test_head_configs_unknown_family_is_a_clear_error():
    # whether or not mmi-models ships defaults yet, an unknown family must say which variable to set
    hf = SimpleNamespace(model_type="no_such_family", architectures=["NoSuchModel"])
    with pytest.raises(ConfigError, match="MMI_HEAD_CONFIGS"):
        resolve_head_configs(MMIServeConfig(), hf, 2, 4, 2)


def test_every_env_var_documented_in_readme():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "packages" / "mmi-sglang" / "README.md").read_text()
    for name in ENV_VARS:
        assert f"`{name}`" in readme, f"{name} missing from the README's env table"
    assert PATCH_LEDGER == ()  # no SGLang code is patched; the README says so


def test_import_is_lazy():
    code = (
        "import sys, mmi_sglang; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sglang', 'mmi_kernels', 'triton')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_route_stats_counts_and_prometheus(caplog):
    from prometheus_client import REGISTRY

    from mmi_sglang.stats import RouteStats

    def value(route):
        return REGISTRY.get_sample_value("mmi_extend_requests_total", {"route": route}) or 0.0

    video = _mm(_item("VIDEO", [(2, 25)], [[4, 4, 6]]))
    routes = route_batch(_cfg(), [0, 0], [30, 5], [video, None], 2)
    before = value("sparse"), value("text_only")
    stats = RouteStats(log_interval_s=3600, enable_metrics=True)
    RouteStats(log_interval_s=3600, enable_metrics=True)  # a second backend in the process shares the counters
    with caplog.at_level("INFO", logger="mmi_sglang"):
        stats.add(routes)
        stats.add(routes)
    assert stats.requests == {"sparse": 2, "text_only": 2} and stats.tokens == {"sparse": 60, "text_only": 10}
    assert (value("sparse") - before[0], value("text_only") - before[1]) == (2, 2)
    assert caplog.text.count("2 extend batches") == 0 and "sparse=1 req/30 tok" in caplog.text  # first sparse batch


def test_head_configs_family_default_from_mmi_models():
    """MMI_HEAD_CONFIGS unset: the family default of mmi-models for SGLang's hf_config, checked and TP-sliced."""
    from transformers import Qwen2_5_VLConfig

    import mmi_models

    if not hasattr(mmi_models, "default_head_configs"):
        pytest.skip("mmi_models.default_head_configs has not landed")
    text = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    hf = Qwen2_5_VLConfig(text_config=text, vision_config=dict(depth=1, hidden_size=32, out_hidden_size=64))
    hf.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    hc = resolve_head_configs(MMIServeConfig(), hf, 2, 4, 2, tp_rank=1, tp_size=2)
    assert (hc.num_layers, hc.num_q_heads, hc.num_kv_heads) == (2, 2, 1)
    with pytest.raises(ConfigError, match="the model has"):
        resolve_head_configs(MMIServeConfig(), hf, 3, 4, 2)
