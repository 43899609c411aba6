"""Data layer: FASTA/VCF input, windowing, synthetic data, canaries, stores and splits."""
