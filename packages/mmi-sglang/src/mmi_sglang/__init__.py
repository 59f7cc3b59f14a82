"""mmi-sglang: the SGLang plugin — the `mmi` attention backend that runs MMInference sparse prefill for long
multimodal extends and delegates everything else to a stock backend. Importing it imports neither sglang nor kernels."""

__all__: list[str] = []
