"""Where ftlab keeps its files: runs under FTLAB_HOME, downloads under FTLAB_DATA."""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Run records and checkpoints (``FTLAB_HOME``, default ``./.ftlab``)."""
    return Path(os.environ.get("FTLAB_HOME", ".ftlab")).expanduser()


def data_dir() -> Path:
    """Downloaded and unpacked data sets (``FTLAB_DATA``, default ``FTLAB_HOME/data``)."""
    env = os.environ.get("FTLAB_DATA")
    return Path(env).expanduser() if env else home() / "data"


def offline() -> bool:
    """True when ``FTLAB_OFFLINE`` is set: downloads fail at once with the offline message."""
    return os.environ.get("FTLAB_OFFLINE", "").strip() not in ("", "0", "false", "no")
