"""Schedule-Free AdamW, current form, self-tuning (PyTorch, AlgoPerf v0.6+)."""
