"""The command line that trains a given configuration: what the Train page shows for a run on several
processes, to paste into a terminal beside the app.

Only the options that differ from `TrainConfig`'s defaults are written, each value quoted for a POSIX
shell (`shlex.quote`), so that ``ftlab.cli``'s parser reads the command back to the same config.
"""
from __future__ import annotations

import shlex

from ftlab.config import TrainConfig, option_type, options

MAX_PROCESSES = 64  # per node: torchrun takes more, but no machine this lab meets has more GPUs or cores to give


def _value_text(value: object) -> str:
    """An option's value as its flag takes it: a comma list for the tuples (head widths, block names),
    a float exactly (``repr`` reads back to the same float), everything else as ``str``."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def option_args(config: TrainConfig) -> list[str]:
    """``config``'s options that differ from the defaults, as ``train`` flags, unquoted (an argv)."""
    args, default = [], TrainConfig()
    for f in options():
        value = getattr(config, f.name)
        if value == getattr(default, f.name) or value is None:  # None: the default's "auto" (lr, image size)
            continue
        flag = "--" + f.name.replace("_", "-")
        if option_type(f) is bool:
            args.append(flag if value else "--no-" + flag[2:])
            continue
        text = _value_text(value)
        # a value that starts with "-" would read as a flag: glued to its option it cannot
        args += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return args


def train_command(config: TrainConfig, nproc: int = 1) -> str:
    """The shell command that trains ``config``: ``python -m ftlab train …`` for one process, ``torchrun
    --nproc-per-node N -m ftlab train …`` for several (DistributedDataParallel, one process per GPU or a
    share of the CPU's cores each). Raises ValueError for a process count outside 1..`MAX_PROCESSES`."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_PROCESSES:
        raise ValueError(f"processes per node must be a whole number from 1 to {MAX_PROCESSES} (got {nproc!r})")
    launcher = ["python", "-m", "ftlab"] if nproc == 1 else ["torchrun", "--nproc-per-node", str(nproc), "-m",
                                                             "ftlab"]
    return shlex.join([*launcher, "train", *option_args(config)])


def train_argv(command: str) -> list[str]:
    """The arguments ``ftlab.cli``'s parser gets from ``command`` (as `train_command` writes it): what
    follows ``-m ftlab``, so ``train`` and its options."""
    words = shlex.split(command)
    module = next(i for i, w in enumerate(words) if w == "-m" and words[i + 1:i + 2] == ["ftlab"])
    return words[module + 2:]

