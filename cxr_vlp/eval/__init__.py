"""Evaluation suite: retrieval, zero-shot, probes, uncertainty, concepts, figures and the report (metrics in
cxr_vlp.metrics)."""
