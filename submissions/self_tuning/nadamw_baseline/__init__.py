"""AlgoPerf's self-tuning NAdamW baseline, restated in PyTorch."""
