"""Benchmarks: what TokenPacker saves and what seeing inside costs, as ratios measured in one run."""
