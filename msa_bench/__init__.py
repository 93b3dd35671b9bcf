"""msa_bench: a reproducible framework for Model State Arithmetic (MSA) machine unlearning."""

__version__ = "0.1.0"
