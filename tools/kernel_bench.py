"""GPU evidence for the sparse prefill kernel (issue #4): ceilings, correctness at 32K/128K, throughput at 128K/512K.

Qwen2.5-VL-7B attention shapes (28 query heads, 4 KV heads, head_dim 128, bf16). Patterns are built directly on the
GPU at block level (mmi_core's builders are O(N^2) / CPU):
- ``blocks``: block-sparse, per query block the diagonal block, block 0 and random causal key blocks (top-k);
- ``grid``: a 1024-token text prefix then video of ``stride`` tokens per frame, grid-permuted (queries and keys by
  ``(pos mod stride, pos)``); kept: sink block, own + 1 local block, slash (own residue class), ``lines`` vlines and
  hlines (an hline query block keeps every causal key: a leading run in the index);
- ``vs``: vertical-slash, identity order: diagonals as block ranges plus single key columns: mmi's MInference-style
  vertical-slash path (rows carry ``peer_label``); not expressible in Flex or FlashInfer (single columns), no peer row.
Peers on the identical mask: FlexAttention through `mmi_kernels.index_to_block_mask` (always), FlashInfer's
BlockSparseAttentionWrapper through `mmi_kernels.FlashInferBlockSparse` (``--flashinfer``, when flashinfer and CUDA
are usable; a row with ``skipped`` otherwise).
Every (kv) head slot shares one pattern, so FlexAttention gets the identical mask with H=1.

Density = computed tiles / causal tiles (nqb (nqb+1) / 2). FLOPs on computed tiles = 4 * D * 64 * 64 * tiles * Hq
(columns: 4 * D * 64 * columns * Hq); dense causal FLOPs = 4 * D * N (N+1) / 2 * Hq.

Usage: python3 tools/kernel_bench.py --out DIR --stage {ceil,check,time128,time512,sweep} [...]
Writes DIR/kernel_bench_<stage>.json after every measurement (partial results survive a kill).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import triton

import mmi_kernels.sparse_attention  # noqa: F401  (the module; the package name is shadowed by the function)
from mmi_kernels import (
    FlashInferBlockSparse,
    KernelConfig,
    SlotKeep,
    flashinfer_available,
    index_from_keeps,
    index_to_block_mask,
    sparse_attention,
)

HQ, HKV, D, B = 28, 4, 128, 64
_FLEX: dict = {}
ASM_DIR: Path | None = None
PAGED_TOO = False
TEXT_PREFIX = 1024


def log(*a: object) -> None:
    print(*a, flush=True)


class Recorder:
    def __init__(self, out: Path, stage: str) -> None:
        self.path = out / f"kernel_bench_{stage}.json"
        props = torch.cuda.get_device_properties(0)
        self.data: dict = {
            "stage": stage,
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name(0),
            "sm_count": props.multi_processor_count,
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(),
            "results": [],
        }
        self.flush()

    def add(self, **row: object) -> None:
        self.data["results"].append(row)
        log(json.dumps(row))
        self.flush()

    def flush(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def time_ms(fn, warmup: int = 2, reps: int = 10) -> tuple[float, list[float]]:
    """Median of ``reps`` CUDA-event timings after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], ts


# -- patterns (block level, on the GPU) -----------------------------------------------------------------------------
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pattern_blocks(n: int, density: float, dev: str, seed: int = 0):
    nb = cdiv(n, B)
    g = torch.Generator(device=dev).manual_seed(seed)
    kb = torch.arange(nb, device=dev)
    causal = kb[None, :] <= kb[:, None]
    topk = max(int(density * (nb + 1) / 2) - 2, 1)
    score = torch.rand(nb, nb, device=dev, generator=g).masked_fill(~causal, -1.0)
    top = torch.topk(score, min(topk, nb), dim=1).indices
    blocks = torch.zeros(nb, nb, dtype=torch.bool, device=dev)
    blocks.scatter_(1, top, True)
    blocks &= causal
    blocks[:, 0] = True
    blocks[kb, kb] = True
    order = torch.arange(n, device=dev)
    return order, blocks, None


def grid_order(n: int, stride: int, dev: str) -> torch.Tensor:
    pos = torch.arange(n, device=dev)
    vid = pos >= TEXT_PREFIX
    key = torch.where(vid, TEXT_PREFIX + ((pos - TEXT_PREFIX) % stride) * n + pos, pos)
    return torch.argsort(key)


def pattern_grid(n: int, stride: int, lines: int, dev: str):
    """Grid keep set at block level; video = [TEXT_PREFIX, n), residue classes of (pos - TEXT_PREFIX) mod stride."""
    nb = cdiv(n, B)
    nv = n - TEXT_PREFIX
    order = grid_order(n, stride, dev)
    # class c occupies permuted rows [TEXT_PREFIX + start[c], TEXT_PREFIX + start[c+1])
    per = torch.full((stride,), nv // stride, device=dev, dtype=torch.int64)
    per[: nv % stride] += 1
    start = torch.zeros(stride + 1, device=dev, dtype=torch.int64)
    start[1:] = torch.cumsum(per, 0)
    qb = torch.arange(nb, device=dev)
    a = qb * B
    z = torch.clamp(a + B - 1, max=n - 1)
    kb = torch.arange(nb, device=dev)
    blocks = (kb[None, :] == qb[:, None]) | (kb[None, :] == qb[:, None] - 1) | (kb[None, :] == 0)
    is_vid = z >= TEXT_PREFIX
    c_lo = torch.searchsorted(start, torch.clamp(a - TEXT_PREFIX, min=0), right=True) - 1
    c_hi = torch.searchsorted(start, torch.clamp(z - TEXT_PREFIX, min=0), right=True) - 1
    lo_b = (TEXT_PREFIX + start[c_lo]) // B
    hi_b = (TEXT_PREFIX + start[c_hi + 1] - 1) // B
    blocks |= is_vid[:, None] & (kb[None, :] >= lo_b[:, None]) & (kb[None, :] <= hi_b[:, None])  # slash
    res = torch.linspace(0, stride - 1, lines + 2, device=dev)[1:-1].round().long()  # kept residues
    hline = torch.zeros(nb, dtype=torch.bool, device=dev)
    for r in res.tolist():
        lo, hi = (TEXT_PREFIX + start[r]) // B, (TEXT_PREFIX + start[r + 1] - 1) // B
        blocks |= (kb[None, :] >= lo) & (kb[None, :] <= hi)  # vline
        hline |= is_vid & (c_lo <= r) & (c_hi >= r)
    blocks |= hline[:, None]
    return order, blocks, None


def pattern_vs(n: int, density: float, dev: str, seed: int = 0):
    nb = cdiv(n, B)
    g = torch.Generator(device=dev).manual_seed(seed)
    per_row = density * n / 2
    n_cols = max(int(per_row / 2), 1)
    n_diag = max(int(per_row / 2 / (1.5 * B)), 1)
    offs = torch.unique(
        torch.cat([torch.randint(0, n, (n_diag,), device=dev, generator=g), torch.arange(B, device=dev)])
    )
    qb = torch.arange(nb, device=dev)
    first = qb * B
    last = torch.clamp(first + B - 1, max=n - 1)
    kb = torch.arange(nb, device=dev)
    blocks = torch.zeros(nb, nb, dtype=torch.bool, device=dev)
    for o in offs.tolist():
        lo = torch.clamp(first - o, min=0) // B
        hi = (last - o) // B
        ok = last - o >= 0
        blocks |= ok[:, None] & (kb[None, :] >= lo[:, None]) & (kb[None, :] <= hi[:, None])
    cols = torch.unique(
        torch.cat([torch.randint(0, n, (n_cols,), device=dev, generator=g), torch.arange(30, device=dev)])
    )
    col_ids = cols[None, :].expand(nb, -1).contiguous()
    return torch.arange(n, device=dev), blocks, col_ids


def make_pattern(kind: str, n: int, density: float, dev: str):
    if kind == "blocks":
        return pattern_blocks(n, density, dev)
    if kind == "vs":
        return pattern_vs(n, density, dev)
    if kind == "grid":  # pick stride / lines closest to the target tile density
        nb = cdiv(n, B)
        causal_tiles = nb * (nb + 1) / 2
        best = None
        for stride in (64, 128, 256, 512, 1024):
            for lines in (1, 2, 4):
                _, blk, _ = pattern_grid(n, stride, lines, dev)
                d = float((blk & torch.tril(torch.ones_like(blk))).sum()) / causal_tiles
                if best is None or abs(math.log(d / density)) < abs(math.log(best[0] / density)):
                    best = (d, stride, lines)
                del blk
        _, stride, lines = best
        o, blk, c = pattern_grid(n, stride, lines, dev)
        return o, blk, c, {"stride": stride, "lines": lines}
    raise ValueError(kind)


def build(kind: str, n: int, density: float, dev: str, prefix: int = 0):
    made = make_pattern(kind, n, density, dev)
    order, blocks, col_ids = made[:3]
    extra = made[3] if len(made) > 3 else {}
    n_q = n - prefix
    if prefix:
        qb0 = prefix // B
        assert prefix % B == 0 and kind != "grid", "prefix runs use identity orders and block-aligned prefixes"
        blocks = blocks[qb0:]
        col_ids = col_ids[qb0:] if col_ids is not None else None
        q_order = torch.arange(n_q, device=dev)
    else:
        q_order = order
    keep = SlotKeep(q_order, order, blocks, col_ids)
    t0 = time.perf_counter()
    idx = index_from_keeps([[keep] * HKV], block=B, num_q_heads=HQ, num_kv_heads=HKV, device=dev)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    return idx, keep, extra, build_s


def tile_stats(idx) -> tuple[int, int]:
    """(computed block tiles, computed column entries) of slot 0 (all slots share the pattern)."""
    tiles = int((idx.block_prefix[0].long() + idx.block_count[0].long()).sum())
    cols = int(idx.column_count[0].long().sum())
    return tiles, cols


# -- references -----------------------------------------------------------------------------------------------------
def reference_rows(q, k, v, keep: SlotKeep, rows: torch.Tensor, prefix: int) -> torch.Tensor:
    """fp32 [len(rows), HQ, D]: dense attention on the kept set for sampled original query rows (chunked over keys
    is unnecessary at these row counts: [rows, n_k] fp32 per head)."""
    n_k = k.shape[0]
    q_inv = torch.empty_like(keep.q_order)
    q_inv[keep.q_order] = torch.arange(keep.q_order.numel(), device=q.device)
    k_inv = torch.empty_like(keep.k_order)
    k_inv[keep.k_order] = torch.arange(n_k, device=q.device)
    qb = q_inv[rows] // B
    m = keep.blocks[qb][:, k_inv // B]  # [rows, n_k]
    if keep.column_ids is not None:
        cm = torch.zeros(rows.numel(), n_k, dtype=torch.bool, device=q.device)
        listed = qb < keep.column_ids.shape[0]  # a part's lists stop after its rows
        ids = torch.where(listed[:, None], keep.column_ids[qb.clamp(max=keep.column_ids.shape[0] - 1)], -1)
        cm.scatter_(1, torch.clamp(ids, min=0), ids >= 0)
        m |= cm[:, k_inv]
    m &= torch.arange(n_k, device=q.device)[None, :] <= (rows + prefix)[:, None]
    out = torch.empty(rows.numel(), HQ, D, device=q.device)
    for h in range(HQ):
        s = (q[rows, h].float() @ k[:, h // (HQ // HKV)].float().T) / math.sqrt(D)
        p = torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1)
        out[:, h] = p @ v[:, h // (HQ // HKV)].float()
    return out


def stage_ceil(rec: Recorder) -> None:
    src = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), warmup=3, reps=20)
    rec.add(what="copy", bytes=2 * src.numel() * 2, ms=ms, tb_s=2 * src.numel() * 2 / ms / 1e9)
    src = dst = None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms, _ = time_ms(lambda: a @ b, warmup=3, reps=20)
    rec.add(what="matmul_bf16_8192", ms=ms, tflops=2 * 8192**3 / ms / 1e9)


def qkv(n_q: int, n_k: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(n_q, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(n_k, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(n_k, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v


def stage_check(rec: Recorder, sizes: list[int]) -> None:
    for n in sizes:
        for kind, prefix, paged in (("grid", 0, False), ("blocks", 0, False), ("vs", n // 4, True)):
            idx, keep, extra, _ = build(kind, n, 0.05, "cuda", prefix)
            n_q = n - prefix
            q, k, v = qkv(n_q, n, seed=n + prefix)
            out = torch.full_like(q, float("nan"))
            if paged:  # keys live in a shuffled pool twice as large
                pool = 2 * n
                slots = torch.randperm(pool, device="cuda")[:n].to(torch.int32)
                kc = torch.randn(pool, HKV, D, device="cuda", dtype=q.dtype)
                vc = torch.randn(pool, HKV, D, device="cuda", dtype=q.dtype)
                kc[slots.long()] = k
                vc[slots.long()] = v
                sparse_attention(q, None, None, idx, k_cache=kc, v_cache=vc, page_table=slots[None, :], out=out)
            else:
                sparse_attention(q, k, v, idx, out=out)
            torch.cuda.synchronize()
            rows = torch.sort(torch.randperm(n_q, device="cuda")[:64]).values
            rows[-1] = n_q - 1
            ref = reference_rows(q, k, v, keep, rows, prefix)
            o = out[rows].float()
            err = float((o - ref).norm() / ref.norm())
            # the same reference with bf16 inputs rounded output, as the tolerance yardstick
            ref_bf = ref.to(torch.bfloat16).float()
            err_round = float((ref_bf - ref).norm() / ref.norm())
            rec.add(
                what="check", kind=kind, n_k=n, n_q=n_q, prefix=prefix, paged=paged, rows=rows.numel(),
                rel_err=err, bf16_rounding_err=err_round, nan_rows=int(out.isnan().any(-1).any(-1).sum()), **extra,
            )  # fmt: skip
            del q, k, v, out, idx, keep
            torch.cuda.empty_cache()


def flex_runner(q, k, v, idx):
    """FlexAttention on the identical keep set: `mmi_kernels.index_to_block_mask` of slot 0 (every slot shares the
    pattern, so H=1 broadcasts it over all heads), full tiles without mask_mod, partial tiles with the position
    mask_mod, trimmed lists; q/k/v pre-permuted through the export's orders (materialised: not timed)."""
    ex = index_to_block_mask(idx, slot=0)
    fa = _FLEX.get("fn")
    if fa is None:
        from torch.nn.attention.flex_attention import flex_attention

        fa = _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    qf = q[ex.q_order[0]].transpose(0, 1)[None].contiguous()
    kf = k[ex.k_order[0]].transpose(0, 1)[None].contiguous()
    vf = v[ex.k_order[0]].transpose(0, 1)[None].contiguous()
    opts = {"BLOCK_M": B, "BLOCK_N": B} if B < 128 else None  # the sparse block must be a multiple of the tile
    return lambda: fa(qf, kf, vf, block_mask=ex.block_mask, enable_gqa=True, kernel_options=opts)


def flashinfer_runner(q, k, v, idx):
    """flashinfer.BlockSparseAttentionWrapper on the identical keep set (`mmi_kernels.FlashInferBlockSparse`: slots
    folded into rows, R = C = block, bf16 passed explicitly); folding done once here (not timed)."""
    fb = FlashInferBlockSparse()
    bsr = fb.plan(idx, head_dim=D, dtype=q.dtype)
    qf, kf, vf = bsr.fold(q, k, v)
    return (lambda: fb._wrapper.run(qf, kf, vf)), ("causal" if bsr.causal else "mask")


KINDS = (("blocks", 0.05), ("blocks", 0.10), ("grid", 0.05), ("grid", 0.10), ("vs", 0.05))


def stage_time(
    rec: Recorder,
    n: int,
    reps: int,
    configs: list[KernelConfig],
    dense: bool,
    flex: bool,
    kinds=KINDS,
    flashinfer: bool = False,
) -> None:
    q, k, v = qkv(n, n, seed=1)
    nb = cdiv(n, B)
    causal_tiles = nb * (nb + 1) / 2
    if dense:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qd = q.transpose(0, 1)[None]
        kd = k.repeat_interleave(HQ // HKV, dim=1).transpose(0, 1)[None]
        vd = v.repeat_interleave(HQ // HKV, dim=1).transpose(0, 1)[None]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            fn = lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
            ms, ts = time_ms(fn, warmup=1, reps=max(1, reps // 3))
        flops = 4 * D * n * (n + 1) / 2 * HQ
        rec.add(what="dense_cudnn", n=n, ms=ms, all_ms=ts, tflops=flops / ms / 1e9)
        del qd, kd, vd
        torch.cuda.empty_cache()
    for kind, density in kinds:
        idx, keep, extra, build_s = build(kind, n, density, "cuda")
        tiles, cols = tile_stats(idx)
        flops = 4 * D * B * B * tiles * HQ + 4 * D * B * cols * HQ
        common = dict(n=n, kind=kind, target_density=density, tile_density=tiles / causal_tiles, tiles=tiles,
                      columns=cols, index_bytes=idx.nbytes(), index_build_s=build_s, **extra)  # fmt: skip
        if kind == "vs":
            common["peer_label"] = "minference_style_vertical_slash"  # mmi's own VS path, the MInference baseline
        for cfg in configs:
            out = torch.empty_like(q)
            fn = lambda cfg=cfg, out=out, idx=idx: sparse_attention(q, k, v, idx, out=out, config=cfg)
            try:
                ms, ts = time_ms(fn, warmup=2, reps=reps)
                ck = sys.modules["mmi_kernels.sparse_attention"]._last_compiled
                asm = {"n_regs": getattr(ck, "n_regs", None), "n_spills": getattr(ck, "n_spills", None)}
                if ASM_DIR is not None and ck is not None:
                    name = f"h{cfg.heads_per_tile}n{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}"
                    text = ck.asm.get("ttgir", "")
                    asm["wgmma"] = "warp_group_dot" in text
                    asm["async_copy"] = "async_copy_global_to_local" in text
                    if kind == "blocks" and cfg is configs[0]:
                        (ASM_DIR / f"ttgir_{name}.txt").write_text(text)
                rec.add(what="mmi", config=cfg.__dict__, ms=ms, all_ms=ts, tflops=flops / ms / 1e9, **asm, **common)
            except Exception as e:  # record and go on: one bad config must not lose the run
                rec.add(what="mmi", config=cfg.__dict__, error=repr(e)[:500], **common)
        if PAGED_TOO:  # the same keys at shuffled slots of a pool twice as large, read through a page table
            pool = 2 * n
            slots = torch.randperm(pool, device="cuda")[:n].to(torch.int32)
            kc = torch.empty(pool, HKV, D, device="cuda", dtype=q.dtype)
            vc = torch.empty(pool, HKV, D, device="cuda", dtype=q.dtype)
            kc[slots.long()], vc[slots.long()] = k, v
            out = torch.empty_like(q)
            pt = slots[None, :]
            fn = lambda out=out, idx=idx, kc=kc, vc=vc, pt=pt: sparse_attention(
                q, None, None, idx, k_cache=kc, v_cache=vc, page_table=pt, out=out
            )
            ms, ts = time_ms(fn, warmup=2, reps=reps)
            rec.add(what="mmi_paged", ms=ms, all_ms=ts, tflops=flops / ms / 1e9, **common)
            del kc, vc
        if flex and cols == 0:
            try:
                t0 = time.perf_counter()
                fn = flex_runner(q, k, v, idx)
                fn()
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                ms, ts = time_ms(fn, warmup=2, reps=reps)
                rec.add(what="flex", ms=ms, all_ms=ts, tflops=flops / ms / 1e9, compile_s=compile_s, **common)
            except Exception as e:
                rec.add(what="flex", error=repr(e)[:800], **common)
        if flashinfer and cols == 0:
            if not flashinfer_available()[0]:
                rec.add(what="flashinfer", skipped=flashinfer_available()[1], **common)
            else:
                try:
                    t0 = time.perf_counter()
                    fn, mode = flashinfer_runner(q, k, v, idx)
                    fn()
                    torch.cuda.synchronize()
                    plan_s = time.perf_counter() - t0
                    ms, ts = time_ms(fn, warmup=2, reps=reps)
                    rec.add(what="flashinfer", ms=ms, all_ms=ts, tflops=flops / ms / 1e9, mask_mode=mode,
                            plan_compile_s=plan_s, **common)  # fmt: skip
                except Exception as e:
                    rec.add(what="flashinfer", error=repr(e)[:800], **common)
        del idx, keep
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", required=True, choices=["ceil", "check", "time", "sweep"])
    ap.add_argument("--n", type=int, nargs="+", default=[131072])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--flashinfer", action="store_true", help="also time flashinfer's block-sparse wrapper (if usable)")
    ap.add_argument("--block", type=int, default=64, help="index block (query and key tile rows)")
    ap.add_argument("--paged", action="store_true", help="also time the paged path (shuffled pool) per pattern")
    a = ap.parse_args()
    global B, PAGED_TOO
    B, PAGED_TOO = a.block, a.paged
    a.out.mkdir(parents=True, exist_ok=True)
    global ASM_DIR
    ASM_DIR = a.out
    torch.backends.cuda.matmul.allow_tf32 = False
    rec = Recorder(a.out, a.stage + "_" + "_".join(str(n // 1024) + "k" for n in a.n) + (f"_b{B}" if B != 64 else ""))
    rec.data["block"] = B
    if a.stage == "ceil":
        stage_ceil(rec)
    elif a.stage == "check":
        stage_check(rec, a.n)
    elif a.stage == "time":
        for n in a.n:
            stage_time(rec, n, a.reps, [KernelConfig()], not a.no_dense, not a.no_flex, flashinfer=a.flashinfer)
    elif a.stage == "sweep":
        cfgs = [KernelConfig(always_mask=False), KernelConfig(always_mask=True)]
        for n in a.n:
            stage_time(rec, n, a.reps, cfgs, False, False, (("grid", 0.05), ("blocks", 0.05)))
    print("done", a.stage, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
