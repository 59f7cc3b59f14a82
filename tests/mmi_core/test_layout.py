"""ModalityLayout, Segment, VisualGrid: constructors, queries, and one test per LayoutError case."""

from __future__ import annotations

import pytest
import torch

from mmi_core import LayoutError, Modality, ModalityLayout, Segment, VisualGrid

VIDEO_2x3 = VisualGrid(frames=2, rows=2, cols=3)  # 12 tokens, 6 per frame


def test_from_parts_places_segments_in_order():
    layout = ModalityLayout.from_parts([("text", 4), ("video", VIDEO_2x3), ("text", 0), ("image", VIDEO_2x3)])
    assert [(s.modality, s.start, s.end) for s in layout.segments] == [
        (Modality.TEXT, 0, 4),
        (Modality.VIDEO, 4, 16),
        (Modality.IMAGE, 16, 28),
    ]
    assert layout.num_tokens == 28
    assert layout.num_tokens_of("video") == 12
    assert layout.modalities() == (Modality.TEXT, Modality.IMAGE, Modality.VIDEO)
    assert layout.tokens_per_frame == 6


def test_layout_of_n_tokens_is_text_and_empty_layout_is_legal():
    assert ModalityLayout(5).segments == (Segment(Modality.TEXT, 0, 5),)
    assert ModalityLayout.text(3).token_modalities().tolist() == [0, 0, 0]
    assert ModalityLayout(0).segments == ()


def test_off_grid_tokens_per_row_and_frame():
    grid = VisualGrid(frames=2, rows=2, cols=2, row_extra=1, frame_prefix=1, frame_suffix=1)
    assert grid.tokens_per_frame == 1 + 2 * 3 + 1 == 8
    assert grid.grid_tokens_per_frame == 4
    assert grid.on_grid_mask().int().tolist() == [0, 1, 1, 0, 1, 1, 0, 0] * 2


def test_token_modalities_round_trip_with_back_to_back_videos():
    g1, g2 = VisualGrid(frames=1, rows=1, cols=3), VisualGrid(frames=2, rows=1, cols=2)
    layout = ModalityLayout.from_parts([("text", 2), ("video", g1), ("video", g2), ("text", 1), ("image", g1)])
    codes = layout.token_modalities()
    assert codes.tolist() == [0, 0, 2, 2, 2, 2, 2, 2, 2, 0, 1, 1, 1]
    assert ModalityLayout.from_token_modalities(codes, [g1, g2, g1]) == layout


def test_tokens_per_frame_is_none_when_videos_disagree():
    layout = ModalityLayout.from_parts([("video", VIDEO_2x3), ("video", VisualGrid(frames=1, rows=1, cols=4))])
    assert layout.tokens_per_frame is None
    assert ModalityLayout.text(4).tokens_per_frame is None


def test_shifted_pads_with_text():
    layout = ModalityLayout.from_parts([("video", VIDEO_2x3)]).shifted(3, 20)
    assert [(s.modality.name, s.start, s.end) for s in layout.segments] == [
        ("TEXT", 0, 3),
        ("VIDEO", 3, 15),
        ("TEXT", 15, 20),
    ]


@pytest.mark.parametrize("value", ["VIDEO", "video", 2, Modality.VIDEO], ids=["upper", "lower", "code", "enum"])
def test_modality_parse(value):
    assert Modality.parse(value) is Modality.VIDEO


# --- one test per LayoutError case -----------------------------------------------------------------------------
def test_overlap():
    with pytest.raises(LayoutError, match="segments overlap at token 3"):
        ModalityLayout(8, (Segment("text", 0, 4), Segment("text", 3, 8)))


def test_gap():
    with pytest.raises(LayoutError, match=r"gap in layout: tokens \[4, 5\)"):
        ModalityLayout(8, (Segment("text", 0, 4), Segment("text", 5, 8)))


def test_segments_do_not_cover_num_tokens():
    with pytest.raises(LayoutError, match=r"segments cover \[0, 4\) but the layout has 8 tokens"):
        ModalityLayout(8, (Segment("text", 0, 4),))


def test_grid_does_not_match_its_segment():
    with pytest.raises(LayoutError, match=r"has 10 tokens but its grid .* has 12"):
        Segment(Modality.VIDEO, 0, 10, VIDEO_2x3)


def test_visual_segment_without_grid_and_text_with_grid():
    with pytest.raises(LayoutError, match=r"video segment .* needs a VisualGrid"):
        Segment(Modality.VIDEO, 0, 12)
    with pytest.raises(LayoutError, match=r"text segment .* cannot carry a grid"):
        Segment(Modality.TEXT, 0, 12, VIDEO_2x3)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Segment("text", -1, 3), "negative size or start"),
        (lambda: Segment("text", 5, 3), "negative size or start"),
        (lambda: ModalityLayout(-1), "num_tokens must be >= 0"),
        (lambda: VisualGrid(frames=0, rows=2, cols=2), "VisualGrid.frames must be >= 1"),
        (lambda: VisualGrid(frames=1, rows=2, cols=2, row_extra=-1), "VisualGrid.row_extra must be >= 0"),
    ],
    ids=[
        "segment_negative_start",
        "segment_end_before_start",
        "layout_negative",
        "grid_zero_frames",
        "grid_negative_extra",
    ],
)
def test_negative_sizes(make, match):
    with pytest.raises(LayoutError, match=match):
        make()


@pytest.mark.parametrize(
    ("value", "match"),
    [("audio", "unknown modality 'audio'"), (7, "unknown modality code 7"), (None, "unknown modality code None")],
    ids=["name", "code", "none"],
)
def test_bad_modality(value, match):
    with pytest.raises(LayoutError, match=match):
        Segment(value, 0, 3)


@pytest.mark.parametrize(
    ("codes", "grids", "match"),
    [
        ([0, 2, 2, 2, 0], [], "have no grid left"),
        ([0, 2, 2, 0], [VisualGrid(frames=1, rows=1, cols=3)], "overruns the video run"),
        ([0, 2, 2, 2], [VisualGrid(frames=1, rows=1, cols=3)] * 2, "2 grids given but the visual tokens hold only 1"),
        ([0, 3, 0], [], "modality codes must be 0"),
    ],
    ids=["missing_grid", "grid_overruns_run", "too_many_grids", "bad_code"],
)
def test_from_token_modalities_errors(codes, grids, match):
    with pytest.raises(LayoutError, match=match):
        ModalityLayout.from_token_modalities(torch.tensor(codes), grids)


def test_from_token_modalities_needs_a_vector():
    with pytest.raises(LayoutError, match="must be 1-D"):
        ModalityLayout.from_token_modalities(torch.zeros(2, 3), [])


def test_shifted_out_of_range():
    with pytest.raises(LayoutError, match="cannot place a 4-token layout at 3 in 6 tokens"):
        ModalityLayout.text(4).shifted(3, 6)
