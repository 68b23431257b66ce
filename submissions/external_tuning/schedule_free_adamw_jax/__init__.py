"""The AlgoPerf 2024 externally tuned Schedule-Free AdamW entry, in JAX."""
