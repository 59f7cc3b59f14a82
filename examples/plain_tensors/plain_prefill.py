"""mmi-core + mmi-kernels from plain tensors, no SGLang: what another engine (vLLM, TensorRT-LLM, your own) does.

An engine knows, per request, its token ids, where the multimodal placeholders are and each video's frame grid.
That becomes a `ModalityLayout`; per-layer head patterns are `HeadConfigs`; `SparsePrefillWrapper` plans once per
batch and runs once per layer (or `sparse_prefill` for one request). The same plan, as a `SparseIndex`, exports to
PyTorch FlexAttention (`index_to_block_mask`) and to FlashInfer's block-sparse wrapper (`FlashInferBlockSparse`,
CUDA only), and all three agree on the identical keep set.

Run: ``.venv/bin/python examples/plain_tensors/plain_prefill.py`` (CPU: a few tens of seconds, most of it
``torch.compile`` of FlexAttention; on CPU the mmi path runs its PyTorch twin, on a GPU the Triton kernel).
"""

from __future__ import annotations

import math

import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    ModalityLayout,
    VisualGrid,
)
from mmi_kernels import (
    FlashInferBlockSparse,
    LayoutTensors,
    SparsePrefillWrapper,
    bsr_attention_reference,
    dense_causal_attention,
    estimate_layer_keeps,
    flashinfer_available,
    flex_sparse_attention,
    index_from_keeps,
    index_to_block_mask,
    index_to_flashinfer_bsr,
    layer_slots,
    sparse_prefill,
)
from mmi_kernels.estimate import layer_block

HQ, HKV, D, BLOCK = 8, 2, 64, 16
VIDEO_PAD = 151656  # the engine's video placeholder id (Qwen2.5-VL's <|video_pad|>)


def engine_request() -> tuple[torch.Tensor, list[VisualGrid]]:
    """What an engine holds for one request: token ids with placeholders, and each video's frame grid."""
    video = VisualGrid(frames=6, rows=4, cols=6)  # 24 tokens per frame after the vision encoder
    ids = torch.cat([torch.randint(0, 1000, (37,)), torch.full((video.num_tokens,), VIDEO_PAD), torch.arange(23)])
    return ids, [video]


def layout_from_engine(ids: torch.Tensor, grids: list[VisualGrid]) -> ModalityLayout:
    """Engine structures -> the core's layout (the adapter's whole job): modality code per token, grids in order."""
    modality = torch.where(ids == VIDEO_PAD, 2, 0)  # 0 text, 1 image, 2 video
    return ModalityLayout.from_token_modalities(modality, grids)


def head_configs() -> HeadConfigs:
    """One layer: KV group 0 runs Grid (one shared stride/phase), group 1 mixes A-shape and block-sparse heads."""
    grid = HeadSpec(pattern=Grid(stride="frame", lines=1, sink=16, local=1, last_q=16, block=BLOCK))
    ashape = HeadSpec(pattern=AShape(sink=16, local=32, block=BLOCK))
    blocks = HeadSpec(pattern=BlockSparse(top_k=2, block=BLOCK))
    layer = LayerConfig(heads=[grid] * 4 + [ashape, ashape, blocks, blocks], gqa=["group", "group"])
    return HeadConfigs(num_layers=1, num_q_heads=HQ, num_kv_heads=HKV, layers=[layer])


def main() -> None:
    torch.manual_seed(0)
    ids, grids = engine_request()
    layout = layout_from_engine(ids, grids)
    hc = head_configs()
    n = layout.num_tokens
    q, k, v = torch.randn(n, HQ, D), torch.randn(n, HKV, D), torch.randn(n, HKV, D)
    scale = 1.0 / math.sqrt(D)
    print(f"layout: {n} tokens, {layout.modalities()}; head slots of layer 0: {layer_slots(hc, 0)}")

    # 1. mmi itself: plan once per batch, run once per layer (min_tokens=0: this toy request is tiny)
    w = SparsePrefillWrapper(hc, min_tokens=0)
    w.plan([layout])
    o_mmi = w.run(q, k, v, layer=0)
    o_one = sparse_prefill(q, k, v, layout, hc, layer=0)  # the one-shot form, same result
    print(f"wrapper vs sparse_prefill: max |diff| = {float((o_mmi - o_one).abs().max()):.2e}")

    # 2. the same plan as a SparseIndex (what the wrapper builds inside run), for other kernels
    keeps = estimate_layer_keeps(q, k, LayoutTensors(layout, q.device), hc, 0, scale=scale)
    index = index_from_keeps(
        [keeps], block=layer_block(hc, 0), num_q_heads=HQ, num_kv_heads=HKV, slot_heads=layer_slots(hc, 0)
    )

    # 3. FlexAttention on the identical keep set (compiled: eager flex ignores the block lists)
    ex = index_to_block_mask(index, trim=q.is_cuda)  # Inductor's CPU template needs full-width lists
    o_flex = flex_sparse_attention(q, k, v, ex, scale=scale)
    print(
        f"FlexAttention: {ex.full_tiles} full tiles (no mask_mod), {ex.partial_tiles} partial tiles; "
        f"rel. error vs mmi = {float((o_flex - o_mmi).norm() / o_mmi.norm()):.2e}"
    )

    # 4. FlashInfer's BlockSparseAttentionWrapper (CUDA); on CPU its PyTorch twin on the same folded BSR
    ok, why = flashinfer_available()
    if ok:
        fb = FlashInferBlockSparse()
        fb.plan(index.to("cuda"), head_dim=D, dtype=torch.bfloat16, scale=scale)
        o_fi = fb.run(q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16()).float().cpu()
        where = "flashinfer"
    else:
        bsr = index_to_flashinfer_bsr(index)
        qf, kf, vf = bsr.fold(q, k, v)
        o_fi = bsr.unfold(bsr_attention_reference(bsr, qf, kf, vf, scale), torch.empty_like(q))
        where = f"its PyTorch twin ({why}); mask mode: {'causal' if bsr.causal else 'explicit mask'}"
    print(f"FlashInfer via {where}: rel. error vs mmi = {float((o_fi - o_mmi).norm() / o_mmi.norm()):.2e}")

    # the keep sets really are sparse: dense causal attention differs
    o_dense = dense_causal_attention(q, k, v, scale)
    print(f"dense causal vs mmi: rel. difference = {float((o_dense - o_mmi).norm() / o_mmi.norm()):.2e}")


if __name__ == "__main__":
    main()
