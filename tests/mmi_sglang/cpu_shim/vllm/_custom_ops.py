"""Test-only shim: ``vllm._custom_ops.rotary_embedding`` in PyTorch.

sglang 0.5.17's ``RotaryEmbedding`` imports this op when it runs neither on CUDA nor in its CPU engine mode (whose
sgl-kernel CPU build is not on PyPI). Put this directory on PYTHONPATH of the engine process only
(test_sglang_engine.py does); it applies the rotation in place like the real op.
"""

import torch


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor | None,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> None:
    cos, sin = cos_sin_cache[positions.flatten().long()].float().chunk(2, dim=-1)
    rot = cos.shape[-1] * 2

    def apply(x: torch.Tensor) -> None:
        x3 = x.view(positions.numel(), -1, head_size)
        xr = x3[..., :rot].float()
        c, s = cos[:, None, :], sin[:, None, :]
        if is_neox:
            x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
            out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
        else:
            x1, x2 = xr[..., ::2], xr[..., 1::2]
            out = torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
        x3[..., :rot] = out.to(x.dtype)

    apply(query)
    if key is not None:
        apply(key)
