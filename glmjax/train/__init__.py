"""Training: fine-tuning (full or LoRA) with planted canaries, reference and shadow models."""
