"""The AlgoPerf 2024 self-tuning winner, Schedule-Free AdamW, in JAX."""
