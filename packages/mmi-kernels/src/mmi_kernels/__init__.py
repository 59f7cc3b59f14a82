"""mmi-kernels: Triton kernels for MMInference sparse prefill (sparse index format, the sparse attention kernel,
GPU estimation and the plan/run wrapper). Depends on mmi-core and triton; flashinfer optional."""

__all__: list[str] = []
