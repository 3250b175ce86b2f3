"""Loading torch files that ftlab did not necessarily write: checkpoints, ``--weights`` files
and the hub cache. Only tensors, numbers, strings, lists and dicts load (``weights_only``);
anything else is refused with a sentence. torch's own message for a refused file advises
loading it with ``weights_only=False``, which would run whatever code the file holds, so it
never reaches a user.
"""
from __future__ import annotations

import os
import pickle
import stat
import warnings
from pathlib import Path

import torch


class RefusedFile(ValueError):
    """A torch file that cannot be loaded safely; the message says why."""


def reason(err: BaseException) -> str:
    """Why torch could not load a file, in words that never advise ``weights_only=False``."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        return ("it holds Python objects other than tensors, numbers and text (loading them could run code), "
                "so it was refused")
    if isinstance(err, EOFError):
        return "it is empty or cut short"
    if isinstance(err, IsADirectoryError):
        return "it is a folder, not a file"
    if isinstance(err, PermissionError):
        return "it cannot be read (permission denied)"
    if isinstance(err, FileNotFoundError):
        return "it does not exist"
    if "zip archive" in text or "central directory" in text or "PytorchStreamReader" in text:
        return "it is cut short or damaged, or it is not a file saved by torch"
    if isinstance(err, OSError):
        return f"it cannot be read ({err.strerror or err.__class__.__name__})"
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"it is not a file torch can read ({err.__class__.__name__}{': ' + first if first else ''})"


def load(path: Path) -> object:
    """``torch.load`` of ``path`` on the CPU with ``weights_only``; `RefusedFile` with the reason."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe or a device would block or never end
            raise RefusedFile("it is not a regular file (a folder, pipe, socket or device)")
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a file we refuse anyway
            warnings.simplefilter("ignore")
            with open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
    except RefusedFile:
        raise
    except Exception as err:
        raise RefusedFile(reason(err)) from None
