"""Keep sets of every pattern, written out by hand as pictures, plus a brute-force oracle for the Grid rules.

Pictures: one line per query row (original order), one character per key; ``#`` kept, ``.`` not. Pattern configs
insist on block >= 16 (the kernels' tiles); the semantics hold for any block, so most pictures use tiny blocks via
``model_copy(update=...)`` to stay readable.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from mmi_core import (
    AShape,
    BlockSparse,
    Grid,
    ModalityLayout,
    Permutation,
    Selection,
    VerticalSlash,
    VisualGrid,
    ashape_selection,
    block_sparse_selection,
    dense_selection,
    grid_selection,
    keep_mask,
    union_selections,
    vertical_slash_selection,
)


def tiny(cfg, **update):
    """A pattern config with fields (e.g. a block < 16) that the pydantic bounds reserve for kernels."""
    return cfg.model_copy(update=update)


def causal(n_q: int, n_k: int) -> torch.Tensor:
    return torch.arange(n_k)[None, :] <= (torch.arange(n_q) + n_k - n_q)[:, None]


# ---------------------------------------------------------------------------------------------------------------
# A-shape
# ---------------------------------------------------------------------------------------------------------------
ASHAPE_CASES = {
    # 20 tokens, block 4, sink 1, local 1: sink -> key block 0; the 1-token window of a block's first row touches
    # the previous block, so each query block keeps block 0, the block before it and its own block.
    "n20_b4_sink1_local1": (
        20,
        20,
        tiny(AShape(), block=4, sink=1, local=1),
        """
        #...................
        ##..................
        ###.................
        ####................
        #####...............
        ######..............
        #######.............
        ########............
        #########...........
        ##########..........
        ###########.........
        ############........
        ####....#####.......
        ####....######......
        ####....#######.....
        ####....########....
        ####........#####...
        ####........######..
        ####........#######.
        ####........########
        """,
    ),
    # local 0: the own block only (plus the sink block)
    "n16_b4_sink1_local0": (
        16,
        16,
        tiny(AShape(), block=4, sink=1, local=0),
        """
        #...............
        ##..............
        ###.............
        ####............
        #####...........
        ######..........
        #######.........
        ########........
        ####....#.......
        ####....##......
        ####....###.....
        ####....####....
        ####........#...
        ####........##..
        ####........###.
        ####........####
        """,
    ),
    # N not a multiple of the block: the last block holds 2 tokens; sink 0 keeps no extra block
    "n10_b4_sink0_local2": (
        10,
        10,
        tiny(AShape(), block=4, sink=0, local=2),
        """
        #.........
        ##........
        ###.......
        ####......
        #####.....
        ######....
        #######...
        ########..
        ....#####.
        ....######
        """,
    ),
    # N shorter than one (real) block: everything causal is kept
    "n5_shorter_than_block64": (
        5,
        5,
        AShape(sink=0, local=0, block=64),
        """
        #....
        ##...
        ###..
        ####.
        #####
        """,
    ),
    # prefix 8 (n_q 6 < n_k 14): query blocks are rows {8..11} and {12, 13}; the window of row 8 touches block 1
    "prefix8_nq6_nk14_b4": (
        6,
        14,
        tiny(AShape(), block=4, sink=1, local=1),
        """
        #########.....
        ##########....
        ###########...
        ############..
        ####....#####.
        ####....######
        """,
    ),
}


@pytest.mark.parametrize(("n_q", "n_k", "cfg", "expected"), ASHAPE_CASES.values(), ids=ASHAPE_CASES.keys())
def test_ashape_keep_set(n_q, n_k, cfg, expected, picture, draw):
    got = keep_mask(ashape_selection(n_q, n_k, cfg))
    assert torch.equal(got, picture(expected)), "\n" + draw(got)


# ---------------------------------------------------------------------------------------------------------------
# Vertical-slash
# ---------------------------------------------------------------------------------------------------------------
VS_CASES = {
    # column 1 stays a single column (dropped where block 0 is kept anyway); diagonal offset 8 (key = row - 8) is
    # rounded to the key block it touches: rows 12..15 keep keys 4..7 although only key 4 is on it for row 12.
    "n20_b4_col1_off8": (
        20,
        20,
        tiny(VerticalSlash(), block=4, sink=0, local=1),
        [1],
        [8],
        """
        #...................
        ##..................
        ###.................
        ####................
        .#..#...............
        .#..##..............
        .#..###.............
        .#..####............
        ####....#...........
        ####....##..........
        ####....###.........
        ####....####........
        .#..####....#.......
        .#..####....##......
        .#..####....###.....
        .#..####....####....
        .#......####....#...
        .#......####....##..
        .#......####....###.
        .#......####....####
        """,
    ),
    # sink 2 = columns 0 and 1; offset 5 is not a multiple of the block, so for rows 12..15 it touches keys 7..10,
    # i.e. key blocks 1 and 2; column 5 is a single column only where its block (1) is not kept (rows 16..19)
    "n20_b4_sink2_col5_off5_nonmultiple": (
        20,
        20,
        tiny(VerticalSlash(), block=4, sink=2, local=1),
        [5],
        [5],
        """
        #...................
        ##..................
        ###.................
        ####................
        #####...............
        ######..............
        #######.............
        ########............
        #########...........
        ##########..........
        ###########.........
        ############........
        ##..#########.......
        ##..##########......
        ##..###########.....
        ##..############....
        ##...#..#########...
        ##...#..##########..
        ##...#..###########.
        ##...#..############
        """,
    ),
    # prefix 6: rows are positions 6..13, query blocks {6..9} and {10..13} straddle key blocks; offset 3, column 2
    "prefix6_nq8_nk14_col2_off3": (
        8,
        14,
        tiny(VerticalSlash(), block=4, sink=0, local=1),
        [2],
        [3],
        """
        #######.......
        ########......
        #########.....
        ##########....
        ..#.#######...
        ..#.########..
        ..#.#########.
        ..#.##########
        """,
    ),
}


@pytest.mark.parametrize(
    ("n_q", "n_k", "cfg", "columns", "offsets", "expected"), VS_CASES.values(), ids=VS_CASES.keys()
)
def test_vertical_slash_keep_set(n_q, n_k, cfg, columns, offsets, expected, picture, draw):
    sel = vertical_slash_selection(n_q, n_k, cfg, torch.tensor(columns), torch.tensor(offsets))
    got = keep_mask(sel)
    assert torch.equal(got, picture(expected)), "\n" + draw(got)


def test_vertical_slash_ignores_out_of_range_ids():
    cfg = tiny(VerticalSlash(), block=4, sink=0, local=1)
    base = keep_mask(vertical_slash_selection(12, 12, cfg, torch.tensor([3]), torch.tensor([4])))
    noisy = keep_mask(vertical_slash_selection(12, 12, cfg, torch.tensor([3, -1, 12, 99]), torch.tensor([4, -2, 50])))
    assert torch.equal(base, noisy)


# ---------------------------------------------------------------------------------------------------------------
# Block-sparse
# ---------------------------------------------------------------------------------------------------------------
BS_CASES = {
    # block 0 and the own block always; top blocks per query block: [3] is non-causal for query block 0 (dropped),
    # -1 is padding
    "n20_b4": (
        20,
        20,
        [[3], [-1], [1], [-1], [2]],
        """
        #...................
        ##..................
        ###.................
        ####................
        #####...............
        ######..............
        #######.............
        ########............
        #########...........
        ##########..........
        ###########.........
        ############........
        ####........#.......
        ####........##......
        ####........###.....
        ####........####....
        ####....####....#...
        ####....####....##..
        ####....####....###.
        ####....####....####
        """,
    ),
    # prefix 10 (not a multiple of the block): query block {10..13} straddles key blocks 2 and 3 (both kept as its
    # own) and picks block 1; query block {14..17} straddles blocks 3 and 4 and picks nothing
    "prefix10_nq8_nk18_straddle": (
        8,
        18,
        [[1], [-1]],
        """
        ###########.......
        ############......
        #############.....
        ##############....
        ####........###...
        ####........####..
        ####........#####.
        ####........######
        """,
    ),
}


@pytest.mark.parametrize(("n_q", "n_k", "top", "expected"), BS_CASES.values(), ids=BS_CASES.keys())
def test_block_sparse_keep_set(n_q, n_k, top, expected, picture, draw):
    sel = block_sparse_selection(n_q, n_k, tiny(BlockSparse(), block=4), torch.tensor(top))
    got = keep_mask(sel)
    assert torch.equal(got, picture(expected)), "\n" + draw(got)


def test_block_sparse_rejects_wrong_top_blocks_shape():
    with pytest.raises(ValueError, match=r"top_blocks must be \[3, k\]"):
        block_sparse_selection(12, 12, tiny(BlockSparse(), block=4), torch.zeros(2, 1, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------------------
# Grid
# ---------------------------------------------------------------------------------------------------------------
def grid_layout(text_before: int = 3, frames: int = 3, cols: int = 3, text_after: int = 3) -> ModalityLayout:
    """text + video (frames x 1 row x cols) + text: with stride = cols and phase 0, position p is on line p % cols."""
    return ModalityLayout.from_parts(
        [("text", text_before), ("video", VisualGrid(frames=frames, rows=1, cols=cols)), ("text", text_after)]
    )


# The 15-token layout text 3 + video 3 frames x 3 + text 3 with stride 3, phase 0 permutes keys to
# [0 1 2 | 3 6 9 | 4 7 10 | 5 8 11 | 12 13 14]: with block 3 every residue class is exactly one key block.
GRID_CASES = {
    # slash only: a video row keeps its own residue class (keys 3, 6, 9 for rows 3, 6, 9): diagonals spaced by 3
    "slash": (
        grid_layout(),
        15,
        dict(hline=False, vline=False, slash=True),
        [0],
        """
        #..............
        ##.............
        ###............
        ...#...........
        ....#..........
        .....#.........
        ...#..#........
        ....#..#.......
        .....#..#......
        ...#..#..#.....
        ....#..#..#....
        .....#..#..#...
        ............#..
        ............##.
        ............###
        """,
    ),
    # vline only: every row after it keeps the line keys 3, 6, 9 (block {3, 6, 9}); text rows 0..2 precede them
    "vline": (
        grid_layout(),
        15,
        dict(hline=False, vline=True, slash=False),
        [0],
        """
        #..............
        ##.............
        ###............
        ...#...........
        ...##..........
        ...#.#.........
        ...#..#........
        ...##.##.......
        ...#.##.#......
        ...#..#..#.....
        ...##.##.##....
        ...#.##.##.#...
        ...#..#..#..#..
        ...#..#..#..##.
        ...#..#..#..###
        """,
    ),
    # hline only: the line rows 3, 6, 9 keep every causal key; the rest keep their own block
    "hline": (
        grid_layout(),
        15,
        dict(hline=True, vline=False, slash=False),
        [0],
        """
        #..............
        ##.............
        ###............
        ####...........
        ....#..........
        .....#.........
        #######........
        ....#..#.......
        .....#..#......
        ##########.....
        ....#..#..#....
        .....#..#..#...
        ............#..
        ............##.
        ............###
        """,
    ),
    # the phase moves the lines: residues [1] -> line keys 4, 7, 10; keys permute to
    # [0 1 2 | 4 7 10 | 5 8 11 | 3 6 9 | 12 13 14]: the class of 3, 6, 9 is now the last video block
    "vline_phase1": (
        grid_layout(),
        15,
        dict(hline=False, vline=True, slash=False),
        [1],
        """
        #..............
        ##.............
        ###............
        ...#...........
        ....#..........
        ....##.........
        ...##.#........
        ....#..#.......
        ....##.##......
        ...##.##.#.....
        ....#..#..#....
        ....##.##.##...
        ....#..#..#.#..
        ....#..#..#.##.
        ....#..#..#.###
        """,
    ),
    # sink 2 + local 1 + slash: sink keys 0, 1 sit in key block {0, 1, 2}; local adds the key block before the own
    # one in key-permuted order (row 4's own block is {4, 7, 10}, the one before is {3, 6, 9})
    "slash_sink2_local1": (
        grid_layout(),
        15,
        dict(hline=False, vline=False, slash=True, sink=2, local=1),
        [0],
        """
        #..............
        ##.............
        ###............
        ####...........
        #####..........
        ###.##.........
        ####..#........
        #####.##.......
        ###.##.##......
        ####..#..#.....
        #####.##.##....
        ###.##.##.##...
        ###..#..#..##..
        ###..#..#..###.
        ###..#..#..####
        """,
    ),
    # prefix 8 (n_q 7): the queries' part of the video (8..11) is permuted on its own to [9 10 8 | 11 12 13 | 14],
    # so query blocks differ from key blocks; the first query block touches key blocks {3,6,9} {4,7,10} {5,8,11}
    "prefix8_slash_query_perm_differs": (
        grid_layout(),
        7,
        dict(hline=False, vline=False, slash=True),
        [0],
        """
        ...######......
        ...#######.....
        ...########....
        .....#..#..#...
        .....#..#..##..
        .....#..#..###.
        ............###
        """,
    ),
    # one frame (text 2 + 1 frame x 4 + text 2, stride 4, line residue 2 = position 2): every class is one token, the
    # permutation is the identity; row 2 is the hline, key 2 the vline
    "one_frame_all_lines": (
        grid_layout(2, 1, 4, 2),
        8,
        dict(block=2, stride=4, hline=True, vline=True, slash=True),
        [2],
        """
        #.......
        ##......
        ###.....
        ####....
        ..###...
        ..####..
        ..##..#.
        ..##..##
        """,
    ),
    # two videos separated by an empty text segment (dropped): text 1 + (2 frames x 2) + text 0 + (2 frames x 2) +
    # text 1, stride 2, block 2. Keys permute to [0 2 | 4 1 | 3 6 | 8 5 | 7 9]: blocks straddle classes and the seam
    # between the videos; a slash class never crosses into the other video (row 6 keeps 1, 3, 4 only by rounding).
    "two_videos_empty_text_between": (
        ModalityLayout.from_parts(
            [
                ("text", 1),
                ("video", VisualGrid(frames=2, rows=1, cols=2)),
                ("text", 0),
                ("video", VisualGrid(frames=2, rows=1, cols=2)),
                ("text", 1),
            ]
        ),
        10,
        dict(block=2, stride=2, hline=False, vline=False, slash=True),
        [0],
        """
        #.........
        ##........
        #.#.......
        .#.#......
        ###.#.....
        ...#.#....
        .#.##.#...
        .....#.#..
        ...#.##.#.
        .....#.###
        """,
    ),
}


def grid_cfg(**update) -> Grid:
    """Grid with stride 3, block 3, no sink, no local blocks, then ``update``."""
    base = dict(block=3, sink=0, local=0)
    stride = update.pop("stride", 3)
    return tiny(Grid(stride=stride), **{**base, **update})


@pytest.mark.parametrize(
    ("layout", "n_q", "update", "residues", "expected"), GRID_CASES.values(), ids=GRID_CASES.keys()
)
def test_grid_keep_set(layout, n_q, update, residues, expected, picture, draw):
    update = dict(update)
    cfg = grid_cfg(**update)
    stride = cfg.stride
    got = keep_mask(grid_selection(layout, n_q, cfg, stride, residues))
    assert torch.equal(got, picture(expected)), "\n" + draw(got)


def test_grid_permuted_blocks_are_residue_classes():
    """Block = frames and stride = tokens per frame: each video key block is one grid line (one patch over time)."""
    layout = grid_layout(3, 3, 3, 3)
    sel = grid_selection(layout, 15, grid_cfg(), 3, [0])
    assert sel.k_perm.positions.view(5, 3).tolist() == [[0, 1, 2], [3, 6, 9], [4, 7, 10], [5, 8, 11], [12, 13, 14]]
    assert torch.equal(sel.q_perm.order, sel.k_perm.order)


def test_grid_without_video_keeps_sink_and_local_only():
    # one local block before the own block = an A-shape whose 1-token window touches the previous block
    layout = ModalityLayout.text(16)
    sel = grid_selection(layout, 16, grid_cfg(block=4, sink=1, local=1), 3, [0])
    want = keep_mask(ashape_selection(16, 16, tiny(AShape(), block=4, sink=1, local=1)))
    assert torch.equal(keep_mask(sel), want)
    assert not want[15, 4:8].any()


# ---------------------------------------------------------------------------------------------------------------
# Grid against a brute-force oracle (loops over pairs and tiles; shares no code with grid_selection)
# ---------------------------------------------------------------------------------------------------------------
def grid_oracle(layout: ModalityLayout, n_q: int, cfg: Grid, stride: int, residues: list[int]) -> torch.Tensor:
    n = layout.num_tokens
    prefix = n - n_q
    phase = residues[0]
    seg_of, is_video = [0] * n, [False] * n
    for s_idx, s in enumerate(layout.segments):
        for p in range(s.start, s.end):
            seg_of[p], is_video[p] = s_idx, s.modality.name == "VIDEO"

    def permuted(lo: int) -> list[int]:
        out = list(range(lo, n))
        for s in layout.segments:
            if s.modality.name != "VIDEO":
                continue
            a, b = max(s.start, lo), s.end
            if a < b:
                out[a - lo : b - lo] = sorted(range(a, b), key=lambda p: ((p - phase) % stride, p))
        return out

    b = cfg.block
    kblock = {p: idx // b for idx, p in enumerate(permuted(0))}
    qblock = {p: idx // b for idx, p in enumerate(permuted(prefix))}
    lines = {r % stride for r in residues}

    def rule(i: int, j: int) -> bool:
        if j > i:
            return False
        on_i = is_video[i] and i % stride in lines
        on_j = is_video[j] and j % stride in lines
        same_class = is_video[i] and is_video[j] and seg_of[i] == seg_of[j] and (i - j) % stride == 0
        return j < cfg.sink or j == i or (cfg.slash and same_class) or (cfg.vline and on_j) or (cfg.hline and on_i)

    tiles = {(qblock[i], kblock[j]) for i in range(prefix, n) for j in range(n) if rule(i, j)}
    tiles |= {(qblock[i], kblock[i] - s) for i in range(prefix, n) for s in range(1, cfg.local + 1)}
    keep = torch.zeros(n_q, n, dtype=torch.bool)
    for i in range(prefix, n):
        for j in range(i + 1):
            keep[i - prefix, j] = (qblock[i], kblock[j]) in tiles
    return keep


def random_grid_case(seed: int):
    rng = random.Random(seed)
    parts: list = [("text", rng.randint(0, 5))]
    for _ in range(rng.randint(1, 2)):
        grid = VisualGrid(
            frames=rng.randint(1, 4),
            rows=rng.randint(1, 2),
            cols=rng.randint(1, 4),
            row_extra=rng.randint(0, 1),
            frame_prefix=rng.randint(0, 1),
        )
        parts += [("video", grid), ("text", rng.randint(0, 3))]
    layout = ModalityLayout.from_parts(parts)
    tpf = layout.tokens_per_frame or 4
    stride = rng.choice([max(tpf, 2), rng.randint(2, 6)])
    residues = rng.sample(range(stride), k=rng.randint(1, min(2, stride)))
    residues[0] += stride * rng.randint(0, 2)  # the phase may be any absolute position
    flags = rng.choice([c for c in itertools.product([False, True], repeat=3) if any(c)])
    cfg = grid_cfg(
        block=rng.randint(1, 5),
        stride=stride,
        sink=rng.randint(0, 3),
        local=rng.randint(0, 2),
        hline=flags[0],
        vline=flags[1],
        slash=flags[2],
    )
    n_q = rng.randint(1, layout.num_tokens)
    return layout, n_q, cfg, stride, residues


@pytest.mark.parametrize("seed", range(40), ids=lambda s: f"seed{s}")
def test_grid_matches_brute_force_oracle(seed, draw):
    layout, n_q, cfg, stride, residues = random_grid_case(seed)
    got = keep_mask(grid_selection(layout, n_q, cfg, stride, residues))
    want = grid_oracle(layout, n_q, cfg, stride, residues)
    assert torch.equal(got, want), f"{layout} n_q={n_q} {cfg} stride={stride} residues={residues}\n{draw(got)}"


SHORT = ModalityLayout.from_parts([("text", 1), ("video", VisualGrid(frames=2, rows=1, cols=2))])  # 5 tokens
SHORT_CASES = {
    "dense": lambda: dense_selection(5, 5, 64),
    "a_shape": lambda: ashape_selection(5, 5, AShape(sink=0, local=0)),
    "vertical_slash": lambda: vertical_slash_selection(5, 5, VerticalSlash(sink=0, local=1), [], []),
    "block_sparse": lambda: block_sparse_selection(5, 5, BlockSparse(top_k=0), torch.zeros(1, 0, dtype=torch.long)),
    "grid": lambda: grid_selection(SHORT, 5, Grid(stride=2, sink=0, local=0, hline=False, vline=False), 2, [1]),
}


@pytest.mark.parametrize("build", SHORT_CASES.values(), ids=SHORT_CASES.keys())
def test_n_shorter_than_one_block_keeps_every_causal_pair(build, picture, draw):
    """5 tokens, block 64: one tile holds everything, so every pattern keeps the whole causal triangle."""
    sel = build()
    assert sel.blocks.shape == (1, 1)
    got = keep_mask(sel)
    want = """
        #....
        ##...
        ###..
        ####.
        #####
        """
    assert torch.equal(got, picture(want)), "\n" + draw(got)


def identity_oracle(n_q: int, n_k: int, block: int, pair_rule, column_rule=lambda i, j: False, tile_rule=None):
    """Keep set from a pair rule rounded to identity-order tiles, plus single columns: loops, no shared code."""
    prefix = n_k - n_q
    tiles = {((i - prefix) // block, j // block) for i in range(prefix, n_k) for j in range(i + 1) if pair_rule(i, j)}
    if tile_rule is not None:
        tiles |= {(qb, kb) for qb in range(-(-n_q // block)) for kb in range(-(-n_k // block)) if tile_rule(qb, kb)}
    keep = torch.zeros(n_q, n_k, dtype=torch.bool)
    for i in range(prefix, n_k):
        for j in range(i + 1):
            keep[i - prefix, j] = ((i - prefix) // block, j // block) in tiles or column_rule(i, j)
    return keep


def random_identity_case(seed: int):
    rng = random.Random(1000 + seed)
    n_k = rng.randint(1, 40)
    n_q = rng.randint(1, n_k)
    block = rng.randint(1, 9)
    kind = ["a_shape", "vertical_slash", "block_sparse"][seed % 3]
    if kind == "a_shape":
        cfg = tiny(AShape(), block=block, sink=rng.randint(0, 6), local=rng.randint(0, 12))
        sel = ashape_selection(n_q, n_k, cfg)
        want = identity_oracle(n_q, n_k, block, lambda i, j: j < cfg.sink or i - cfg.local <= j <= i)
    elif kind == "vertical_slash":
        cfg = tiny(VerticalSlash(), block=block, sink=rng.randint(0, 4), local=rng.randint(1, 5))
        cols = rng.sample(range(n_k), k=rng.randint(0, min(4, n_k)))
        offs = rng.sample(range(n_k), k=rng.randint(0, min(3, n_k)))
        sel = vertical_slash_selection(n_q, n_k, cfg, cols, offs)
        diag = set(offs) | set(range(cfg.local))
        want = identity_oracle(
            n_q, n_k, block, lambda i, j: i - j in diag, column_rule=lambda i, j: j in cols or j < cfg.sink
        )
    else:
        nqb, nkb = -(-n_q // block), -(-n_k // block)
        top = [[rng.randint(-1, nkb) for _ in range(2)] for _ in range(nqb)]
        sel = block_sparse_selection(n_q, n_k, tiny(BlockSparse(), block=block), top)
        want = identity_oracle(n_q, n_k, block, lambda i, j: i == j, tile_rule=lambda qb, kb: kb == 0 or kb in top[qb])
    return kind, sel, want


@pytest.mark.parametrize("seed", range(45), ids=lambda s: f"{['a_shape', 'vs', 'block_sparse'][s % 3]}_seed{s}")
def test_identity_patterns_match_brute_force_oracle(seed, draw):
    kind, sel, want = random_identity_case(seed)
    got = keep_mask(sel)
    assert torch.equal(got, want), f"{kind} n_q={sel.n_q} n_k={sel.n_k} block={sel.block}\n{draw(got)}"


# ---------------------------------------------------------------------------------------------------------------
# GQA union
# ---------------------------------------------------------------------------------------------------------------
def test_union_is_the_or_of_hand_written_keep_sets(picture):
    a_cfg = ASHAPE_CASES["n20_b4_sink1_local1"]
    v_cfg = VS_CASES["n20_b4_col1_off8"]
    a = ashape_selection(20, 20, a_cfg[2])
    v = vertical_slash_selection(20, 20, v_cfg[2], torch.tensor(v_cfg[3]), torch.tensor(v_cfg[4]))
    union = union_selections([a, v, a])
    assert torch.equal(keep_mask(union), picture(a_cfg[3]) | picture(v_cfg[5]))
    assert v.columns is not None and union.columns is None  # canonical: the A-shape's sink block 0 absorbs column 1


def test_grid_union_shares_the_permutation(picture):
    layout = grid_layout()
    h = grid_selection(layout, 15, grid_cfg(hline=True, vline=False, slash=False), 3, [0])
    v = grid_selection(layout, 15, grid_cfg(hline=False, vline=True, slash=False), 3, [0])
    got = keep_mask(union_selections([h, v]))
    assert torch.equal(got, picture(GRID_CASES["hline"][4]) | picture(GRID_CASES["vline"][4]))


def test_union_rejects_different_permutations():
    layout = grid_layout()
    g = grid_selection(layout, 15, grid_cfg(), 3, [0])
    a = ashape_selection(15, 15, tiny(AShape(), block=3))
    with pytest.raises(ValueError, match="share block size and permutations"):
        union_selections([g, a])
    with pytest.raises(ValueError, match="at least one"):
        union_selections([])


# ---------------------------------------------------------------------------------------------------------------
# Properties of every builder: own position kept (no empty softmax row), causal, canonical form
# ---------------------------------------------------------------------------------------------------------------
VIDEO = ModalityLayout.from_parts(
    [("text", 5), ("video", VisualGrid(frames=4, rows=2, cols=3, row_extra=1)), ("text", 0), ("text", 6)]
)


def _builders():
    n = VIDEO.num_tokens  # 5 + 4 * 8 + 6 = 43
    for n_q in (n, 17, 1):
        for block in (4, 16, 64):
            yield f"dense_nq{n_q}_b{block}", dense_selection(n_q, n, block)
            yield f"ashape_nq{n_q}_b{block}", ashape_selection(n_q, n, tiny(AShape(), block=block, sink=2, local=3))
            yield (
                f"vs_nq{n_q}_b{block}",
                vertical_slash_selection(
                    n_q,
                    n,
                    tiny(VerticalSlash(), block=block, sink=1, local=1),
                    torch.tensor([7, 20]),
                    torch.tensor([9]),
                ),
            )
            nqb = -(-n_q // block)
            yield (
                f"block_sparse_nq{n_q}_b{block}",
                block_sparse_selection(n_q, n, tiny(BlockSparse(), block=block), torch.full((nqb, 1), 1)),
            )
            for stride in (8, 5):
                yield (
                    f"grid_s{stride}_nq{n_q}_b{block}",
                    grid_selection(VIDEO, n_q, grid_cfg(block=block, stride=stride, sink=0, local=0), stride, [6, 2]),
                )
    yield "ashape_n5_shorter_than_block", ashape_selection(5, 5, AShape(block=64))


BUILDERS = dict(_builders())


@pytest.mark.parametrize("sel", BUILDERS.values(), ids=BUILDERS.keys())
def test_every_row_keeps_its_own_position_and_stays_causal(sel: Selection):
    keep = keep_mask(sel)
    rows = torch.arange(sel.n_q)
    assert keep[rows, rows + sel.prefix].all(), "a row does not keep its own position: its softmax would be empty"
    assert not (keep & ~causal(sel.n_q, sel.n_k)).any()


@pytest.mark.parametrize("sel", BUILDERS.values(), ids=BUILDERS.keys())
def test_selection_is_canonical(sel: Selection):
    b = sel.block
    qpos, kpos = sel.q_perm.positions, sel.k_perm.positions
    for qb, kb in sel.blocks.nonzero().tolist():  # every kept tile holds a causal pair
        assert kpos[kb * b : (kb + 1) * b].min() <= qpos[qb * b : (qb + 1) * b].max()
    if sel.columns is not None:
        for qb, c in sel.columns.nonzero().tolist():  # columns are causal and outside kept blocks
            assert kpos[c] <= qpos[qb * b : (qb + 1) * b].max()
            assert not sel.blocks[qb, c // b]


def test_dense_selection_keeps_every_causal_pair_and_only_causal_tiles():
    sel = dense_selection(10, 10, 4)
    assert torch.equal(keep_mask(sel), causal(10, 10))
    assert torch.equal(sel.blocks, torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))


def test_keep_mask_on_sampled_rows_matches_full():
    sel = BUILDERS["grid_s5_nq17_b4"]
    rows = torch.tensor([0, 3, 16])
    assert torch.equal(keep_mask(sel, rows), keep_mask(sel)[rows])
    with pytest.raises(ValueError, match="rows must be query-row ids"):
        keep_mask(sel, torch.tensor([17]))


# ---------------------------------------------------------------------------------------------------------------
# Selection validation
# ---------------------------------------------------------------------------------------------------------------
def _perms(n_q: int, n_k: int) -> tuple[Permutation, Permutation]:
    return Permutation.identity(n_q, n_k - n_q), Permutation.identity(n_k)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(block=0), "block must be >= 1"),
        (dict(blocks=torch.ones(2, 2, dtype=torch.bool)), r"blocks must be bool \(3, 3\)"),
        (dict(blocks=torch.ones(3, 3, dtype=torch.int64)), "blocks must be bool"),
        (dict(columns=torch.ones(3, 9, dtype=torch.bool)), r"columns must be bool \(3, 10\)"),
        (
            dict(
                perms=(Permutation.identity(8, 0), Permutation.identity(10)), blocks=torch.ones(2, 3, dtype=torch.bool)
            ),
            "q_perm.offset must be n_k - n_q = 2",
        ),
        (dict(perms=(Permutation.identity(11, 0), Permutation.identity(10))), "queries must be a suffix"),
    ],
    ids=["block0", "blocks_shape", "blocks_dtype", "columns_shape", "q_offset", "more_queries_than_keys"],
)
def test_selection_validation(kwargs, match):
    kwargs = dict(kwargs)
    qp, kp = kwargs.pop("perms", _perms(10, 10))
    args = dict(block=4, q_perm=qp, k_perm=kp, blocks=torch.ones(3, 3, dtype=torch.bool)) | kwargs
    with pytest.raises(ValueError, match=match):
        Selection(**args)


def test_grid_selection_validation():
    with pytest.raises(ValueError, match="at least one residue"):
        grid_selection(grid_layout(), 15, grid_cfg(), 3, [])
    with pytest.raises(ValueError, match="stride must be >= 1"):
        grid_selection(grid_layout(), 15, grid_cfg(), 0, [0])
    with pytest.raises(ValueError, match="n_q 16 must be within"):
        grid_selection(grid_layout(), 16, grid_cfg(), 3, [0])


def test_selection_and_permutation_equality():
    a, b = dense_selection(10, 12, 4), dense_selection(10, 12, 4)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != dense_selection(10, 12, 2)
    assert a != ashape_selection(10, 12, tiny(AShape(), block=4, sink=0, local=0))
    v = vertical_slash_selection(10, 12, tiny(VerticalSlash(), block=4, sink=0, local=1), [0], [])
    assert v == vertical_slash_selection(10, 12, tiny(VerticalSlash(), block=4, sink=0, local=1), [0], [])
    assert v.columns is not None and v != ashape_selection(10, 12, tiny(AShape(), block=4, sink=0, local=1))
    assert Permutation.identity(5, 2) == Permutation(torch.arange(5, dtype=torch.int32), 2)
    assert Permutation.identity(5, 2) != Permutation.identity(5, 1)
    assert Permutation.identity(5) != "not a permutation"
