"""Pattern configs: defaults, the discriminated union, and pydantic errors for bad fields."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from mmi_core import AShape, BlockSparse, Coverage, Dense, Grid, PatternConfig, VerticalSlash


@pytest.mark.parametrize(
    "cfg",
    [
        Dense(),
        AShape(sink=64, local=512),
        VerticalSlash(vertical=100, slash=10, coverage=Coverage()),
        BlockSparse(top_k=4),
        Grid(stride="search", lines=3, hline=False),
        Grid(stride=256, block=128),
    ],
    ids=["dense", "a_shape", "vertical_slash", "block_sparse", "grid_search", "grid_int"],
)
def test_pattern_json_round_trip_through_the_union(cfg):
    adapter = TypeAdapter(PatternConfig)
    assert adapter.validate_json(adapter.dump_json(cfg)) == cfg


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: AShape(sink=-1), "greater than or equal to 0"),
        (lambda: AShape(block=8), "greater than or equal to 16"),
        (lambda: VerticalSlash(last_q=0), "greater than or equal to 1"),
        (lambda: BlockSparse(top_k=-2), "greater than or equal to 0"),
        (lambda: Grid(stride=1), r"Grid.stride 1 must be within \[2, max_stride=1024\]"),
        (lambda: Grid(stride=2048), "must be within"),
        (lambda: Grid(stride="auto"), "stride"),
        (lambda: Grid(hline=False, vline=False, slash=False), "at least one of hline, vline, slash"),
        (lambda: Grid(stride=4, lines=5), "Grid.lines 5 exceeds the stride 4"),
        (lambda: Coverage(min_fraction=0.5, max_fraction=0.2), "min_fraction 0.5 > max_fraction 0.2"),
        (lambda: Coverage(threshold=0.0), "greater than 0"),
        (lambda: AShape(window=3), "Extra inputs are not permitted"),
        (lambda: TypeAdapter(PatternConfig).validate_python({"kind": "stripes"}), "does not match any of the expected"),
    ],
    ids=[
        "negative_sink",
        "block_too_small",
        "last_q_zero",
        "negative_top_k",
        "stride_1",
        "stride_over_max",
        "stride_unknown_word",
        "grid_without_lines",
        "lines_over_stride",
        "coverage_bounds",
        "coverage_zero",
        "extra_field",
        "unknown_kind",
    ],
)
def test_bad_pattern_fields_raise_validation_errors(make, match):
    with pytest.raises(ValidationError, match=match):
        make()


def test_patterns_are_frozen():
    cfg = AShape()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.sink = 3
