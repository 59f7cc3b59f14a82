"""Render the reference keep masks of each boundary kind to PNGs next to this file (CPU, a few seconds).

Run: ``.venv/bin/python docs/boundaries/render.py``. The masks are `mmi_core.keep_mask` of `boundary_selection` on
one small synthetic mixed layout (random q/k, seed 0), in original order (left) and in the selection's
modality-permuted order (right), where each kept tile is what the kernel computes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    HeadSpec,
    ModalityLayout,
    VerticalSlash,
    VisualGrid,
    boundary_selection,
    keep_mask,
)

B = 16
VS = VerticalSlash(vertical=6, slash=4, last_q=32, sink=4, local=2, block=B)
AS = AShape(sink=16, local=32, block=B)
GR = Grid(stride="frame", last_q=32, sink=4, local=1, block=B)
BS = BlockSparse(top_k=2, block=B)
LAYOUT = ModalityLayout.from_parts(
    [
        ("text", 60),
        ("video", VisualGrid(frames=6, rows=4, cols=6)),
        ("text", 40),
        ("image", VisualGrid(frames=1, rows=5, cols=5)),
        ("video", VisualGrid(frames=6, rows=4, cols=6)),
        ("text", 60),
    ]
)
KINDS = {
    "q_boundary": HeadSpec(boundary="q", pattern=AS, by_modality={"text": VS, "video": GR, "image": BS}),
    "2d_boundary": HeadSpec(
        boundary="2d", pattern=AS, by_pair={"video->video": GR, "text->video": VS, "video->text": BS, "text->text": VS}
    ),
}


def main() -> None:
    out = Path(__file__).parent
    n = LAYOUT.num_tokens
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(n, 1, 16, generator=g), torch.randn(n, 1, 16, generator=g)
    mods = LAYOUT.token_modalities()
    for name, spec in KINDS.items():
        sel = boundary_selection(q, k, LAYOUT, spec)
        assert sel is not None
        m = keep_mask(sel)
        perm = m[sel.q_perm.order][:, sel.k_perm.order]
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), dpi=90)
        for ax, img, title, mo in (
            (axes[0], m, "original order", mods),
            (axes[1], perm, "modality order (kernel tiles)", mods[sel.k_perm.order]),
        ):
            ax.imshow(img.float(), cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
            edges = torch.nonzero(mo[1:] != mo[:-1]).flatten() + 0.5
            for e in edges.tolist():
                ax.axhline(e, color="tab:red", lw=0.6)
                ax.axvline(e, color="tab:red", lw=0.6)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
        fig.suptitle(f"{name}: density {float(m.sum()) / float(torch.tril(torch.ones(n, n)).sum()):.2f}", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        plt.close(fig)
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
