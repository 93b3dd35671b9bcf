"""Robustness attacks on unlearned models: quantization, relearning and sampling (issue 14)."""
