"""mmi-kernels: Triton kernels for MMInference sparse prefill (sparse index format, the sparse attention kernel,
GPU estimation and the plan/run wrapper). Depends on mmi-core and triton; flashinfer optional."""

from mmi_kernels.index import (
    BlockSparseRows,
    IndexCapacityError,
    SlotKeep,
    SparseIndex,
    index_from_keeps,
    index_from_selections,
    index_keep_mask,
    index_to_bsr,
    pattern_capacity,
)
from mmi_kernels.sparse_attention import KernelConfig, sparse_attention, sparse_attention_fwd

__all__: list[str] = [
    "BlockSparseRows",
    "IndexCapacityError",
    "KernelConfig",
    "SlotKeep",
    "SparseIndex",
    "index_from_keeps",
    "index_from_selections",
    "index_keep_mask",
    "index_to_bsr",
    "pattern_capacity",
    "sparse_attention",
    "sparse_attention_fwd",
]
