"""Test-only stand-in for the one vllm op sglang 0.5.17 needs on CPU (see _custom_ops.py). Never installed."""
