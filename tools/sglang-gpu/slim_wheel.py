#!/usr/bin/env python3
"""Rewrite a wheel without the members whose paths match any given glob (and fix RECORD).

Used to make wheels small enough for the device's 64 MiB-per-call carry:
  sglang-kernel 0.4.5: drop FA3 (flash_ops.abi3.so, 1.1 GB unpacked), sm100 ops, flashmla, infllm
  xgrammar 0.2.1:      drop the static library lib/libxgrammar.a (not used at run time)
Usage: slim_wheel.py IN.whl OUT_DIR GLOB [GLOB ...]   (OUT_DIR/<same file name> is written)
"""

import fnmatch
import os
import sys
import zipfile

src, out_dir, globs = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(out_dir, exist_ok=True)
dst = os.path.join(out_dir, os.path.basename(src))
drop = lambda n: any(fnmatch.fnmatch(n, g) for g in globs)
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
    dropped = []
    for info in zi.infolist():
        if drop(info.filename):
            dropped.append(info.filename)
            continue
        data = zi.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = [l for l in data.decode().splitlines() if not drop(l.split(",")[0])]
            data = ("\n".join(lines) + "\n").encode()
        zo.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
print(f"{os.path.basename(src)}: dropped {len(dropped)} members: {dropped}")
print(f"  {os.path.getsize(src) / 2**20:.1f} MiB -> {os.path.getsize(dst) / 2**20:.1f} MiB")
