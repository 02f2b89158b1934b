"""Evaluation: retrieval, zero-shot, probes and their metrics."""
