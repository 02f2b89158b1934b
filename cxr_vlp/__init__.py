"""cxr_vlp: chest X-ray vision-language pretraining with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
