"""mmi-core: MMInference semantics in PyTorch — model- and engine-agnostic.

Layouts (`ModalityLayout`) say where text, images and video sit in a sequence; pattern configs (`Grid`,
`VerticalSlash`, `AShape`, `BlockSparse`, `Dense`) and `HeadConfigs` say what each head keeps; `Permutation`s put
grid lines into dense blocks; a `Selection` is one head's exact keep set (key blocks + key columns, causal on
original positions), a `RowGroups` that of a boundary head (one selection per query modality, each in its own
orders); `sparse_attention_reference` computes attention on it; metrics measure recall, error, density.
Depends only on torch, numpy and pydantic.
"""

from mmi_core.boundary import boundary_selection, modality_last_rows
from mmi_core.budgets import pattern_for_density
from mmi_core.estimation import (
    GridFold,
    estimate_block_sparse,
    estimate_grid,
    estimate_stride_phase,
    estimate_vertical_slash,
    grid_stride_candidates,
    last_query_scores,
    stable_top,
)
from mmi_core.head_configs import SCHEMA_VERSION, ConfigError, HeadConfigs, HeadSpec, LayerConfig
from mmi_core.latency import CostModel, LatencySource, pattern_family
from mmi_core.layer import estimate_layer_selections, mmi_attention_reference
from mmi_core.layout import LayoutError, Modality, ModalityLayout, Segment, VisualGrid
from mmi_core.metrics import attention_recall, density, output_error, sample_rows
from mmi_core.patterns import AShape, BlockSparse, Coverage, Dense, Grid, PatternConfig, VerticalSlash
from mmi_core.permutation import Permutation, grid_permutation, grid_residues, modality_permutation
from mmi_core.reference import check_qkv, dense_attention_reference, sparse_attention_reference
from mmi_core.search import (
    PAPER_VS_PAIRS,
    HeadChoice,
    LayerEvaluation,
    LayerEvaluator,
    LayerSearchResult,
    ReferenceEvaluator,
    SearchSpace,
    assemble_head_configs,
    paper_search_space,
    pattern_label,
    search_layer,
)
from mmi_core.selection import (
    RowGroups,
    Selection,
    ashape_selection,
    block_sparse_selection,
    dense_selection,
    grid_selection,
    keep_mask,
    union_selections,
    vertical_slash_selection,
)
from mmi_core.synthetic import (
    SyntheticSpec,
    SyntheticWorkload,
    held_out_seeds,
    recall_density_table,
    synthetic_workload,
)
from mmi_core.transfer import to_device

__all__ = [
    "PAPER_VS_PAIRS",
    "SCHEMA_VERSION",
    "AShape",
    "BlockSparse",
    "ConfigError",
    "CostModel",
    "Coverage",
    "Dense",
    "Grid",
    "GridFold",
    "HeadChoice",
    "HeadConfigs",
    "HeadSpec",
    "LatencySource",
    "LayerConfig",
    "LayerEvaluation",
    "LayerEvaluator",
    "LayerSearchResult",
    "LayoutError",
    "Modality",
    "ModalityLayout",
    "PatternConfig",
    "Permutation",
    "ReferenceEvaluator",
    "RowGroups",
    "SearchSpace",
    "Segment",
    "Selection",
    "SyntheticSpec",
    "SyntheticWorkload",
    "VerticalSlash",
    "VisualGrid",
    "ashape_selection",
    "assemble_head_configs",
    "attention_recall",
    "block_sparse_selection",
    "boundary_selection",
    "check_qkv",
    "dense_attention_reference",
    "dense_selection",
    "density",
    "estimate_block_sparse",
    "estimate_grid",
    "estimate_layer_selections",
    "estimate_stride_phase",
    "estimate_vertical_slash",
    "grid_permutation",
    "grid_residues",
    "grid_selection",
    "grid_stride_candidates",
    "held_out_seeds",
    "keep_mask",
    "last_query_scores",
    "mmi_attention_reference",
    "modality_last_rows",
    "modality_permutation",
    "output_error",
    "paper_search_space",
    "pattern_family",
    "pattern_for_density",
    "pattern_label",
    "recall_density_table",
    "sample_rows",
    "search_layer",
    "sparse_attention_reference",
    "stable_top",
    "synthetic_workload",
    "to_device",
    "union_selections",
    "vertical_slash_selection",
]
