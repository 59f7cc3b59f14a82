"""On a GPU, the compiled kernels' planning equals the PyTorch paths on a CPU: the grouped last-query statistics,
the vertical-slash ranking and whole layers' keep sets (index for index) of heads with and without boundaries. The
CPU suite checks the same code under Triton's interpreter; this checks what the compiler makes of it."""

from __future__ import annotations

import math

import pytest
import torch

from mmi_core import BlockSparse, Grid, HeadConfigs, HeadSpec, LayerConfig, VerticalSlash
from mmi_core.synthetic import default_spec, synthetic_workload
from mmi_kernels import LayoutTensors, estimate_layer_keeps, index_from_keeps, index_keep_mask, layer_slots
from mmi_kernels.estimate import last_query_stats
from mmi_kernels.ranking import top_ids, top_ids_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HQ, HKV, BLOCK = 4, 2, 64


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_grouped_statistics_equal_the_chunked_pytorch_path():
    from mmi_kernels.last_query import last_query_stats_groups

    g = torch.Generator().manual_seed(0)
    n_q, n_k = 9000, 20000
    q, k = torch.randn(n_q, 8, 64, generator=g), torch.randn(n_k, 2, 64, generator=g)
    groups = [(20000, 64), (15000, 30), (11001, 1)]
    got = last_query_stats_groups(q.cuda(), k.cuda(), groups)
    for i, (end, lq) in enumerate(groups):
        want = last_query_stats(q[: end - (n_k - n_q)], k[:end], lq, chunk=4096)
        st = got.group(i, end)
        for a, b in zip((st.vertical, st.slash, st.log_mean), want, strict=True):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)


def test_ranking_equals_stable_top():
    g = torch.Generator().manual_seed(1)
    scores = (torch.rand(6, 5000, generator=g) * 50).floor()  # heavy ties: lowest index first
    budget, forced, length = [100, 1000, 0, 2048, 7, 300], [30, 64, 3, 64, 0, 5000], [5000, 4000, 10, 5000, 3, 4999]
    args = (torch.tensor(budget).cuda(), torch.tensor(forced).cuda(), torch.tensor(length).cuda())
    got = top_ids(scores.cuda(), *args, width=5100, max_forced=5000)
    assert torch.equal(got.cpu(), top_ids_reference(scores, budget, forced, length, width=5100))


def _layer(config: str):
    w = synthetic_workload(7, workload="mixed", num_tokens=6000, num_q_heads=HQ, num_kv_heads=HKV, head_dim=32,
                           head_kinds=("grid", "vertical_slash", "grid", "a_shape"), spec=default_spec())  # fmt: skip
    grid = Grid(stride="frame", block=BLOCK, lines=1)
    vs = VerticalSlash(vertical=64, slash=64, block=BLOCK)
    if config == "q_same":
        heads = [HeadSpec(boundary="q", pattern=p) for p in (grid, vs, grid, vs)]
    elif config == "q":
        heads = [HeadSpec(boundary="q", pattern=vs, by_modality={"video": grid})] * HQ
    elif config == "2d":
        bs = BlockSparse(top_k=4, block=BLOCK)
        pairs = {"video->video": grid, "video->text": bs, "video->image": bs}
        heads = [HeadSpec(boundary="2d", pattern=vs, by_pair=pairs)] * HQ
    else:
        heads = [HeadSpec(pattern=grid), HeadSpec(pattern=vs), HeadSpec(pattern=grid), HeadSpec(pattern=vs)]
    hc = HeadConfigs(
        num_layers=1, num_q_heads=HQ, num_kv_heads=HKV, layers=[LayerConfig(heads=heads, gqa=["head"] * HKV)]
    )
    return w.q.float().contiguous(), w.k.float().contiguous(), w.layout, hc


@pytest.mark.parametrize("config", ["none", "q_same", "q", "2d"])
@pytest.mark.parametrize("prefix", [0, 2500])
def test_layer_keeps_on_cuda_equal_cpu(config, prefix, monkeypatch):
    q, k, layout, hc = _layer(config)
    q = q[prefix:]
    slots = layer_slots(hc, 0)
    masks = {}
    for dev in ("cuda", "cpu"):
        keeps = estimate_layer_keeps(q.to(dev), k.to(dev), LayoutTensors(layout, dev), hc, 0, scale=1 / math.sqrt(32))
        index = index_from_keeps([keeps], block=BLOCK, num_q_heads=HQ, num_kv_heads=HKV, slot_heads=slots,
                                 device=dev)  # fmt: skip
        masks[dev] = torch.stack([index_keep_mask(index, 0, s).cpu() for s in range(len(slots))])
    assert torch.equal(masks["cuda"], masks["cpu"])
