"""Hold training runs after their first step until a test lets them go on.

A test that needs a run still going (a second session opens, a browser reloads) would otherwise
race the machine: on a fast CPU or a GPU the run can end first. Used in the test's own process
(AppTest runs jobs in its threads) and, imported before Streamlit, in a `streamlit run` server's.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def hold_training(is_open: Callable[[], bool], timeout: float = 600) -> Callable[[], None]:
    """From now on every training run waits after each step until ``is_open()``; returns the undo.

    A gate left closed fails the run after ``timeout`` seconds (TimeoutError), so a test that
    forgets to open it ends in a failed run, never a hang.
    """
    from ftlab import engine

    real = engine.train_one_epoch

    def held(*args, on_step, **kwargs):
        def step(i: int, loss: float, seen: int) -> None:
            on_step(i, loss, seen)
            deadline = time.monotonic() + timeout
            while not is_open():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the test's gate stayed closed for {timeout:.0f} s")
                time.sleep(0.02)
        return real(*args, on_step=step, **kwargs)

    engine.train_one_epoch = held
    return lambda: setattr(engine, "train_one_epoch", real)


def serve_held(gate: str, argv: list[str]) -> None:
    """``streamlit <argv>`` in this process, its runs held until the file ``gate`` exists."""
    import sys

    from streamlit.web import cli

    hold_training(Path(gate).exists)
    sys.argv = ["streamlit", *argv]
    cli.main(prog_name="streamlit")
