"""mmi-core needs only torch, numpy and pydantic: it imports and computes with triton, sglang, transformers and the
other mmi packages blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    # triton and sglang (the issue's requirement) and everything above mmi-core (imports only flow downward)
    BLOCKED = ("triton", "sglang", "transformers", "flashinfer", "mmi_kernels", "mmi_models", "mmi_sglang")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for the isolation test: {name}")
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, Block())
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    import torch
    import mmi_core
    from mmi_core import AShape, ModalityLayout, VisualGrid, Grid, grid_selection, ashape_selection
    from mmi_core import dense_attention_reference, sparse_attention_reference, output_error

    layout = ModalityLayout.from_parts([("text", 5), ("video", VisualGrid(frames=3, rows=2, cols=4)), ("text", 4)])
    n = layout.num_tokens
    q, k, v = torch.randn(n, 4, 32), torch.randn(n, 2, 32), torch.randn(n, 2, 32)
    grid = grid_selection(layout, n, Grid(stride=8, block=16), 8, [5])
    sels = [grid, grid, ashape_selection(n, n, AShape(block=16)), None]
    out = sparse_attention_reference(q, k, v, sels)
    assert torch.isfinite(out).all()
    assert float(output_error(out, dense_attention_reference(q, k, v))) >= 0.0
    leaked = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
    assert not leaked, leaked
    print("isolated ok", mmi_core.__name__)
    """
)


@pytest.mark.slow  # a fresh interpreter importing torch: ~5-15 s on a busy 2-core machine
def test_mmi_core_works_with_triton_sglang_and_upper_packages_blocked():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "isolated ok mmi_core" in result.stdout
