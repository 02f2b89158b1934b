"""Models: timm image tower, Hugging Face (or local) text tower, projection heads."""
