"""Benchmark harness: standard CXR protocols for several models on identical studies, bootstrap CIs, paired
comparisons and a prompt / negation audit (``python -m cxr_vlp.benchmark``; docs/benchmark.md)."""
