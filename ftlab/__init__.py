"""ftlab, the Fine-Tuning Lab: supervised fine-tuning of pretrained vision models."""
from ftlab.native import one_malloc_arena

__version__ = "0.1.0"

# before torch is imported and before any thread of ours: see one_malloc_arena
one_malloc_arena()
