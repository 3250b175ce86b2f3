"""The exceptions that end a phase of a run, low in the import graph: the loop, the feature
cache and decoding raise them, the runner catches them, and none of those import each other
for it."""
from __future__ import annotations


class StopRequested(Exception):
    """The user asked the run to stop; raised between batches. ``phase`` and ``step`` say where:
    the phase that was running and its batch (1-based) that did not begin."""

    def __init__(self, phase: str = "preparing", step: int = 0):
        super().__init__(phase, step)
        self.phase, self.step = phase, step


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason (here, not in `ftlab.checkpoints`, so that
    the run store imports no torch until it reads or writes one)."""
