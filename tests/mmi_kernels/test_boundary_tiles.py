"""`mmi_kernels.boundary_tiles.slot_tiles`: the Triton kernel (interpreted on a CPU) equals the PyTorch expression,
and both equal the definition (an [H, R, Wr, C, Wc] brute force), on awkward sizes, ties, padding ids, shared
(head-expanded) slot tables and transposed sub blocks."""

from __future__ import annotations

import pytest
import torch

from mmi_kernels.boundary_tiles import slot_tiles

KERNEL_DEV = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, interpreted on a CPU


def _on(triton: str, *ts: torch.Tensor) -> list[torch.Tensor]:
    """The inputs where that execution runs: the kernel's device for "1", the CPU (PyTorch expression) for "0"."""
    return [t.to(KERNEL_DEV if triton == "1" else "cpu") for t in ts]


def _case(heads: int, nr: int, nc: int, n_rows: int, n_cols: int, wr: int, wc: int, seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(heads, nr, nc, generator=g) < 0.3
    r_slot = torch.randint(0, nr + 1, (heads, n_rows, wr), generator=g)  # id nr: padding
    c_slot = torch.randint(0, nc + 1, (heads, n_cols, wc), generator=g)
    # small value range: many ties (a key at exactly the row's position is kept)
    r_val = torch.randint(-3, 12, (heads, n_rows, wr), generator=g).to(dtype)
    c_val = torch.randint(-3, 12, (heads, n_cols, wc), generator=g).to(dtype)
    return s, r_slot, r_val, c_slot, c_val


def _brute(s, r_slot, r_val, c_slot, c_val) -> torch.Tensor:
    s_ext = torch.nn.functional.pad(s, (0, 1, 0, 1))  # ids nr / nc: empty slots, no pair
    h = torch.arange(s_ext.shape[0])[:, None, None, None, None]
    hit = s_ext[h, r_slot[:, :, :, None, None], c_slot[:, None, None, :, :]]  # [H, R, Wr, C, Wc]
    return (hit & (c_val[:, None, None] <= r_val[:, :, :, None, None])).any(4).any(2)


@pytest.mark.parametrize("w", range(1, 9))
@pytest.mark.parametrize(("heads", "n_rows", "n_cols"), [(1, 1, 1), (3, 17, 65), (2, 33, 7)])
def test_slot_tiles_kernel_equals_torch(w: int, heads: int, n_rows: int, n_cols: int, monkeypatch) -> None:
    dtype = torch.int32 if w % 2 else torch.int64
    args = _case(heads, 5, 9, n_rows, n_cols, wr=max(1, w // 2), wc=w, seed=w * 100 + n_rows, dtype=dtype)
    want = _brute(*args)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ref = slot_tiles(*args)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = slot_tiles(*_on("1", *args)).cpu()
    assert ref.dtype == out.dtype == torch.bool and ref.shape == (heads, n_rows, n_cols)
    assert torch.equal(ref, want) and torch.equal(out, want)
    if n_rows * n_cols > 1:
        assert want.any() and not want.all()


@pytest.mark.parametrize(("wr", "wc"), [(33, 1), (16, 2), (1, 24)])
def test_slot_tiles_many_slots_on_one_side(wr: int, wc: int, monkeypatch) -> None:
    """Many slots on one side, few on the other: the planner's scattered rows (up to ``block`` row slots against
    one key slot) go through the kernel as they are."""
    args = _case(2, 40, 12, 9, 70, wr=wr, wc=wc, seed=wr + 7 * wc, dtype=torch.int32)
    want = _brute(*args)
    for triton in ("0", "1"):
        monkeypatch.setenv("TRITON_INTERPRET", triton)
        assert torch.equal(slot_tiles(*_on(triton, *args)).cpu(), want)
    assert want.any() and not want.all()


@pytest.mark.parametrize("triton", ["0", "1"])
def test_slot_tiles_shared_tables_and_transposed_blocks(triton: str, monkeypatch) -> None:
    """Slot tables expanded over the heads (stride 0, read in place) and a transposed view of the sub blocks give
    the same tiles as contiguous copies."""
    monkeypatch.setenv("TRITON_INTERPRET", triton)
    case = _case(3, 6, 4, 19, 70, wr=2, wc=3, seed=7, dtype=torch.int32)
    want = _brute(case[0], case[1][:1].expand(3, -1, -1), case[2][:1].expand(3, -1, -1), *case[3:])
    s_ext, r_slot, r_val, c_slot, c_val = _on(triton, *case)
    r_slot, r_val = r_slot[:1].expand(3, -1, -1), r_val[:1].expand(3, -1, -1)  # expanded where they run
    s_t = s_ext.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major storage
    assert torch.equal(slot_tiles(s_t, r_slot, r_val, c_slot, c_val).cpu(), want)
    assert torch.equal(slot_tiles(s_ext, r_slot.contiguous(), r_val.contiguous(), c_slot, c_val).cpu(), want)


def test_slot_tiles_ties_and_padding() -> None:
    """A key at exactly the row's value is kept; a padding id never is, whatever its value."""
    s_ext = torch.tensor([[[True]]])  # one sub block; id 1: an empty slot
    r_slot, c_slot = torch.tensor([[[0], [0], [1]]]), torch.tensor([[[0, 1], [0, 1]]])
    r_val, c_val = torch.tensor([[[5], [4], [99]]]), torch.tensor([[[5, -9], [6, -9]]])
    want = torch.tensor([[[True, False], [False, False], [False, False]]])
    for triton in ("0", "1"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRITON_INTERPRET", triton)
            assert torch.equal(slot_tiles(*_on(triton, s_ext, r_slot, r_val, c_slot, c_val)).cpu(), want)


@pytest.mark.parametrize("triton", ["0", "1"])
def test_slot_tiles_reverse_equals_negated_values(triton: str, monkeypatch) -> None:
    """``reverse`` (``c_val >= r_val``: the planner's transposed problem) equals the plain test on negated values,
    ties included."""
    monkeypatch.setenv("TRITON_INTERPRET", triton)
    s, r_slot, r_val, c_slot, c_val = _case(2, 7, 5, 11, 66, wr=3, wc=1, seed=4, dtype=torch.int32)
    want = _brute(s, r_slot, -r_val, c_slot, -c_val)
    got = slot_tiles(*_on(triton, s, r_slot, r_val, c_slot, c_val), reverse=True).cpu()
    assert torch.equal(got, want) and want.any() and not want.all()


def test_slot_tiles_errors() -> None:
    s_ext, r_slot, r_val, c_slot, c_val = _case(2, 3, 3, 4, 5, wr=1, wc=2, seed=0, dtype=torch.int32)
    with pytest.raises(ValueError, match="s must be bool"):
        slot_tiles(s_ext[0], r_slot, r_val, c_slot, c_val)
    with pytest.raises(ValueError, match="r_slot must be"):
        slot_tiles(s_ext, r_slot[:1], r_val, c_slot, c_val)
    with pytest.raises(ValueError, match="slot ids and values must match"):
        slot_tiles(s_ext, r_slot, r_val, c_slot, c_val[:, :, :1])
    with pytest.raises(ValueError, match="one dtype"):
        slot_tiles(s_ext, r_slot, r_val, c_slot, c_val.long())
    empty = slot_tiles(s_ext, r_slot[:, :0], r_val[:, :0], c_slot, c_val)
    assert empty.shape == (2, 0, 5)


@pytest.mark.parametrize("triton", ["0", "1"])
def test_slot_tiles_ors_into_a_strided_out(triton: str, monkeypatch) -> None:
    """``out`` (here a transposed slice of a larger tensor, partly True already) gets the tiles ORed in, in place;
    the rest of the larger tensor is untouched."""
    monkeypatch.setenv("TRITON_INTERPRET", triton)
    case = _case(2, 5, 6, 21, 13, wr=2, wc=2, seed=3, dtype=torch.int64)
    g = torch.Generator().manual_seed(1)
    big_cpu = torch.rand(2, 15, 25, generator=g) < 0.2  # [H, C + 2, R + 4]
    args = _on(triton, *case)
    (big,) = _on(triton, big_cpu)
    out = big[:, 1:14, 2:23].transpose(1, 2)  # [H, R, C], strided
    prior = out.cpu()
    got = slot_tiles(*args, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(out.cpu(), prior | _brute(*case))
    mask = torch.ones_like(big_cpu)
    mask[:, 1:14, 2:23] = False
    assert torch.equal(big.cpu()[mask], big_cpu[mask])
    with pytest.raises(ValueError, match="out must be bool"):
        slot_tiles(*args, out=torch.zeros(2, 21, 12, dtype=torch.bool, device=big.device))
