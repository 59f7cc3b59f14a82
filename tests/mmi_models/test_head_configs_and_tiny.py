"""Shipped default head configs and the tiny-checkpoint CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmi_core import ConfigError, Dense, Grid, HeadConfigs, VerticalSlash
from mmi_models import SHIPPED_CONFIGS, adapter_for, default_policy, load_head_configs
from mmi_models.head_configs import NOT_SEARCHED, compact_json, shipped_config_path


@pytest.mark.parametrize("name", sorted(SHIPPED_CONFIGS))
def test_shipped_configs_validate_and_match_the_policy(name):
    hc = HeadConfigs.load(shipped_config_path(name))
    family, model, (layers, hq, hkv, _) = SHIPPED_CONFIGS[name]
    assert (hc.num_layers, hc.num_q_heads, hc.num_kv_heads) == (layers, hq, hkv)
    assert hc.metadata["policy"] == NOT_SEARCHED and hc.metadata["family"] == family
    assert hc == default_policy(layers, hq, hkv, family=family, model=model)  # the file did not drift
    spec = hc.spec(layers - 1, 0)
    assert spec.boundary == "q" and isinstance(spec.pattern, VerticalSlash)
    assert isinstance(spec.by_modality["video"], Grid) and spec.by_modality["video"].stride == "frame"
    assert all(isinstance(h.pattern, Dense) for h in hc.layers[0].heads)


def test_compact_json_round_trips():
    hc = default_policy(3, 4, 2, family="x", model=None)
    assert HeadConfigs.loads(compact_json(hc)) == hc


def test_default_for_published_geometry_is_the_shipped_file():
    text = SimpleNamespace(num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, hidden_size=3584)
    cfg = SimpleNamespace(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        video_token_id=151656,
        image_token_id=151655,
        vision_config=SimpleNamespace(spatial_merge_size=2),
        text_config=text,
    )
    hc = adapter_for(cfg).default_head_configs()
    assert hc.metadata["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    other = SimpleNamespace(**{**vars(cfg), "text_config": SimpleNamespace(**{**vars(text), "num_hidden_layers": 5})})
    hc5 = adapter_for(other).default_head_configs()
    assert hc5.num_layers == 5 and hc5.metadata["policy"] == NOT_SEARCHED


def test_user_override_by_path(tmp_path: Path):
    hc = HeadConfigs.uniform(2, 4, 2, Dense(), metadata={"model": "mine"})
    path = tmp_path / "heads.json"
    hc.save(path)
    assert load_head_configs(path) == hc
    geo = SimpleNamespace(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=16)
    assert load_head_configs(path, geo) == hc
    with pytest.raises(ConfigError, match=r"\(layers, q heads, kv heads\)"):
        load_head_configs(path, SimpleNamespace(num_layers=3, num_q_heads=4, num_kv_heads=2, head_dim=16))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_head_configs(path)


def test_tiny_cli_writes_a_complete_offline_checkpoint(tmp_path: Path, capsys):
    from transformers import AutoConfig, AutoProcessor

    from mmi_models.tiny import main

    main(["qwen2_5_vl", str(tmp_path / "q"), "--seed", "3"])
    assert "tiny qwen2_5_vl" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "q").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    cfg = AutoConfig.from_pretrained(tmp_path / "q")
    proc = AutoProcessor.from_pretrained(tmp_path / "q")
    tok = proc.tokenizer
    for name, token in [
        ("video_token_id", "<|video_pad|>"),
        ("image_token_id", "<|image_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]:
        assert tok.convert_tokens_to_ids(token) == getattr(cfg, name)
    ids = tok("<|vision_start|><|video_pad|><|vision_end|>describe")["input_ids"]
    assert ids[:3] == [cfg.vision_start_token_id, cfg.video_token_id, cfg.vision_end_token_id]
    assert json.loads((tmp_path / "q" / "config.json").read_text())["architectures"] == [
        "Qwen2_5_VLForConditionalGeneration"
    ]
    with pytest.raises(SystemExit):
        main(["gpt2", str(tmp_path / "x")])


def test_tiny_llava_special_tokens(tiny_llava):
    cfg, tok = tiny_llava.model.config, tiny_llava.processor.tokenizer
    assert tok.convert_tokens_to_ids("<video>") == cfg.video_token_id
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_id
    assert cfg.text_config.vocab_size == len(tok)


def test_default_head_configs_from_a_plain_config(tiny_qwen):
    """What mmi-sglang calls: `default_head_configs(hf_config)`."""
    from mmi_models import AdapterError, default_head_configs

    hc = default_head_configs(tiny_qwen.model.config)
    assert (hc.num_layers, hc.num_q_heads, hc.num_kv_heads) == (2, 4, 2)
    assert hc.metadata["policy"] == NOT_SEARCHED and hc.metadata["family"] == "qwen2_5_vl"
    with pytest.raises(AdapterError, match="known architectures"):
        default_head_configs(SimpleNamespace(architectures=["BertModel"]))
