"""Report generation: concept prompts, decoder inputs and a cross-attending BERT decoder (CLIP-XRad §III-D)."""
