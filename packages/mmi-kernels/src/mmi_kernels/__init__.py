"""mmi-kernels: Triton kernels for MMInference sparse prefill (sparse index format, the sparse attention kernel,
GPU estimation and the plan/run wrapper). Depends on mmi-core and triton; flashinfer optional."""

from mmi_kernels.boundary_planner import boundary_keeps
from mmi_kernels.estimate import (
    EstimationProblem,
    estimate_layer_keeps,
    estimate_problems,
    last_query_stats,
    layer_slots,
)
from mmi_kernels.flashinfer_backend import (
    FlashInferBlockSparse,
    FlashInferBSR,
    bsr_attention_reference,
    flashinfer_available,
    index_to_flashinfer_bsr,
)
from mmi_kernels.flex_export import (
    FlexExport,
    flex_permute,
    flex_sparse_attention,
    flex_unpermute,
    index_to_block_mask,
)
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
from mmi_kernels.keep_planner import (
    LayoutTensors,
    ashape_keep,
    block_sparse_keeps,
    dense_keep,
    grid_keeps,
    vertical_slash_keeps,
)
from mmi_kernels.ranking import top_ids
from mmi_kernels.sparse_attention import KernelConfig, sparse_attention, sparse_attention_fwd
from mmi_kernels.wrapper import PrefillPlan, SparsePrefillWrapper, dense_causal_attention, sparse_prefill

__all__: list[str] = [
    "BlockSparseRows",
    "EstimationProblem",
    "FlashInferBSR",
    "FlashInferBlockSparse",
    "FlexExport",
    "IndexCapacityError",
    "KernelConfig",
    "LayoutTensors",
    "PrefillPlan",
    "SlotKeep",
    "SparseIndex",
    "SparsePrefillWrapper",
    "ashape_keep",
    "block_sparse_keeps",
    "boundary_keeps",
    "bsr_attention_reference",
    "dense_causal_attention",
    "dense_keep",
    "estimate_layer_keeps",
    "estimate_problems",
    "flashinfer_available",
    "flex_permute",
    "flex_sparse_attention",
    "flex_unpermute",
    "grid_keeps",
    "index_from_keeps",
    "index_from_selections",
    "index_keep_mask",
    "index_to_block_mask",
    "index_to_bsr",
    "index_to_flashinfer_bsr",
    "last_query_stats",
    "layer_slots",
    "pattern_capacity",
    "sparse_attention",
    "sparse_attention_fwd",
    "sparse_prefill",
    "top_ids",
    "vertical_slash_keeps",
]
