"""Experiment tracking on Weights & Biases (docs/wandb.md): the run logger with meaningful summaries
(:mod:`~cxr_vlp.tracking.logger`, :mod:`~cxr_vlp.tracking.wandb_summary`), the evaluation's tables
(:mod:`~cxr_vlp.tracking.wandb_tables`), models as artifacts (:mod:`~cxr_vlp.tracking.artifacts`), a sweep's
table as a run of its own (:mod:`~cxr_vlp.tracking.sweep_table`), the saved workspace
(:mod:`~cxr_vlp.tracking.workspace`), the calls the entry points make (:mod:`~cxr_vlp.tracking.hooks`) and a
reader of offline run files (:mod:`~cxr_vlp.tracking.offline`)."""
