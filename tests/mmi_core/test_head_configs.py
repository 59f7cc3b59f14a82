"""HeadConfigs: JSON round trip, per-head lookups, validate_for, tp_slice, and one test per ConfigError case."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from mmi_core import (
    SCHEMA_VERSION,
    AShape,
    ConfigError,
    Dense,
    Grid,
    HeadConfigs,
    HeadSpec,
    LayerConfig,
    Modality,
    VerticalSlash,
)


def mixed_configs() -> HeadConfigs:
    """2 layers x 4 q heads x 2 kv heads with every boundary kind."""
    heads = [
        HeadSpec(pattern=Grid(stride="frame", lines=2)),
        HeadSpec(boundary="k", pattern=AShape(sink=64, local=256)),
        HeadSpec(boundary="q", pattern=VerticalSlash(), by_modality={"VIDEO": Grid(stride=196)}),
        HeadSpec(boundary="2d", pattern=AShape(), by_pair={"Video -> Text": VerticalSlash(vertical=10, slash=4)}),
    ]
    layer0 = LayerConfig(heads=heads, gqa=["group", "head"])
    layer1 = LayerConfig(heads=[HeadSpec()] * 4, gqa=["group", "group"])
    return HeadConfigs(
        num_layers=2, num_q_heads=4, num_kv_heads=2, layers=[layer0, layer1], metadata={"model": "toy", "n": 1}
    )


def test_json_round_trip_string_and_file(tmp_path):
    cfgs = mixed_configs()
    assert HeadConfigs.loads(cfgs.dumps()) == cfgs
    path = tmp_path / "heads.json"
    cfgs.save(path)
    assert HeadConfigs.load(path) == cfgs
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_lookups_per_boundary_kind():
    cfgs = mixed_configs()
    grid_head, k_head, q_head, pair_head = cfgs.layers[0].heads
    assert q_head.by_modality == {"video": Grid(stride=196)}  # keys normalised to lower case
    assert q_head.for_query(Modality.VIDEO) == Grid(stride=196)
    assert q_head.for_query(Modality.TEXT) == VerticalSlash()
    assert pair_head.by_pair.keys() == {"video->text"}
    assert pair_head.for_pair(Modality.VIDEO, Modality.TEXT) == VerticalSlash(vertical=10, slash=4)
    assert pair_head.for_pair(Modality.TEXT, Modality.VIDEO) == AShape()
    assert k_head.for_pair(Modality.VIDEO, Modality.TEXT) == AShape(sink=64, local=256)
    assert grid_head.block == 64 and cfgs.spec(1, 3).is_dense and cfgs.spec(1, 3).block is None
    assert cfgs.group_size == 2


def test_uniform_and_validate_for():
    cfgs = HeadConfigs.uniform(3, 28, 4, Grid(), metadata={"model": "qwen2.5-vl-7b"})
    assert cfgs.validate_for(3, 28, 4) is cfgs
    with pytest.raises(ConfigError, match=r"\(3, 28, 4\), the model has \(3, 28, 2\) \[qwen2.5-vl-7b\]"):
        cfgs.validate_for(3, 28, 2)


@pytest.mark.parametrize(
    ("q", "kv", "world", "rank", "want_heads", "want_kv"),
    [(8, 4, 2, 1, [4, 5, 6, 7], 2), (8, 2, 4, 3, [6, 7], 1), (28, 4, 4, 2, [14, 15, 16, 17, 18, 19, 20], 1)],
    ids=["split_kv", "replicate_kv", "qwen_7_per_kv"],
)
def test_tp_slice(q, kv, world, rank, want_heads, want_kv):
    heads = [HeadSpec(pattern=AShape(local=64 * (h + 1))) for h in range(q)]
    gqa = ["group" if g % 2 == 0 else "head" for g in range(kv)]
    cfgs = HeadConfigs(num_layers=1, num_q_heads=q, num_kv_heads=kv, layers=[LayerConfig(heads=heads, gqa=gqa)])
    part = cfgs.tp_slice(rank, world)
    assert [h.pattern.local // 64 - 1 for h in part.layers[0].heads] == want_heads
    assert part.num_kv_heads == want_kv
    first_kv = want_heads[0] // (q // kv)  # the kv head of the rank's first q head
    assert part.layers[0].gqa == gqa[first_kv : first_kv + want_kv]
    assert part.metadata["tp"] == {"rank": rank, "world_size": world}


@pytest.mark.parametrize(
    ("q", "kv", "rank", "world", "match"),
    [
        (8, 2, 4, 4, "bad tensor-parallel rank 4 of 4"),
        (6, 2, 0, 4, "6 q heads do not split over 4 ranks"),
        (12, 6, 0, 4, "6 kv heads do not split over 4 ranks"),
        (12, 3, 0, 4, "3 kv heads cannot be replicated evenly over 4 ranks"),
    ],
    ids=["rank_out_of_range", "q_heads", "kv_heads", "kv_replication"],
)
def test_tp_slice_errors(q, kv, rank, world, match):
    with pytest.raises(ConfigError, match=match):
        HeadConfigs.uniform(1, q, kv, Dense()).tp_slice(rank, world)


# --- one test per ConfigError case -----------------------------------------------------------------------------
def _doc(**change) -> str:
    data = json.loads(mixed_configs().dumps())
    for path, value in change.items():
        *parents, last = path.split("__")
        node = data
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value
    return json.dumps(data)


def test_malformed_json():
    with pytest.raises(ConfigError, match=r"heads\.json: not valid JSON"):
        HeadConfigs.loads('{"schema_version": 1,', source="heads.json")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        HeadConfigs.load(tmp_path / "nope.json")


def test_wrong_schema_version():
    with pytest.raises(ConfigError, match="schema_version 99 is not supported"):
        HeadConfigs.loads(_doc(schema_version=99))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(num_layers=3), "2 layers given, num_layers is 3"),
        (dict(num_q_heads=5), "num_q_heads 5 is not a multiple of num_kv_heads 2"),
        (dict(num_q_heads=6), "layer 0 has 4 heads, num_q_heads is 6"),
        (dict(layers__1__gqa=["group"]), "layer 1 has 1 gqa entries, num_kv_heads is 2"),
    ],
    ids=["layers", "q_not_multiple_of_kv", "heads", "gqa_entries"],
)
def test_head_counts_mismatch(change, match):
    with pytest.raises(ConfigError, match=match):
        HeadConfigs.loads(_doc(**change))


def test_mixed_block_sizes_in_a_layer():
    with pytest.raises(ConfigError, match=r"layer 0 mixes block sizes \[64, 128\]"):
        HeadConfigs.loads(_doc(layers__0__heads__1__pattern={"kind": "a_shape", "block": 128}))


def test_mixed_block_sizes_in_a_head():
    bad = {"kind": "grid", "block": 128}
    with pytest.raises(ConfigError, match="all patterns of one head must share one block size"):
        HeadConfigs.loads(_doc(layers__0__heads__2__by_modality={"video": bad}))


def test_by_modality_without_boundary_q():
    with pytest.raises(ConfigError, match="by_modality is only used by boundary 'q', not 'none'"):
        HeadConfigs.loads(_doc(layers__0__heads__2__boundary="none"))


def test_by_pair_without_boundary_2d():
    with pytest.raises(ConfigError, match="by_pair is only used by boundary '2d', not 'q'"):
        HeadConfigs.loads(_doc(layers__0__heads__3__boundary="q"))


@pytest.mark.parametrize("key", ["video-text", "video->audio", "a->b->c"], ids=["no_arrow", "unknown", "three"])
def test_bad_pair_key(key):
    with pytest.raises(ConfigError, match=r"2d pair key .* must look like 'text->video'"):
        HeadConfigs.loads(_doc(layers__0__heads__3__by_pair={key: {"kind": "dense"}}))


def test_bad_by_modality_key():
    with pytest.raises(ConfigError, match="by_modality key 'audio' is not a modality"):
        HeadConfigs.loads(_doc(layers__0__heads__2__by_modality={"audio": {"kind": "dense"}}))


def test_direct_construction_raises_validation_error():
    with pytest.raises(ValidationError, match="by_modality is only used"):
        HeadSpec(boundary="none", by_modality={"video": Grid()})
