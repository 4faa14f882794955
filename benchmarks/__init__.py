"""Benchmarks: ratios measured side by side in one run (ours / baseline), medians of repeats."""
