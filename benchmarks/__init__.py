"""Benchmarks of gpjax against a plain PyTorch eager reference (see benchmarks/README.md)."""
