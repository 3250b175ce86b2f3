"""ftlab, the Fine-Tuning Lab: supervised fine-tuning of pretrained vision models."""

__version__ = "0.1.0"
