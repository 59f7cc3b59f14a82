"""Render the reference keep masks of each boundary kind to PNGs next to this file (CPU, a few seconds).

Run: ``.venv/bin/python docs/boundaries/render.py``. The masks are `mmi_core.keep_mask` of `boundary_selection` on
one small synthetic mixed layout (random q/k, seed 0), in original order (left) and part by part (right: the text,
image and video parts stacked, each part's rows and keys in its own orders), where each kept tile is what the kernel
computes.
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
        # each part's rows in its own row order against the keys in its own key order (what its slot computes)
        stacked = [keep_mask(p)[p.q_perm.order[: p.num_rows]][:, p.k_perm.order] for p in sel.parts]
        perm = torch.cat(stacked)
        cuts = torch.cumsum(torch.tensor([p.num_rows for p in sel.parts]), 0)[:-1]
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), dpi=90)
        axes[0].imshow(m.float(), cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        for e in (torch.nonzero(mods[1:] != mods[:-1]).flatten() + 0.5).tolist():
            axes[0].axhline(e, color="tab:red", lw=0.6)
            axes[0].axvline(e, color="tab:red", lw=0.6)
        axes[1].imshow(perm.float(), cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        for e in (cuts.float() - 0.5).tolist():
            axes[1].axhline(e, color="tab:red", lw=0.6)
        for ax, title in ((axes[0], "original order"), (axes[1], "text / image / video parts, own orders")):
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
