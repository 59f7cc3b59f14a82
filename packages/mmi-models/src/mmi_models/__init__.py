"""mmi-models: model-family adapters (Qwen2.5-VL, LLaVA-Video/OneVision, LongVILA, VideoChat-Flash) producing
`mmi_core.ModalityLayout`s, shipped head configs, tiny checkpoints, transformers integration and `mmi-search`."""

__all__: list[str] = []
