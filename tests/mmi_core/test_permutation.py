"""Permutations: exact round trips, composition, grid permutation (a permuted grid becomes contiguous blocks),
modality grouping, validation."""

from __future__ import annotations

import pytest
import torch

from mmi_core import (
    ModalityLayout,
    Permutation,
    VisualGrid,
    grid_permutation,
    grid_residues,
    modality_permutation,
)

LAYOUT = ModalityLayout.from_parts(
    [
        ("text", 5),
        ("video", VisualGrid(frames=4, rows=2, cols=3)),  # tokens 5..28, 6 per frame
        ("text", 3),
        ("image", VisualGrid(frames=1, rows=2, cols=2)),
        ("video", VisualGrid(frames=3, rows=1, cols=2, row_extra=1, frame_prefix=1)),  # 4 per frame, 2 off-grid
        ("text", 2),
    ]
)


def _perms():
    n = LAYOUT.num_tokens
    yield "identity", Permutation.identity(n)
    yield "random", Permutation(torch.randperm(n, generator=torch.Generator().manual_seed(1)))
    yield "grid_frame_stride", grid_permutation(LAYOUT, 6, 5)
    yield "grid_stride4_phase_late", grid_permutation(LAYOUT, 4, 1001)
    yield "grid_queries_of_a_chunk", grid_permutation(LAYOUT, 6, 5, start=17)
    yield "modality", modality_permutation(LAYOUT)
    yield "modality_chunk", modality_permutation(LAYOUT, 10, 40)


PERMS = dict(_perms())


@pytest.mark.parametrize("perm", PERMS.values(), ids=PERMS.keys())
def test_round_trips(perm: Permutation):
    x = torch.randn(perm.size, 3, 2)
    assert torch.equal(perm.undo(perm.apply(x)), x)
    assert torch.equal(perm.apply(perm.undo(x)), x)
    assert torch.equal(perm.order[perm.inverse], torch.arange(perm.size))
    assert torch.equal(perm.apply(torch.arange(perm.size)) + perm.offset, perm.positions)
    assert torch.equal(perm.apply(x, dim=1 - 1), x[perm.order])


@pytest.mark.parametrize("second", ["random", "grid_frame_stride", "modality"])
def test_composition(second):
    first = PERMS["random"]
    other = PERMS[second]
    both = first.then(other)
    x = torch.randn(first.size, 2)
    assert torch.equal(both.apply(x), other.apply(first.apply(x)))
    assert torch.equal(both.undo(both.apply(x)), x)


def test_composition_size_mismatch():
    with pytest.raises(ValueError, match="cannot compose permutations of sizes 3 and 4"):
        Permutation.identity(3).then(Permutation.identity(4))


def test_permuted_grid_becomes_contiguous_blocks():
    """Stride = tokens per frame: each spatial position becomes a run of `frames` tokens, in frame order."""
    perm = grid_permutation(LAYOUT, 6, 5)
    video = perm.positions[5:29].view(6, 4)  # 6 residue classes x 4 frames
    assert video.tolist() == [[5 + r + 6 * f for f in range(4)] for r in range(6)]
    assert (grid_residues(video, 6, 5) == torch.arange(6)[:, None]).all()
    assert torch.equal(perm.positions[:5], torch.arange(5))  # text keeps its place
    assert torch.equal(perm.positions[29:36], torch.arange(29, 36))  # text and image keep their place


def test_phase_rotates_the_classes_and_off_grid_tokens_follow_the_rule():
    perm = grid_permutation(LAYOUT, 4, 37)  # second video: tokens 36..47; (pos - 37) mod 4 == 0 at 37, 41, 45
    seg = perm.positions[36:48].view(4, 3)
    assert seg.tolist() == [[37, 41, 45], [38, 42, 46], [39, 43, 47], [36, 40, 44]]
    # tokens 36, 40, 44 are the frame prefixes (timestamps): with stride = tokens per frame they form their own class
    grid = LAYOUT.segments[4].grid
    assert grid.on_grid_mask().view(3, 4)[:, 0].tolist() == [False] * 3


def test_chunk_queries_permute_only_their_range():
    perm = grid_permutation(LAYOUT, 6, 5, start=17)  # inside the first video (frame 2 starts at 17)
    assert perm.offset == 17
    video = perm.positions[: 29 - 17]  # positions 17..28: two frames, sorted by class
    assert video.tolist() == [17, 23, 18, 24, 19, 25, 20, 26, 21, 27, 22, 28]


def test_modality_permutation_groups_stably():
    perm = modality_permutation(LAYOUT)
    codes = LAYOUT.token_modalities()[perm.order]
    assert torch.equal(codes, torch.sort(codes, stable=True).values)
    for code in (0, 1, 2):
        pos = perm.positions[codes == code]
        assert torch.equal(pos, torch.sort(pos).values)


@pytest.mark.parametrize(
    ("order", "offset", "match"),
    [
        (torch.tensor([0, 0, 1]), 0, "repeated ids"),
        (torch.tensor([0, 3, 1]), 0, "ids outside that range"),
        (torch.tensor([0, -1, 1]), 0, "ids outside that range"),
        (torch.zeros(2, 2, dtype=torch.int64), 0, "must be 1-D"),
        (torch.tensor([0.0, 1.0]), 0, "must be an integer tensor"),
        (torch.tensor([0, 1]), -2, "offset must be >= 0"),
    ],
    ids=["repeated", "too_large", "negative", "2d", "float", "negative_offset"],
)
def test_permutation_validation(order, offset, match):
    with pytest.raises(ValueError, match=match):
        Permutation(order, offset)


def test_grid_permutation_validation():
    with pytest.raises(ValueError, match="grid stride must be >= 1"):
        grid_permutation(LAYOUT, 0, 0)
    with pytest.raises(ValueError, match=r"token range \[3, 99\) is outside"):
        grid_permutation(LAYOUT, 4, 0, 3, 99)
