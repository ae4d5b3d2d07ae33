"""The web page's runs (``nst-jax serve``), carried out where the server can end them.

:func:`execute` is one run: it loads the uploads, calls :func:`~nst_jax.transfer.stylize` or
:func:`~nst_jax.sweeps.sweep`, and reports through ``emit`` (messages below) what the page
shows. It knows nothing of sessions or queues (:mod:`nst_jax.jobs` does).

Two runners carry it out, one run at a time:

- :class:`ProcessRunner` (the server's default): a child process, started once and kept
  between runs (so its compiled programs are too). A run is stopped by asking first: the
  library's callback says stop at the end of the chunk in hand. A run that has not stopped
  ``grace`` seconds later (a chunk being compiled, a long chunk, a hang) is ended with its
  process, and a fresh process is started for the next run: the queue always moves. A child
  that dies (the kernel's out-of-memory killer, a crash) fails its run, not the server.
- :class:`ThreadRunner`: in the calling thread; a stop waits for the chunk in hand. For
  embedding the page's work in a program that must not start processes.

Messages (tuples, picklable): ``("update", images, progress)`` while a run goes, where
``images`` is ``{"preview": png}`` (stylize) or ``{"members": {k: png}}`` (sweep) and
``progress`` the page's JSON of the last :class:`~nst_jax.progress.Progress`; then one
``("finish", state, error, summary, images)`` with ``state`` done, failed or cancelled and
``images`` the final ``preview``, ``members`` and ``result`` (``"preview"``: the preview is the result).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.config import StyleConfig

log = logging.getLogger("nst_jax.serve")

Emit = Callable[[tuple], None]
Stopped = Callable[[], bool]
# The jax options a child takes from its parent (the command sets the compilation cache; a
# library user may set the others). The platform is not among them: the child picks its own.
INHERITED_JAX_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_enable_x64",
    "jax_default_matmul_precision",
)
START_TIMEOUT = 300.0  # seconds a new child may take to import jax and report its devices


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the queue, as the runner needs it (picklable: files, not arrays)."""

    kind: str  # stylize or sweep
    config: StyleConfig
    content: Path  # the stored upload (read with load_image)
    styles: tuple[Path, ...]
    axis: str | None = None  # sweep: the swept setting ("style": the styles)
    values: tuple = ()  # sweep: its values
    labels: tuple[str, ...] = ()  # sweep: one per member
    costs: tuple[tuple[int, float], ...] = ()  # stage_costs: each stage's steps and pixel weight
    fine_style: Path | None = None  # scale control: the fine style's stored upload


class RunFailed(Exception):
    """A run that raised in the child: ``user`` is True for what the CLI reports in one line
    (ValueError, FileNotFoundError, MemoryError), False for a bug (``details``: its traceback)."""

    def __init__(self, message: str, user: bool, details: str = ""):
        super().__init__(message)
        self.user, self.details = user, details


class RunEnded(Exception):
    """The run's process was ended (``cancelled``: by a stop that was not honoured in time) or died."""

    def __init__(self, message: str, cancelled: bool):
        super().__init__(message)
        self.cancelled = cancelled


def describe_devices() -> str:
    """Where the runs go, in words: "CPU, 16 cores" or "GPU: 2 x NVIDIA H100 80GB HBM3"."""
    import os

    import jax

    devices = jax.devices()
    if devices[0].platform == "cpu":
        return f"CPU, {os.cpu_count()} cores"
    count = f"{len(devices)} x " if len(devices) > 1 else ""
    return f"{devices[0].platform.upper()}: {count}{devices[0].device_kind}"


def stage_costs(config: StyleConfig, side: int) -> list[tuple[int, float]]:
    """(steps, relative cost of a step) of each coarse-to-fine stage: a step costs as its pixels do."""
    sizes = config.stage_sizes(side)
    return [(config.stage_steps(i, len(sizes)), (size / sizes[-1]) ** 2) for i, size in enumerate(sizes)]


def run_estimate(
    costs: list[tuple[int, float]], stage: int, within: float, steps_per_second: float | None = None
) -> tuple[float, float | None]:
    """(share of the whole run done, seconds left in it) from the stage, the share of it done and its speed.

    Every stage weighs its steps times its pixels, so the last stage, where most of the time
    goes, fills most of the bar; the time left counts later stages at this stage's speed per
    pixel (their compilation and an early L-BFGS stop are not foreseen: it is an estimate).
    """
    work = [steps * cost for steps, cost in costs]
    total = sum(work) or 1.0
    fraction = min(1.0, (sum(work[:stage]) + min(1.0, within) * work[stage]) / total)
    if steps_per_second is None or not steps_per_second > 0:
        return fraction, None
    per_cost = 1.0 / steps_per_second / costs[stage][1]
    here = max(0.0, costs[stage][0] * (1 - min(1.0, within)))
    later = sum(steps * cost for steps, cost in costs[stage + 1 :])
    return fraction, (here * costs[stage][1] + later) * per_cost


# --- one run ------------------------------------------------------------------------------


def execute(spec: RunSpec, params, emit: Emit, stopped: Stopped) -> None:
    """Carries out ``spec``, reporting through ``emit``; ``stopped()`` is asked after every chunk."""
    from nst_jax.io import load_image

    started = time.time()
    content = load_image(spec.content, spec.config.size, what="content")
    styles = [load_image(s, spec.config.size, what="style") for s in spec.styles]
    fine = None if spec.fine_style is None else load_image(spec.fine_style, spec.config.size, what="fine_style")
    if spec.kind == "sweep":
        return _sweep(spec, params, content, styles, fine, emit, stopped, started)
    return _stylize(spec, params, content, styles, fine, emit, stopped, started)


def _stylize(spec: RunSpec, params, content, styles, fine, emit: Emit, stopped: Stopped, started: float) -> None:
    from nst_jax.io import png_bytes
    from nst_jax.transfer import stylize

    config = spec.config
    costs = list(spec.costs)

    def callback(progress) -> bool:
        within = progress.step / progress.num_steps if progress.num_steps else 1.0
        fraction, eta = run_estimate(costs, progress.stage, within, progress.steps_per_second)
        report = {
            "fraction": fraction,
            "eta_total": eta,
            "step": progress.step,
            "num_steps": progress.num_steps,
            "stage": progress.stage,
            "num_stages": progress.num_stages,
            "side": int(max(progress.image.shape[:2])),
            "loss": float(progress.loss),
            "steps_per_second": progress.steps_per_second,
            "eta": progress.eta,
            "seconds": progress.seconds,
        }
        emit(("update", {"preview": png_bytes(progress.image)}, report))
        return stopped()

    fine_style = None if fine is None else [fine] * len(styles)  # blended as the styles are
    result = stylize(content, styles, config, params=params, init=config.init, callback=callback, fine_style=fine_style)
    summary = {"steps": result.num_steps, "evaluations": result.num_evals, "loss": result.loss}
    summary["seconds"] = round(time.time() - started, 1)
    images: dict[str, Any] = {"preview": png_bytes(result.image)}
    if stopped():
        return emit(("finish", "cancelled", None, summary, images))
    if not result.finite:
        error = (
            "the loss was not finite at the first step"
            if result.num_steps == 0
            else f"the loss became non-finite after step {result.num_steps}; the preview is the last finite image"
        )
        return emit(("finish", "failed", error, summary, images))
    emit(("finish", "done", None, summary, {**images, "result": "preview"}))


def _sweep(spec: RunSpec, params, content, styles, fine, emit: Emit, stopped: Stopped, started: float) -> None:
    from nst_jax.io import png_bytes
    from nst_jax.sweeps import SweepResult, failed_members, sweep

    config = spec.config
    axes: dict[str, Any]
    if spec.axis == "style":
        axes, style = {"style": {label: s for label, s in zip(spec.labels, styles, strict=True)}}, None
    else:
        axes, style = {str(spec.axis): list(spec.values)}, styles[0]
    costs = list(spec.costs)

    def callback(progress) -> bool:
        members: dict[int, bytes] = {}
        if progress.images is not None:
            for member, image in zip(progress.members, np.asarray(progress.images), strict=False):
                members[member] = png_bytes(image)
        num_steps = config.stage_steps(progress.stage, progress.num_stages)
        within = (progress.batch + min(1.0, float(np.min(progress.steps)) / max(num_steps, 1))) / progress.num_batches
        report = {
            "fraction": run_estimate(costs, progress.stage, within)[0],
            "batch": progress.batch,
            "num_batches": progress.num_batches,
            "stage": progress.stage,
            "num_stages": progress.num_stages,
            "side": None if progress.images is None else int(max(progress.images.shape[1:3])),
            "steps": [int(s) for s in progress.steps],
            "members": [progress.members.start, progress.members.stop],
            "num_steps": num_steps,
            "loss": float(np.min(progress.losses)),
            "seconds": progress.seconds,
        }
        emit(("update", {"members": members}, report))
        return stopped()

    result = sweep(content, style, config, axes, params=params, callback=callback, fine_style=fine)
    assert isinstance(result, SweepResult)  # not a dry run
    summary = {"seconds": round(time.time() - started, 1), "evaluations": int(result.iterations)}
    images: dict[str, Any] = {"members": [png_bytes(image) for image in result.images]}
    if stopped():
        return emit(("finish", "cancelled", None, summary, images))
    images["result"] = result._repr_png_()  # the labelled contact sheet, as save_sweep's grid.png
    failed = failed_members(result)
    if failed:
        error = f"{len(failed)} of {len(spec.labels)} failed: {', '.join(failed)}"
        return emit(("finish", "failed", error, summary, images))
    emit(("finish", "done", None, summary, images))


# --- where it runs ------------------------------------------------------------------------


class ThreadRunner:
    """Runs in the calling thread: exceptions propagate as they are; a stop waits for the chunk in hand."""

    def __init__(self, params):
        self.params = params

    @property
    def device(self) -> str:
        return describe_devices()

    def run(self, spec: RunSpec, emit: Emit, stopped: Stopped) -> None:
        execute(spec, self.params, emit, stopped)

    def prepare(self) -> None:
        pass

    def close(self, timeout: float = 0.0) -> None:
        pass


class ProcessRunner:
    """Runs in a child process (spawned: jax's threads do not survive a fork), ended when a stop
    is not honoured within ``grace`` seconds.

    Args:
      params: the network's parameters (sent once to each child, as numpy arrays).
      grace: seconds a stopped run may take to reach the end of its chunk before its process is ended.
    """

    def __init__(self, params, grace: float = 3.0):
        import jax

        self.params = jax.tree.map(np.asarray, params)
        self.grace = grace
        self.options = {name: getattr(jax.config, name) for name in INHERITED_JAX_OPTIONS}
        self.starts = 0  # children started so far (the first, and one after each ending)
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._device: str | None = None
        self._hello = threading.Lock()
        self._start()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._stop = self._context.Event()
        self._process = self._context.Process(
            target=_child_main, args=(child, self._stop, self.params, self.options), name="nst-jax-run", daemon=True
        )
        self._process.start()
        child.close()
        self._conn, self._device, self._started = parent, None, time.monotonic()
        self.starts += 1

    def _ready(self, stopped: Stopped | None = None) -> bool:
        """Waits for the child's hello (its devices); False when ``stopped()`` first. One reader at a
        time (``device`` may be asked from another thread while the worker starts a run)."""
        with self._hello:
            while self._device is None:
                if stopped is not None and stopped():
                    return False
                message = self._receive(0.1)
                if message is not None:
                    self._device = message[1]  # ("hello", description)
                elif time.monotonic() - self._started > START_TIMEOUT:
                    self._end()
                    raise RunEnded(f"the run's process did not start within {START_TIMEOUT:.0f} s", cancelled=False)
        return True

    def _receive(self, timeout: float):
        """The child's next message within ``timeout`` seconds (None: none yet); a dead child raises RunEnded."""
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except (EOFError, OSError):
            pass
        else:
            if self._process.is_alive():
                return None
        self._process.join(5)
        code = self._process.exitcode
        self._end()
        why = " (killed: out of memory?)" if code == -signal.SIGKILL else ""
        raise RunEnded(f"the run's process ended unexpectedly, exit code {code}{why}", cancelled=False)

    @property
    def device(self) -> str:
        """The child's devices, in words (waits for a starting child)."""
        if self._process is None:
            self._start()
        self._ready()
        assert self._device is not None
        return self._device

    def prepare(self) -> None:
        """Starts a child if there is none (after one was ended), so the next run need not wait for it."""
        if self._process is None:
            self._start()

    def run(self, spec: RunSpec, emit: Emit, stopped: Stopped) -> None:
        """Carries out ``spec`` in the child; ``emit`` gets its messages here.

        Raises:
          RunFailed: the run raised (a user's mistake or a bug).
          RunEnded: its process was ended after a stop (``cancelled``), or died.
        """
        if self._process is None:
            self._start()
        if not self._ready(stopped) or stopped():
            raise RunEnded("cancelled before it started", cancelled=True)
        self._stop.clear()
        self._conn.send(spec)
        asked: float | None = None
        while True:
            message = self._receive(0.1)
            if message is not None:
                if message[0] == "end":
                    return
                if message[0] == "error":
                    raise RunFailed(message[1], user=message[2], details=message[3])
                emit(message)
                continue
            if asked is None and stopped():
                self._stop.set()
                asked = time.monotonic()
            if asked is not None and time.monotonic() - asked > self.grace:
                self._end()  # the worker then calls prepare(), after the run's end is shown
                raise RunEnded(f"ended {self.grace:g} s after the stop (it was inside a chunk)", cancelled=True)

    def _end(self) -> None:
        """Ends the child now (its compiled programs go with it)."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(10)
        self._conn.close()
        self._process = None

    def close(self, timeout: float = 5.0) -> None:
        """Asks the child to leave, and ends it after ``timeout`` seconds."""
        if self._process is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(timeout)
        self._end()


def _child_main(conn, stop, params, options: dict) -> None:
    """The child: reports its devices, then carries out one RunSpec after another until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it ends this process
    import jax

    for name, value in options.items():
        jax.config.update(name, value)
    conn.send(("hello", describe_devices()))
    while True:
        try:
            spec = conn.recv()
        except EOFError:  # the server has gone
            return
        if spec is None:
            return
        try:
            execute(spec, params, conn.send, stop.is_set)
        except (ValueError, FileNotFoundError, MemoryError) as e:  # what the CLI reports in one line
            conn.send(("error", " ".join(str(e).splitlines()), True, ""))
        except Exception as e:  # a bug: its traceback goes to the server's log
            conn.send(("error", f"{type(e).__name__}: {e}", False, traceback.format_exc()))
        else:
            conn.send(("end",))
