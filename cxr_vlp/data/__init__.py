"""Data: label policy, study tables, splits, sampling, transforms and the LightningDataModule."""
