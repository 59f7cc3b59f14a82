"""End to end through transformers on tiny checkpoints with a real mp4 clip: all-Dense configs reproduce plain
transformers exactly; sparse configs take the sparse path (counted) and their logits' error vs dense is reported."""

from __future__ import annotations

import pytest
import torch

from mmi_core import AShape, ConfigError, Dense, Grid, HeadConfigs, HeadSpec, LayerConfig, VerticalSlash
from mmi_models import AdapterError, apply_mminference, mminference_of
from mmi_models.transformers_attention import _MODULES

pytestmark = pytest.mark.e2e
NEW_TOKENS = 4


def _inputs(tiny, clip, texts=None):
    frames, meta = clip
    texts = texts or [tiny.messages(), tiny.messages("please describe the video and answer what shape is moving")]
    n = sum("video" in t or "<video>" in t for t in texts)
    return tiny.processor(text=texts, videos=[frames] * n, video_metadata=[meta] * n, return_tensors="pt", padding=True)


def _uniform(model, pattern) -> HeadConfigs:
    t = model.config.get_text_config()
    return HeadConfigs.uniform(t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, pattern)


def _sparse_configs(model) -> HeadConfigs:
    """Heads of KV head 0: Grid with the frame stride (executed as a group); KV head 1: A-shape and vertical-slash
    (executed per head). Block 16 on ~140-270 tokens keeps a real fraction of the keys."""
    t = model.config.get_text_config()
    grid = HeadSpec(pattern=Grid(stride="frame", block=16, sink=4, local=1, last_q=16))
    ashape = HeadSpec(pattern=AShape(sink=16, local=16, block=16))
    vs = HeadSpec(pattern=VerticalSlash(vertical=8, slash=4, last_q=16, sink=4, local=8, block=16))
    layer = LayerConfig(heads=[grid, grid, ashape, vs], gqa=["group", "head"])
    return HeadConfigs(
        num_layers=t.num_hidden_layers,
        num_q_heads=t.num_attention_heads,
        num_kv_heads=t.num_key_value_heads,
        layers=[layer] * t.num_hidden_layers,
    )


@pytest.fixture
def patched(tiny):
    """Yield the tiny model; whatever the test applied is removed afterwards (the model is session-shared)."""
    yield tiny
    handle = mminference_of(tiny.model)
    if handle is not None:
        handle.remove()
    assert tiny.model.config.get_text_config()._attn_implementation == "sdpa"


def test_all_dense_configs_generate_exactly_like_transformers(patched, clip):
    model = patched.model
    inputs = _inputs(patched, clip)
    assert inputs["attention_mask"][0, 0] == 0  # left padding in the batch
    want = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    handle = apply_mminference(model, _uniform(model, Dense()), min_tokens=16)
    got = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(got, want)
    stats = handle.stats.as_dict()
    layers = model.config.get_text_config().num_hidden_layers
    assert stats["sparse"] == 0
    assert stats["dense"]["dense_layer_config"] == layers * 2  # prefill: every layer, both rows
    assert stats["dense"]["decode"] == layers * 2 * (NEW_TOKENS - 1)


def test_default_configs_keep_short_prompts_dense_and_exact(patched, clip):
    model = patched.model
    inputs = _inputs(patched, clip)
    want = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    handle = apply_mminference(model)  # family default policy, min_tokens 4096 > these prompts
    assert handle.head_configs.metadata["policy"] == "default policy, not searched"
    got = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(got, want)
    assert handle.stats.sparse == 0 and handle.stats.dense["short"] > 0


def test_sparse_configs_take_the_sparse_path(patched, clip, record_property):
    model = patched.model
    inputs = _inputs(patched, clip)
    with torch.no_grad():
        dense_logits = model(**inputs).logits
    handle = apply_mminference(model, _sparse_configs(model), min_tokens=16)
    with torch.no_grad():
        sparse_logits = model(**inputs).logits
    layers = model.config.get_text_config().num_hidden_layers
    assert handle.stats.sparse == layers * 2
    assert handle.stats.backend == {"reference": layers * 2}
    valid = inputs["attention_mask"].bool()
    a, b = sparse_logits[valid].float(), dense_logits[valid].float()
    rel = float((a - b).norm() / b.norm())
    last = float((a[-1] - b[-1]).norm() / b[-1].norm())
    record_property("logits_rel_error", rel)
    print(f"\n{patched.family}: sparse vs dense logits, relative L2 error {rel:.3e} (last token {last:.3e})")
    assert torch.isfinite(sparse_logits).all()
    assert 1e-6 < rel < 1.0  # sparse really drops keys, yet stays close on a near-uniform random model
    # generate: sparse prefill, dense decode
    handle.stats.reset()
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + NEW_TOKENS)
    assert handle.stats.sparse == layers * 2 and handle.stats.dense["decode"] == layers * 2 * (NEW_TOKENS - 1)


def test_only_language_attention_is_patched(patched):
    model = patched.model
    handle = apply_mminference(model, _uniform(model, Dense()), min_tokens=16)
    mine = [m for m, (h, _) in _MODULES.items() if h is handle]
    assert len(mine) == model.config.get_text_config().num_hidden_layers
    assert all(m.config is model.config.get_text_config() for m in mine)
    assert model.config.get_text_config()._attn_implementation == "mmi_sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    handle.remove()
    assert "forward" not in vars(model) and not [m for m, (h, _) in _MODULES.items() if h is handle]


def test_mixed_batch_and_text_only_inputs_stay_dense(patched, clip):
    model = patched.model
    handle = apply_mminference(model, _sparse_configs(model), min_tokens=16)
    text_only = patched.processor(text=["what is this", "describe the shape"], return_tensors="pt", padding=True)
    with torch.no_grad():
        model(**text_only)
    assert handle.stats.sparse == 0 and handle.stats.dense["no_visual_tokens"] > 0
    handle.stats.reset()
    mixed = _inputs(patched, clip, [patched.messages(), "what is this"])
    handle.remove()
    with torch.no_grad():
        want = model(**mixed).logits
    handle = apply_mminference(model, _sparse_configs(model), min_tokens=16)
    with torch.no_grad():
        got = model(**mixed).logits
    layers = model.config.get_text_config().num_hidden_layers
    assert handle.stats.sparse == layers and handle.stats.dense["no_visual_tokens"] == layers
    # the text-only row is computed by the original attention: exactly the plain result
    row = mixed["attention_mask"][1].bool()
    assert torch.equal(got[1][row], want[1][row])


def test_mismatched_grid_metadata_is_a_clear_error(patched, clip):
    model = patched.model
    inputs = dict(_inputs(patched, clip))
    apply_mminference(model, _uniform(model, Dense()), min_tokens=16)
    if patched.family == "qwen2_5_vl":
        inputs["video_grid_thw"] = torch.tensor([[8, 8, 12], [8, 8, 12]])
    else:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"][:, :8]
    with pytest.raises(AdapterError, match="placeholder run"), torch.no_grad():
        model(**inputs)


def test_unknown_architecture_and_bad_configs(patched):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=32, bos_token_id=0, eos_token_id=0)
    )
    with pytest.raises(AdapterError, match=r"known architectures: .*Qwen2_5_VLForConditionalGeneration"):
        apply_mminference(gpt)
    wrong = HeadConfigs.uniform(3, 4, 2, Dense())
    with pytest.raises(ConfigError, match=r"\(3, 4, 2\).*\(2, 4, 2\)"):
        apply_mminference(patched.model, wrong)
    with pytest.raises(ConfigError, match="does not exist"):
        apply_mminference(patched.model, "/nonexistent/heads.json")


def test_eager_base_dense_equals_plain(tiny_qwen, clip):
    model = tiny_qwen.model
    inputs = _inputs(tiny_qwen, clip)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            want = model(**inputs).logits
        handle = apply_mminference(model, _uniform(model, Dense()), min_tokens=16)
        assert model.config.get_text_config()._attn_implementation == "mmi_eager"
        with torch.no_grad():
            got = model(**inputs).logits
        assert torch.equal(got, want) and handle.stats.dense["dense_layer_config"] > 0
        handle.remove()
    finally:
        model.set_attn_implementation("sdpa")


def test_sparse_rows_follow_left_padding(patched, clip):
    """A left-padded row's sparse result equals the same request run alone (offsets follow the attention mask)."""
    model = patched.model
    texts = [patched.messages(), patched.messages("please describe the video and answer what shape is moving")]
    batch = _inputs(patched, clip, texts)
    alone = _inputs(patched, clip, texts[:1])
    pad = int((batch["attention_mask"][0] == 0).sum())
    assert pad > 0
    handle = apply_mminference(model, _sparse_configs(model), min_tokens=16)
    with torch.no_grad():
        got = model(**batch).logits[0, pad:]
        want = model(**alone).logits[0]
    assert handle.stats.sparse == 3 * model.config.get_text_config().num_hidden_layers
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _vs_ashape_configs(model) -> HeadConfigs:
    t = model.config.get_text_config()
    ashape = HeadSpec(pattern=AShape(sink=16, local=16, block=16))
    vs = HeadSpec(pattern=VerticalSlash(vertical=8, slash=4, last_q=16, sink=4, local=8, block=16))
    layer = LayerConfig(heads=[ashape, vs, vs, ashape], gqa=["head", "group"])
    n = t.num_hidden_layers
    return HeadConfigs(num_layers=n, num_q_heads=4, num_kv_heads=t.num_key_value_heads, layers=[layer] * n)


@pytest.mark.parametrize(
    "configs",
    [pytest.param(_vs_ashape_configs, id="ashape+vs"), pytest.param(_sparse_configs, id="grid+ashape+vs")],
)
def test_kernels_backend_matches_reference(patched, clip, record_property, configs):
    """mmi-kernels' wrapper (planned once per forward; on CPU its PyTorch execution of the sparse index) gives the
    reference's logits: same estimation and keep-set semantics, different code."""
    pytest.importorskip("mmi_kernels")
    from mmi_models.sparse_compute import kernels_available

    if not kernels_available():
        pytest.skip("mmi_kernels has no SparsePrefillWrapper")
    model = patched.model
    inputs = _inputs(patched, clip)
    handle = apply_mminference(model, configs(model), min_tokens=16, backend="reference")
    with torch.no_grad():
        ref = model(**inputs).logits
    handle = apply_mminference(model, configs(model), min_tokens=16, backend="kernels")
    with torch.no_grad():
        got = model(**inputs).logits
    layers = model.config.get_text_config().num_hidden_layers
    assert handle.stats.backend == {"kernels": 2 * layers}
    valid = inputs["attention_mask"].bool()
    rel = float((got[valid] - ref[valid]).norm() / ref[valid].norm())
    record_property("kernels_vs_reference_rel_error", rel)
    print(f"\n{patched.family}: kernels-backend vs reference logits, relative L2 error {rel:.3e}")
    assert torch.isfinite(got[valid]).all()
    torch.testing.assert_close(got[valid], ref[valid], rtol=1e-4, atol=1e-4)


def test_unknown_backend_is_rejected(patched):
    with pytest.raises(ValueError, match="unknown sparse backend"):
        apply_mminference(patched.model, _uniform(patched.model, Dense()), backend="triton")


def test_default_policy_runs_sparse_when_long_enough(patched, clip):
    """The shipped policy's patterns (Grid with the frame stride for video rows, vertical-slash otherwise, block 64)
    execute on a real layout once min_tokens lets the rows through."""
    model = patched.model
    inputs = _inputs(patched, clip)
    handle = apply_mminference(model, min_tokens=16)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits[inputs["attention_mask"].bool()]).all()
    layers = model.config.get_text_config().num_hidden_layers
    assert handle.stats.dense["dense_layer_config"] == 2  # the policy's first layer is dense
    assert handle.stats.sparse == 2 * (layers - 1)


def test_beam_search_expands_layouts(patched, clip):
    """generate with beams repeats rows and their visual metadata; every repeated row gets its layout."""
    model = patched.model
    inputs = _inputs(patched, clip)
    want = model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False)
    handle = apply_mminference(model, _uniform(model, Dense()), min_tokens=16)
    got = model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False)
    assert torch.equal(got, want)
    assert handle.stats.dense["dense_layer_config"] == 4 * model.config.get_text_config().num_hidden_layers


def test_image_prompts_run_sparse(patched):
    """Image layouts (Qwen: one grid from image_grid_thw; LLaVA-OneVision: base grid + high-res grid with row
    newlines) feed the sparse path too."""
    from mmi_models import moving_shapes_frames

    model = patched.model
    img = moving_shapes_frames(1, 90, 200)[0]
    content = [{"type": "image"}, {"type": "text", "text": "describe the image"}]
    text = patched.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = patched.processor(text=[text], images=[img], return_tensors="pt")
    layers = model.config.get_text_config().num_hidden_layers
    # Grid heads with the frame stride have no stride on an image-only prompt: counted dense, exact
    with torch.no_grad():
        want = model(**inputs).logits
    handle = apply_mminference(model, _sparse_configs(model), min_tokens=16)
    with torch.no_grad():
        got = model(**inputs).logits
    assert torch.equal(got, want)
    assert handle.stats.sparse == 0 and handle.stats.dense["grid_stride_unavailable"] == layers
    # A-shape / vertical-slash heads run sparse on the image layout
    ashape = HeadSpec(pattern=AShape(sink=16, local=16, block=16))
    vs = HeadSpec(pattern=VerticalSlash(vertical=8, slash=4, last_q=16, sink=4, local=8, block=16))
    t = model.config.get_text_config()
    layer = LayerConfig(heads=[ashape, ashape, vs, vs], gqa=["group", "group"])
    hc = HeadConfigs(num_layers=layers, num_q_heads=4, num_kv_heads=t.num_key_value_heads, layers=[layer] * layers)
    handle = apply_mminference(model, hc, min_tokens=16)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    assert handle.stats.sparse == layers


def test_remove_restores_an_instance_forward(patched):
    """accelerate's device hooks install an instance-level forward; apply/remove must keep it."""
    model = patched.model
    calls = []

    def hooked(*args, **kwargs):
        calls.append(1)
        return type(model).forward(model, *args, **kwargs)

    model.forward = hooked
    try:
        handle = apply_mminference(model, _uniform(model, Dense()), min_tokens=16)
        inputs = patched.processor(text=["what is this"], return_tensors="pt")
        with torch.no_grad():
            model(**inputs)
        assert calls == [1] and handle.stats.dense["no_visual_tokens"] == 2
        handle.remove()
        assert model.forward is hooked
    finally:
        del model.forward
