"""Report of an `mmi-search` run: pattern heat map (layer × head), recall/latency CSV, attention maps with masks."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from mmi_core import HeadConfigs, LayerEvaluator, LayerSearchResult, ModalityLayout, ReferenceEvaluator

__all__ = ["FAMILY_COLORS", "write_attention_maps", "write_csv", "write_heatmap"]

#: family -> (index, color) of the heat map
FAMILY_COLORS: dict[str, tuple[int, str]] = {
    "dense": (0, "#7f7f7f"),
    "a_shape": (1, "#1f77b4"),
    "vertical_slash": (2, "#ff7f0e"),
    "block_sparse": (3, "#2ca02c"),
    "grid": (4, "#d62728"),
}


def write_csv(results: list[LayerSearchResult], path: str | Path, group_size: int) -> Path:
    """One row per (layer, head): chosen pattern, boundary, GQA execution, output error, recall, latencies."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "layer",
                "head",
                "kv_head",
                "gqa",
                "boundary",
                "pattern",
                "output_error",
                "recall",
                "latency_ms",
                "dense_latency_ms",
                "latency_fraction",
                "in_band",
                "search_seconds",
            ]
        )
        for r in results:
            for h, c in enumerate(r.heads):
                w.writerow(
                    [
                        r.layer,
                        h,
                        h // group_size,
                        r.gqa[h // group_size],
                        c.spec.boundary,
                        c.label,
                        f"{c.output_error:.6f}",
                        f"{c.recall:.6f}",
                        f"{c.latency_ms:.6g}",
                        f"{c.dense_latency_ms:.6g}",
                        f"{c.latency_ms / max(c.dense_latency_ms, 1e-30):.4f}",
                        int(c.in_band),
                        f"{r.seconds:.3f}",
                    ]
                )
    return path


def write_heatmap(results: list[LayerSearchResult], path: str | Path, title: str = "") -> Path:
    """PNG: the chosen pattern family per layer (rows) × head (columns), labelled when the grid is small."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fams = list(FAMILY_COLORS)
    grid = torch.tensor([[FAMILY_COLORS[c.spec.pattern.kind][0] for c in r.heads] for r in results])
    n_l, n_h = grid.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * n_h + 3), max(2.8, 0.35 * n_l + 1.8)))
    ax.imshow(
        grid.numpy(),
        cmap=ListedColormap([FAMILY_COLORS[f][1] for f in fams]),
        vmin=0,
        vmax=len(fams) - 1,
        aspect="auto",
        interpolation="nearest",
    )
    if n_l * n_h <= 64:
        for i, r in enumerate(results):
            for h, c in enumerate(r.heads):
                ax.text(h, i, f"{c.output_error:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(n_h))
    ax.set_yticks(range(n_l))
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title("\n".join(filter(None, [title, "number: output error vs dense"])), fontsize=8)
    ax.legend(
        handles=[Patch(color=FAMILY_COLORS[f][1], label=f) for f in fams],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_attention_maps(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: ModalityLayout,
    head_configs: HeadConfigs,
    layer: int,
    path: str | Path,
    *,
    heads: list[int] | None = None,
    window: int = 256,
    scale: float | None = None,
    evaluator: LayerEvaluator | None = None,
) -> Path:
    """PNG: for a few heads of ``layer``, the dense causal attention of the last ``window`` query rows over the last
    ``window`` keys (log scale) with the chosen keep set outlined in red and the dropped causal pairs greyed.
    ``q [n_q, Hq, D]``, ``k [n_k, Hkv, D]`` (any device). The keep sets come from ``evaluator.row_keep_masks``
    (default `ReferenceEvaluator`: mmi-core's estimation, short inputs; the search's `KernelTimer` for long ones).
    Raises ValueError like `estimate_layer_selections`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_q, hq, d = q.shape
    n_k, hkv = k.shape[0], k.shape[1]
    heads = heads if heads is not None else list(range(min(hq, 4)))
    w = min(window, n_q)
    rows = torch.arange(n_q - w, n_q)
    masks = (evaluator or ReferenceEvaluator()).row_keep_masks(
        q, k, layout, head_configs, rows, layer=layer, scale=scale
    )
    k0 = n_k - w
    s = 1.0 / d**0.5 if scale is None else scale
    causal = torch.arange(n_k)[None, :] <= (rows + n_k - n_q)[:, None]
    fig, axes = plt.subplots(1, len(heads), figsize=(3.2 * len(heads), 3.4), squeeze=False)
    for ax, h in zip(axes[0], heads, strict=True):
        logits = (q[rows.to(q.device), h].float() @ k[:, h // (hq // hkv)].float().T).cpu() * s
        p = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1)[:, k0:]
        mask = masks[h].cpu()[:, k0:]
        ax.imshow(torch.log10(p.clamp_min(1e-6)).numpy(), cmap="viridis", vmin=-6, vmax=0, interpolation="nearest")
        dropped = (causal[:, k0:] & ~mask).float()
        ax.imshow(dropped.numpy(), cmap="Greys", vmin=0, vmax=1, alpha=0.45 * dropped.numpy(), interpolation="nearest")
        ax.contour(mask.float().numpy(), levels=[0.5], colors="red", linewidths=0.6)
        spec = head_configs.spec(layer, h)
        ax.set_title(f"L{layer} H{h}: {spec.pattern.kind}", fontsize=8)
        ax.set_xlabel(f"keys {k0}..{n_k - 1}", fontsize=7)
        ax.set_ylabel(f"queries (last {w})", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("dense attention (log10); chosen keep set outlined in red, dropped pairs greyed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
