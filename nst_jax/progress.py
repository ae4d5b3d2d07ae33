"""Progress bars for the library (``progress=True``): tqdm's ``auto`` bar, a terminal line or a notebook widget.

The library is silent by default; ``stylize(..., progress=True)``, ``optimize`` and
``sweep`` take ``progress=True`` and draw a bar fed by the same :class:`~nst_jax.transfer.Progress`
a callback sees. The ETA leaves compilation out: it is measured from the end of each
stage's first chunk (which holds the compilation), and shown only from the second.
tqdm is an optional dependency (``pip install "nst-jax[progress]"``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nst_jax.config import StyleConfig


def format_eta(seconds: float | None) -> str:
    """``m:ss`` (or ``h:mm:ss``), or ``--:--`` while unknown (the first chunk, compiling)."""
    if seconds is None:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            '`progress=True` draws its bar with tqdm, which is not installed: pip install "nst-jax[progress]"'
        ) from None
    return tqdm


class ProgressBar:
    """A callback that draws a bar per coarse-to-fine stage, then calls ``callback`` (whose return it passes on).

    Works for :class:`~nst_jax.transfer.Progress` and :class:`~nst_jax.sweeps.SweepProgress`.
    Call :meth:`close` at the end (the library does).
    """

    def __init__(self, callback: Callable[[Any], bool | None] | None = None, **tqdm_options):
        self.tqdm, self.callback, self.options = _tqdm(), callback, tqdm_options
        self.bar: Any = None
        self.key: tuple[int, int] | None = None

    def __call__(self, progress) -> bool | None:
        if hasattr(progress, "members"):  # a sweep's batch
            key, total, done = (progress.batch, progress.num_batches), None, int(progress.steps.max())
            description = f"batch {progress.batch + 1}/{progress.num_batches}"
            postfix = f"loss {progress.losses.min():.3e}..{progress.losses.max():.3e}"
        else:
            key, total, done = (progress.stage, progress.num_steps), progress.num_steps, progress.step
            description = "steps"
            if progress.num_stages > 1:
                description = f"stage {progress.stage + 1}/{progress.num_stages} {max(progress.image.shape[:2])} px"
            rate = "" if progress.steps_per_second is None else f"{progress.steps_per_second:.2f} steps/s, "
            postfix = f"loss {progress.loss:.4e}, {rate}ETA {format_eta(progress.eta)}"
        if self.bar is None or key != self.key or done < self.bar.n:  # a new stage or batch
            self.close()
            self.key = key
            # tqdm's own remaining time would count the compilation: ours is in the postfix.
            layout = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
            self.bar = self.tqdm(total=total, desc=description, unit="step", bar_format=layout, **self.options)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(postfix, refresh=True)
        return self.callback(progress) if self.callback is not None else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LineProgress:
    """The command's progress: loss, speed and ETA printed between chunks; intermediate images saved when asked."""

    def __init__(self, output: Path, config: StyleConfig, quiet: bool, writes: bool = True):
        self.output, self.config, self.quiet, self.writes = output, config, quiet, writes
        self.tty = sys.stderr.isatty()

    def __call__(self, progress) -> None:
        from nst_jax.io import save_image

        last_stage = progress.stage == progress.num_stages - 1  # intermediate saves are at the output's size
        saves = self.writes and self.config.save_every and last_stage and progress.step
        if saves and progress.step % self.config.save_every == 0:
            save_image(
                self.output.with_name(f"{self.output.stem}.step{progress.step:05d}{self.output.suffix}"), progress.image
            )
        if self.quiet:
            return
        # Speed and ETA from the end of the stage's first chunk on: the compilation is left out.
        rate = "  -.-- steps/s" if progress.steps_per_second is None else f"{progress.steps_per_second:6.2f} steps/s"
        stage = ""
        if progress.num_stages > 1:
            stage = f"stage {progress.stage + 1}/{progress.num_stages} {max(progress.image.shape[:2])} px  "
        line = (
            f"{stage}step {progress.step:>5}/{progress.num_steps}  loss {progress.loss:.4e}  "
            f"{rate}  ETA {format_eta(progress.eta)}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


class SweepLineProgress:
    """The sweep command's progress: each batch's members, steps, losses and seconds, printed between chunks."""

    def __init__(self, quiet: bool):
        self.quiet, self.tty = quiet, sys.stderr.isatty()

    def __call__(self, progress) -> None:
        if self.quiet:
            return
        line = (
            f"batch {progress.batch + 1}/{progress.num_batches} (members {progress.members.start}-"
            f"{progress.members.stop - 1})  steps {progress.steps.min()}-{progress.steps.max()}  "
            f"loss {progress.losses.min():.3e}..{progress.losses.max():.3e}  {progress.seconds:.1f} s"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
