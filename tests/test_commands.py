"""The command the Train page shows for a run on several processes: only the options that differ from the
defaults, shell-quoted, and ftlab's own CLI parser reads it back to the same TrainConfig."""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
import typing

import pytest

from ftlab import cli
from ftlab.commands import MAX_PROCESSES, train_argv, train_command
from ftlab.config import TrainConfig, option_type, options


def parsed(command: str) -> TrainConfig:
    args = cli._parser().parse_args(train_argv(command))
    assert args.command == "train"
    return TrainConfig(**{f.name: getattr(args, f.name) for f in options()})


def other_value(f: dataclasses.Field):
    """A value of the option ``f`` other than its default, and one its flag accepts."""
    kind, meta, default = option_type(f), f.metadata, f.default
    if kind is bool:
        return not default
    if meta["choices"]:
        return next(c for c in meta["choices"] if c != default)
    if typing.get_origin(kind) is tuple:
        return (512, 128) if typing.get_args(kind)[0] is int else ("stage5", "stage6")
    if kind is str:
        return "-my data/it's \"here\" $HOME"  # a leading dash, a space, both quotes, a shell variable
    if kind is int:
        return int(meta["hi"]) if default != meta["hi"] else int(meta["lo"])
    return float(meta["lo"]) + (float(meta["hi"]) - float(meta["lo"])) * 0.3141  # a float with many digits


def test_the_defaults_make_the_bare_command():
    assert train_command(TrainConfig()) == "python -m ftlab train"
    assert train_command(TrainConfig(), 2) == "torchrun --nproc-per-node 2 -m ftlab train"


def test_the_command_names_only_what_differs_from_the_defaults():
    config = TrainConfig(dataset="digits", backbone="small_cnn", weights="random", epochs=3, image_size=32,
                         flip=True, feature_cache=False, head=(64,), lr=0.003)
    assert train_command(config, 2) == ("torchrun --nproc-per-node 2 -m ftlab train --backbone small_cnn --weights "
                                        "random --head 64 --lr 0.003 --epochs 3 --image-size 32 --flip "
                                        "--no-feature-cache")
    assert parsed(train_command(config, 2)) == config


@pytest.mark.parametrize("f", options(), ids=lambda f: f.name)
def test_every_option_reads_back_to_the_same_config(f):
    config = dataclasses.replace(TrainConfig(), **{f.name: other_value(f)})
    command = train_command(config, 4)
    assert f"--{f.name.replace('_', '-')}" in command or f"--no-{f.name.replace('_', '-')}" in command
    assert parsed(command) == config


def test_all_options_at_once_and_a_quoted_path_survive_the_shell():
    config = dataclasses.replace(TrainConfig(), **{f.name: other_value(f) for f in options()})
    command = train_command(config, 1)
    assert command.startswith("python -m ftlab train ")
    assert parsed(command) == config
    assert "'--dataset=-my data/it'\"'\"'s \"here\" $HOME'" in command  # shlex.quote: single quotes, no expansion
    # a real shell splits it into the same words: no expansion of $HOME, the quotes kept
    words = subprocess.run(["sh", "-c", "printf '%s\\n' " + command.removeprefix("python -m ftlab ")],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert words == shlex.split(command)[3:] and "--dataset=-my data/it's \"here\" $HOME" in words


@pytest.mark.parametrize("bad", [0, -1, MAX_PROCESSES + 1, 2.5, True, "2"])
def test_a_process_count_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=f"from 1 to {MAX_PROCESSES}"):
        train_command(TrainConfig(), bad)
