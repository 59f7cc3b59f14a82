"""The `mmi` backend on real SGLang 0.5.17 objects on CPU: plugin discovery, CLI parsing, and forward passes over
ForwardBatch / ReqToTokenPool / MHATokenToKVPool / RadixAttention / MultimodalInputs, compared with SGLang's
TorchNativeAttnBackend and with the mmi-core reference per request. One module so that sglang (~30 s) is imported
once; everything here is marked ``sglang``."""

from __future__ import annotations

import argparse
import logging
from types import SimpleNamespace

import pytest
import torch

from mmi_core import (
    AShape,
    ConfigError,
    Dense,
    Grid,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    ModalityLayout,
    VerticalSlash,
    VisualGrid,
)

pytestmark = pytest.mark.sglang

D = 16  # head dim
SEQ_ENV = {"MMI_MIN_SEQ_LEN": "48", "MMI_MIN_VISUAL_TOKENS": "32", "MMI_MIN_CHUNK_TOKENS": "8"}


@pytest.fixture(scope="module")
def sg():
    """The sglang names the tests use (imported once for the module)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.managers.schedule_batch import MultimodalDataItem, MultimodalInputs

    try:  # sglang >= 0.5.2x moved the enum (tools/check_sglang_latest.sh runs these tests on the newest release)
        from sglang.srt.multimodal.modality import Modality
    except ImportError:
        from sglang.srt.managers.schedule_batch import Modality
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode
    from sglang.srt.server_args import ServerArgs

    return SimpleNamespace(
        ATTENTION_BACKENDS=ATTENTION_BACKENDS,
        TorchNativeAttnBackend=TorchNativeAttnBackend,
        RadixAttention=RadixAttention,
        Modality=Modality,
        MultimodalDataItem=MultimodalDataItem,
        MultimodalInputs=MultimodalInputs,
        MHATokenToKVPool=MHATokenToKVPool,
        ReqToTokenPool=ReqToTokenPool,
        ForwardBatch=ForwardBatch,
        ForwardMode=ForwardMode,
        ServerArgs=ServerArgs,
    )


@pytest.fixture(scope="module")
def registered(sg):
    from sglang.srt.plugins import load_plugins

    load_plugins()  # discovers mmi through the installed entry point
    return sg


# -- helpers --------------------------------------------------------------------------------------------------------
def _video(sg, start, frames, rows, cols):
    """A Qwen2.5-VL-style video item: inclusive offsets, grid in patches (spatial merge 2)."""
    item = sg.MultimodalDataItem(modality=sg.Modality.VIDEO, offsets=[(start, start + frames * rows * cols - 1)])
    item.set("video_grid_thw", torch.tensor([[frames, 2 * rows, 2 * cols]]))
    return item


def _image(sg, start, rows, cols):
    item = sg.MultimodalDataItem(modality=sg.Modality.IMAGE, offsets=[(start, start + rows * cols - 1)])
    item.set("image_grid_thw", torch.tensor([[1, 2 * rows, 2 * cols]]))
    return item


def _head_configs(num_layers, hq, hkv, dense_layers=()):
    """Mixed sparse patterns with q/2d boundaries; block 16 so that the small sequences here span several blocks."""
    specs = [
        HeadSpec(pattern=Grid(stride="frame", block=16, sink=4, last_q=16)),
        HeadSpec(pattern=VerticalSlash(vertical=8, slash=4, last_q=16, sink=4, local=16, block=16)),
        HeadSpec(
            boundary="q",
            pattern=AShape(sink=8, local=16, block=16),
            by_modality={"video": Grid(stride="frame", block=16, sink=4, last_q=16)},
        ),
        HeadSpec(
            boundary="2d",
            pattern=VerticalSlash(vertical=8, slash=4, last_q=16, sink=4, local=16, block=16),
            by_pair={"video->video": Grid(stride="frame", block=16, sink=4, last_q=16)},
        ),
    ]
    layers = []
    for i in range(num_layers):
        heads = [HeadSpec()] * hq if i in dense_layers else [specs[h % len(specs)] for h in range(hq)]
        layers.append(LayerConfig(heads=heads, gqa=["group"] * hkv))
    return HeadConfigs(num_layers=num_layers, num_q_heads=hq, num_kv_heads=hkv, layers=layers)


class Rig:
    """Pools, runner and a batch builder for one backend (tensor-parallel rank ``tp_rank`` of ``tp_size``)."""

    def __init__(self, sg, hq, hkv, num_layers=2, tp_rank=0, tp_size=1):
        self.sg, self.hq, self.hkv, self.num_layers = sg, hq, hkv, num_layers
        self.r2t = sg.ReqToTokenPool(size=8, max_context_len=512, device="cpu", enable_memory_saver=False)
        self.kv = sg.MHATokenToKVPool(
            size=2048,
            page_size=1,
            dtype=torch.float32,
            head_num=hkv,
            head_dim=D,
            layer_num=num_layers,
            device="cpu",
            enable_memory_saver=False,
        )
        total_hkv = hkv * tp_size  # KV heads split evenly over ranks here
        mc = SimpleNamespace(
            num_hidden_layers=num_layers,
            num_attention_heads=hq * tp_size,
            get_total_num_kv_heads=lambda: total_hkv,
            hf_config=SimpleNamespace(model_type="qwen2_5_vl", vision_config=SimpleNamespace(spatial_merge_size=2)),
        )
        self.runner = SimpleNamespace(
            device="cpu",
            req_to_token_pool=self.r2t,
            token_to_kv_pool=self.kv,
            model_config=mc,
            server_args=SimpleNamespace(enable_metrics=False),
            ps=SimpleNamespace(tp_rank=tp_rank, tp_size=tp_size),
        )
        self.layers = [
            sg.RadixAttention(num_heads=hq, head_dim=D, scaling=D**-0.5, num_kv_heads=hkv, layer_id=i)
            for i in range(num_layers)
        ]
        self.next_slot = 1

    def batch(self, reqs):
        """reqs: list of (prefix_len, extend_len, mm_inputs or None). Writes random prefix K/V into the pool for every
        layer; returns (ForwardBatch, q [N, Hq*D], k/v [N, Hkv, D] per layer, full per-request K/V per layer)."""
        sg = self.sg
        n = sum(e for _, e, _ in reqs)
        out_locs, full_k, full_v = [], [], []
        for i, (p, e, _) in enumerate(reqs):
            locs = torch.arange(self.next_slot, self.next_slot + p + e)
            self.next_slot += p + e
            self.r2t.req_to_token[i + 1, : p + e] = locs.to(torch.int32)
            out_locs.append(locs[p:])
            fk = [torch.randn(p + e, self.hkv, D) for _ in self.layers]
            fv = [torch.randn(p + e, self.hkv, D) for _ in self.layers]
            for li in range(self.num_layers):
                self.kv.k_buffer[li][locs[:p]] = fk[li][:p]
                self.kv.v_buffer[li][locs[:p]] = fv[li][:p]
            full_k.append(fk)
            full_v.append(fv)
        out_cache_loc = torch.cat(out_locs)
        prefix = [p for p, _, _ in reqs]
        ext = [e for _, e, _ in reqs]
        fb = sg.ForwardBatch(
            forward_mode=sg.ForwardMode.EXTEND,
            batch_size=len(reqs),
            input_ids=torch.zeros(n, dtype=torch.int64),
            req_pool_indices=torch.arange(1, len(reqs) + 1),
            seq_lens=torch.tensor([p + e for p, e, _ in reqs]),
            out_cache_loc=out_cache_loc,
            seq_lens_sum=sum(p + e for p, e, _ in reqs),
            extend_seq_lens=torch.tensor(ext),
            extend_prefix_lens=torch.tensor(prefix),
            extend_seq_lens_cpu=ext,
            extend_prefix_lens_cpu=prefix,
            mm_inputs=[m for _, _, m in reqs],
        )
        q = torch.randn(n, self.hq * D)
        k = [torch.cat([full_k[i][li][p:] for i, (p, _, _) in enumerate(reqs)]) for li in range(self.num_layers)]
        v = [torch.cat([full_v[i][li][p:] for i, (p, _, _) in enumerate(reqs)]) for li in range(self.num_layers)]
        return fb, q, k, v, full_k, full_v

    def run(self, backend, fb, q, k, v):
        """Init metadata once, then every layer's forward; returns the per-layer outputs."""
        backend.init_forward_metadata(fb)
        return [backend.forward(q, k[i], v[i], layer, fb) for i, layer in enumerate(self.layers)]


def _env(monkeypatch, tmp_path, hc, **extra):
    path = tmp_path / "hc.json"
    hc.save(path)
    for key, val in {**SEQ_ENV, "MMI_HEAD_CONFIGS": str(path), **extra}.items():
        monkeypatch.setenv(key, val)


def _mixed_requests(sg):
    """A video request over a cached prefix (chunked prefill), a text-only request, a video+image request, and a
    short video request (below the thresholds)."""
    video_a = sg.MultimodalInputs(mm_items=[_video(sg, 6, frames=4, rows=3, cols=4)])  # 48 video tokens at [6, 54)
    both = sg.MultimodalInputs(mm_items=[_image(sg, 3, 2, 3), _video(sg, 12, frames=3, rows=4, cols=4)])
    small = sg.MultimodalInputs(mm_items=[_video(sg, 2, frames=1, rows=2, cols=2)])
    return [(30, 40, video_a), (0, 20, None), (0, 70, both), (0, 12, small)]


# -- plugin ---------------------------------------------------------------------------------------------------------
def test_entry_point_discovered_and_registered(registered):
    from importlib.metadata import entry_points

    from sglang.srt.plugins import load_plugins_by_group
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    eps = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "mmi"]
    assert eps and eps[0].value == "mmi_sglang.plugin:register"
    assert "mmi" in load_plugins_by_group("sglang.srt.plugins")
    assert "mmi" in registered.ATTENTION_BACKENDS
    assert ATTENTION_BACKEND_CHOICES.count("mmi") == 1


def test_register_is_idempotent(registered):
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    from mmi_sglang import plugin

    factory = registered.ATTENTION_BACKENDS["mmi"]
    plugin._registered = False  # as in a fresh process that already ran load_plugins once
    plugin.register()
    plugin.register()
    assert registered.ATTENTION_BACKENDS["mmi"] is factory
    assert ATTENTION_BACKEND_CHOICES.count("mmi") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--attention-backend", "mmi"],
        ["--prefill-attention-backend", "mmi", "--decode-attention-backend", "triton"],
    ],
    ids=["mmi-alone", "hybrid"],
)
def test_launch_server_parser_accepts_mmi(registered, argv):
    from sglang.srt.server_args import prepare_server_args

    parser = argparse.ArgumentParser()
    registered.ServerArgs.add_cli_args(parser)
    ns = parser.parse_args(["--model-path", "dummy", *argv])
    assert "mmi" in (ns.attention_backend, ns.prefill_attention_backend)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model-path", "dummy", "--attention-backend", "mmj"])
    assert callable(prepare_server_args)  # launch_server builds ServerArgs through this same parser


# -- backend on real objects ----------------------------------------------------------------------------------------
def test_dense_configs_identical_to_torch_native(registered, monkeypatch, tmp_path):
    sg = registered
    rig = Rig(sg, hq=4, hkv=2)
    _env(monkeypatch, tmp_path, HeadConfigs.uniform(2, 4, 2, Dense()))
    fb, q, k, v, *_ = rig.batch(_mixed_requests(sg))
    mmi = sg.ATTENTION_BACKENDS["mmi"](rig.runner)
    out = rig.run(mmi, fb, q, k, v)
    assert mmi.last_routes.counts()["sparse"] == 2  # routed sparse, yet every layer is Dense -> inner backend
    ref = rig.run(sg.TorchNativeAttnBackend(rig.runner), fb, q, k, v)
    for a, b in zip(out, ref, strict=True):
        assert torch.equal(a, b)


def test_text_only_batch_takes_inner_backend_unchanged(registered, monkeypatch, tmp_path):
    sg = registered
    rig = Rig(sg, hq=4, hkv=2)
    _env(monkeypatch, tmp_path, _head_configs(2, 4, 2))
    fb, q, k, v, *_ = rig.batch([(10, 60, None), (0, 50, None)])
    mmi = sg.ATTENTION_BACKENDS["mmi"](rig.runner)
    calls = []
    inner_forward = mmi.inner.forward_extend
    monkeypatch.setattr(mmi.inner, "forward_extend", lambda *a, **kw: calls.append(1) or inner_forward(*a, **kw))
    out = rig.run(mmi, fb, q, k, v)
    assert len(calls) == 2 and mmi.last_routes.counts() == {"text_only": 2}
    ref = rig.run(sg.TorchNativeAttnBackend(rig.runner), fb, q, k, v)
    for a, b in zip(out, ref, strict=True):
        assert torch.equal(a, b)


def _expected_layouts():
    return [
        ModalityLayout.from_parts([("text", 6), ("video", VisualGrid(4, 3, 4)), ("text", 16)]),
        None,
        ModalityLayout.from_parts(
            [("text", 3), ("image", VisualGrid(1, 2, 3)), ("text", 3), ("video", VisualGrid(3, 4, 4)), ("text", 10)]
        ),
        None,
    ]


def test_sparse_requests_get_the_right_inputs(registered, monkeypatch, tmp_path):
    """Plumbing, independent of the pattern math: the reference is replaced by a spy that records its inputs and
    returns dense attention; checks layouts, chunk queries, prefix + chunk keys from the pool, layer ids, scale, and
    where the rows land. Dense requests of the mixed batch are checked against dense attention too."""
    import mmi_sglang.backend as backend_mod
    from mmi_core import dense_attention_reference

    sg = registered
    rig = Rig(sg, hq=4, hkv=2)
    _env(monkeypatch, tmp_path, _head_configs(2, 4, 2))
    seen = []

    def spy(q, k, v, layout, head_configs, layer, scale):
        seen.append((q.clone(), k.clone(), v.clone(), layout, head_configs, layer, scale))
        return dense_attention_reference(q, k, v, scale=scale)

    monkeypatch.setattr(backend_mod, "reference_sparse_request", spy)
    monkeypatch.setattr(backend_mod, "reference_available", lambda: True)
    reqs = _mixed_requests(sg)
    fb, q, k, v, full_k, full_v = rig.batch(reqs)
    mmi = sg.ATTENTION_BACKENDS["mmi"](rig.runner)
    out = rig.run(mmi, fb, q, k, v)
    routes = mmi.last_routes
    assert [r.reason for r in routes.requests] == ["sparse", "text_only", "sparse", "short_sequence"]
    layouts = _expected_layouts()
    sparse_idx = [0, 2]
    assert len(seen) == 2 * len(sparse_idx)  # per layer, per sparse request
    for li in range(2):
        for j, i in enumerate(sparse_idx):
            sq, sk, sv, layout, hc, layer, scale = seen[li * len(sparse_idx) + j]
            r = routes.requests[i]
            assert layout == layouts[i] and layer == li and scale == D**-0.5 and hc == mmi.head_configs
            assert torch.equal(sq, q.view(-1, 4, D)[r.q_start : r.q_start + r.n_q])
            assert torch.equal(sk, full_k[i][li]) and torch.equal(sv, full_v[i][li])
    for li in range(2):
        o = out[li].view(-1, 4, D)
        for i, r in enumerate(routes.requests):
            want = dense_attention_reference(
                q.view(-1, 4, D)[r.q_start : r.q_start + r.n_q], full_k[i][li], full_v[i][li]
            )
            torch.testing.assert_close(o[r.q_start : r.q_start + r.n_q], want, atol=2e-5, rtol=2e-5)
        # KV cache written at out_cache_loc, prefix left intact
        assert torch.equal(rig.kv.k_buffer[li][fb.out_cache_loc], k[li])
        assert torch.equal(rig.kv.v_buffer[li][fb.out_cache_loc], v[li])
    assert mmi.stats.requests["sparse"] == 2 and mmi.stats.requests["text_only"] == 1


def _need_reference():
    import mmi_core

    if not hasattr(mmi_core, "mmi_attention_reference"):
        pytest.skip("mmi_core.mmi_attention_reference has not landed yet")
    return mmi_core.mmi_attention_reference


@pytest.mark.parametrize(
    ("tp_rank", "tp_size", "impl"),
    [
        pytest.param(0, 1, "reference", id="tp1-reference"),
        pytest.param(1, 2, "reference", id="tp2-rank1-reference"),
        pytest.param(0, 1, "kernels", id="tp1-kernels", marks=pytest.mark.slow),  # ~12 s under TRITON_INTERPRET
        pytest.param(1, 2, "kernels", id="tp2-rank1-kernels", marks=pytest.mark.slow),
    ],
)
def test_sparse_equals_mmi_core_reference_per_request(registered, monkeypatch, tmp_path, tp_rank, tp_size, impl):
    """Mixed batch (chunked video request over a cached prefix, text-only, video+image, short video), GQA 4:2 (per
    rank), two layers (layer 1 all Dense -> inner backend), on a tensor-parallel slice when tp_size > 1; sparse part
    on the mmi-core reference or through mmi-kernels' SparsePrefillWrapper reading K/V from the pool via the page
    table (on CPU: its PyTorch index executor, or the Triton kernel under TRITON_INTERPRET=1)."""
    reference = _need_reference()
    import mmi_kernels
    from mmi_core import dense_attention_reference

    if impl == "kernels" and not hasattr(mmi_kernels, "SparsePrefillWrapper"):
        pytest.skip("mmi_kernels.SparsePrefillWrapper has not landed yet")
    sg = registered
    total = _head_configs(2, 4 * tp_size, 2 * tp_size, dense_layers=(1,))
    rig = Rig(sg, hq=4, hkv=2, tp_rank=tp_rank, tp_size=tp_size)
    _env(monkeypatch, tmp_path, total, MMI_SPARSE_IMPL=impl)
    reqs = _mixed_requests(sg)
    fb, q, k, v, full_k, full_v = rig.batch(reqs)
    mmi = sg.ATTENTION_BACKENDS["mmi"](rig.runner)
    assert mmi.impl == impl
    out = rig.run(mmi, fb, q, k, v)
    hc = total.tp_slice(tp_rank, tp_size) if tp_size > 1 else total
    assert mmi.head_configs == hc
    layouts = _expected_layouts()
    routes = mmi.last_routes
    q3 = q.view(-1, 4, D)
    for li in range(2):
        o = out[li].view(-1, 4, D)
        assert not torch.isnan(o).any()
        for i, r in enumerate(routes.requests):
            rows = slice(r.q_start, r.q_start + r.n_q)
            if r.sparse and li == 0 and impl == "kernels":
                # the same wrapper on this request alone, keys packed (no page table): checks the backend's call
                # site (row packing, page table from req_to_token, layer, scale), not kernel-vs-core agreement
                w = mmi_kernels.SparsePrefillWrapper(hc, min_tokens=0)
                w.plan([layouts[i]], q_lens=[r.n_q])
                want = w.run(q3[rows], full_k[i][li], full_v[i][li], li, scale=D**-0.5)
            elif r.sparse and li == 0:
                want = reference(q3[rows], full_k[i][li], full_v[i][li], layouts[i], hc, li, scale=D**-0.5)
            if r.sparse and li == 0:
                dense = dense_attention_reference(q3[rows], full_k[i][li], full_v[i][li])
                assert (o[rows] - dense).abs().max() > 1e-3, "the sparse patterns kept everything: test too weak"
            else:
                want = dense_attention_reference(q3[rows], full_k[i][li], full_v[i][li])
            torch.testing.assert_close(o[rows], want, atol=2e-5, rtol=2e-5)
        assert torch.equal(rig.kv.k_buffer[li][fb.out_cache_loc], k[li])
    # the model-side entry: RadixAttention.forward under SGLang's forward context reaches the same computation
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    mmi.init_forward_metadata(fb)
    with forward_context(ForwardContext(attn_backend=mmi)):
        via_layer = rig.layers[0](q, k[0].flatten(1), v[0].flatten(1), fb)
    assert torch.equal(via_layer, out[0])


def test_decode_and_hybrid_delegate(registered, monkeypatch, tmp_path):
    """Decode goes to the inner backend; SGLang's HybridAttnBackend (prefill mmi, decode torch_native) works."""
    from sglang.srt.layers.attention.hybrid_attn_backend import HybridAttnBackend

    sg = registered
    rig = Rig(sg, hq=4, hkv=2)
    _env(monkeypatch, tmp_path, HeadConfigs.uniform(2, 4, 2, Dense()))
    fb, q, k, v, *_ = rig.batch([(20, 1, None), (5, 1, None)])
    fb.forward_mode = sg.ForwardMode.DECODE
    mmi = sg.ATTENTION_BACKENDS["mmi"](rig.runner)
    ref = rig.run(sg.TorchNativeAttnBackend(rig.runner), fb, q, k, v)
    assert all(torch.equal(a, b) for a, b in zip(rig.run(mmi, fb, q, k, v), ref, strict=True))
    assert mmi.last_routes is None
    runner = SimpleNamespace(**{**vars(rig.runner), "kv_cache_dtype": torch.float32})
    runner.server_args = SimpleNamespace(speculative_attention_mode="prefill", enable_metrics=False)
    runner.model_config.context_len = 512
    hybrid = HybridAttnBackend(runner, sg.ATTENTION_BACKENDS["mmi"](runner), sg.TorchNativeAttnBackend(runner))
    assert all(torch.equal(a, b) for a, b in zip(rig.run(hybrid, fb, q, k, v), ref, strict=True))


def test_bad_settings_are_clear_errors(registered, monkeypatch, tmp_path, caplog):
    sg = registered
    rig = Rig(sg, hq=4, hkv=2)
    _env(monkeypatch, tmp_path, HeadConfigs.uniform(3, 4, 2, Dense()))  # 3 layers, the model has 2
    with pytest.raises(ConfigError, match="the model has"):
        sg.ATTENTION_BACKENDS["mmi"](rig.runner)
    _env(monkeypatch, tmp_path, HeadConfigs.uniform(2, 4, 2, Dense()), MMI_INNER_BACKEND="no_such_backend")
    with pytest.raises(ConfigError, match="no_such_backend"):
        sg.ATTENTION_BACKENDS["mmi"](rig.runner)
    monkeypatch.setenv("MMI_MIN_SEQ_LEN", "-1")
    from mmi_sglang import plugin

    monkeypatch.setattr(plugin, "_registered", False)
    with caplog.at_level(logging.ERROR, logger="mmi_sglang"):
        plugin.register()  # still registers, logs the problem
    assert "MMI_MIN_SEQ_LEN" in caplog.text
    with pytest.raises(ConfigError, match="MMI_MIN_SEQ_LEN"):
        sg.ATTENTION_BACKENDS["mmi"](rig.runner)


def test_examples_use_existing_sglang_api(registered):
    """The examples import and build against this sglang (no server or GPU): the frontend program is an
    sgl.function using sgl.video, Engine.generate takes video_data, and the launch flags parse."""
    import inspect
    import runpy
    from pathlib import Path

    import sglang as sgl
    from sglang.lang.ir import SglFunction

    ex = Path(__file__).parents[2] / "examples" / "sglang"
    fp = runpy.run_path(str(ex / "frontend_program.py"), run_name="example")
    assert isinstance(fp["describe_video"], SglFunction)
    assert "video_data" in inspect.signature(sgl.Engine.generate).parameters
    runpy.run_path(str(ex / "engine_generate.py"), run_name="example")
    runpy.run_path(str(ex / "openai_video_request.py"), run_name="example")
    fields = registered.ServerArgs.__dataclass_fields__
    assert {"prefill_attention_backend", "decode_attention_backend", "context_length"} <= set(fields)
    launch = (ex / "launch_server.sh").read_text()
    parser = argparse.ArgumentParser()
    registered.ServerArgs.add_cli_args(parser)
    flags = "--model-path m --prefill-attention-backend mmi --decode-attention-backend triton"
    parser.parse_args([*flags.split(), "--context-length", "262144", "--enable-metrics"])
    assert "--prefill-attention-backend mmi --decode-attention-backend triton" in launch
