"""Robustness attacks on unlearned models: quantization, relearning and leak@k sampling (docs/attacks.md)."""
