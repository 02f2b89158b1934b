"""Tools that work on finished experiments: sweep aggregation (:mod:`cxr_vlp.experiments.collect`)."""
