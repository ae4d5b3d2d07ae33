"""The web page's work (``nst-jax serve``): uploads, and a queue of runs in front of the library.

No web framework here: :mod:`nst_jax.serve` turns requests into calls of :class:`Jobs`, and
:class:`Jobs` calls the same code as the CLI (:func:`~nst_jax.io.load_image` with its checks
of foreign files, :class:`~nst_jax.config.StyleConfig`, :func:`~nst_jax.transfer.stylize`,
:func:`~nst_jax.sweeps.sweep`, the CLI's memory checks). One run at a time on the device, fed by
one worker thread; later runs wait in one queue, first come first served.

Who sees what: every browser gets a session (a random cookie, :mod:`nst_jax.serve`). The
queue is shared, because the device is: a session sees how many runs are ahead of its own,
but never another session's uploads, pictures, settings or results (asking for one by its
id answers "no such ..."). Tabs of one browser share the cookie, so they share their
uploads, queue and results: they are one person's.

Runs happen in a child process (:mod:`nst_jax.runner`): a cancelled run that has not
stopped within seconds is ended with its process, and a run whose process dies fails alone,
so the shared queue always moves.

Nothing a client sends becomes a path: uploads are stored under names made here, in a
temporary folder of this server's, removed by :meth:`Jobs.close`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import secrets
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax import settings as app_settings
from nst_jax.config import INITS, StyleConfig, short_repr
from nst_jax.runner import ProcessRunner, RunEnded, RunFailed, RunSpec, ThreadRunner, stage_costs

log = logging.getLogger("nst_jax.serve")

STATES = ("queued", "running", "done", "failed", "cancelled")
KINDS = ("stylize", "sweep")
# Shown first on the page, in this order; the rest go under "More options".
COMMON_FIELDS = ("size", "num_steps", "style_weight", "preserve_colour", "style_scale", "padding", "init", "seed")
# Settings the page may not set: they name files on the server's disk (the weights are the
# server's --weights; init takes a name, never a path) or write beside an output it does not have.
# The scale control's layers too: the page has no fine style to give them (CLI and library only).
SERVER_ONLY_FIELDS = ("weights", "save_every", "checkpoint_every", "network", "fine_style_layers")
# Values a sweep may have on the page (each value is a whole run at the batch's size).
MAX_SWEEP_MEMBERS = 8
THUMBNAIL_SIDE = 192
ID_LENGTH = 16  # bytes of randomness in every id (uploads, jobs, sessions)
ISOLATIONS = ("process", "thread")  # where runs happen: a child process the server can end, or its own thread


class JobError(ValueError):
    """A request the page cannot have: its message is shown on the page as it is."""


class NotFound(KeyError):
    """No such upload or job in this session (also what another session's ids answer)."""


def new_id() -> str:
    return secrets.token_urlsafe(ID_LENGTH)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server accepts; every cap is checked before anything is decoded or queued."""

    max_size: int = 1024  # largest output long side (--size) a page may ask for
    max_upload_bytes: int = 25 * 2**20  # bytes of one uploaded file
    max_upload_pixels: int = 50_000_000  # pixels an uploaded image's header may declare
    max_uploads: int = 200  # uploads kept per session
    max_queued: int = 20  # runs a session may have queued or running at once
    max_styles: int = 8  # style images of one run
    max_steps: int = 1000  # optimiser steps per stage a page may ask for (the library's bound is 1e6)
    max_sessions: int = 200  # sessions kept; past it the longest-idle one without a run is ended
    session_idle: float = 6 * 3600.0  # seconds after which a session without a run is ended
    max_stored_uploads: int = 1000  # uploads kept over all sessions
    max_stored_bytes: int = 4 * 2**30  # bytes of stored uploads over all sessions (disk)
    cancel_grace: float = 3.0  # seconds a cancelled run may take to finish its chunk before its process is ended


@dataclasses.dataclass
class Upload:
    id: str
    session: str
    name: str  # what the client called it: shown, never used as a path
    path: Path  # our PNG of the decoded image, or the JPEG as sent where that is smaller (read with load_image)
    shape: tuple[int, int]  # (height, width) as decoded
    thumbnail: bytes  # PNG, long side THUMBNAIL_SIDE at most
    stored_bytes: int = 0  # what it holds on disk and in memory (counted against max_stored_bytes)

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "height": self.shape[0], "width": self.shape[1]}


@dataclasses.dataclass
class Job:
    id: str
    session: str
    kind: str  # stylize or sweep
    config: StyleConfig
    content: Upload
    styles: list[Upload]
    axis: str | None = None  # sweep: the swept setting ("style": the uploaded styles)
    values: list = dataclasses.field(default_factory=list)  # sweep: its values
    fine_style: Upload | None = None  # scale control: the fine style (every stage after the first)
    state: str = "queued"
    created: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    progress: dict = dataclasses.field(default_factory=dict)  # the last Progress / SweepProgress, as JSON
    # PNGs: in memory while the run goes, in the server's folder once it has ended (a long-lived
    # server's memory does not grow with its runs); read them with `stored`.
    preview: bytes | Path | None = None  # the image so far (stylize)
    member_previews: list[bytes | Path | None] = dataclasses.field(default_factory=list)  # each member's (sweep)
    labels: list[str] = dataclasses.field(default_factory=list)  # sweep: one per member
    result: bytes | Path | None = None  # the finished image (stylize) or the labelled grid (sweep)
    version: int = 0  # bumped whenever a preview changes (the page's image URLs carry it)
    summary: dict = dataclasses.field(default_factory=dict)  # steps, evaluations, loss, seconds of a finished run
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)

    def public(self, position: int | None) -> dict:
        """What the page sees of a job (``position``: runs ahead of it in the queue, when queued)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "position": position,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "progress": self.progress,
            "version": self.version,
            "has_preview": self.preview is not None,
            "has_result": self.result is not None,
            "content": self.content.id,
            "styles": [s.id for s in self.styles],
            "fine_style": None if self.fine_style is None else self.fine_style.id,
            "settings": changed_settings(self.config),
            "axis": self.axis,
            "labels": self.labels,
            "members": [p is not None for p in self.member_previews],
            "summary": self.summary,
        }


def stored(value: bytes | Path | None) -> bytes | None:
    """A job's PNG, wherever it is kept."""
    return value.read_bytes() if isinstance(value, Path) else value


def changed_settings(config: StyleConfig) -> dict:
    """The fields of ``config`` that differ from the defaults, as JSON values (what a job card lists)."""
    default = StyleConfig()
    return {
        f.name: _json(getattr(config, f.name))
        for f in dataclasses.fields(StyleConfig)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def _json(value):
    return list(value) if isinstance(value, tuple) else value


def options() -> list[dict]:
    """Every setting the page may set, from :class:`StyleConfig` as the CLI's: name, kind, default, help, choices."""
    out = []
    for f in app_settings.settings(skip=SERVER_ONLY_FIELDS):
        choices = INITS if f.name == "init" else f.choices  # a name: the page takes no path
        out.append(
            {
                "name": f.name,
                "kind": f.kind,
                "optional": f.optional,
                "default": _json(f.default),
                "choices": list(choices) if choices else None,
                "help": f.help.replace("a path to an image file", "(an image file: CLI only)"),
                "common": f.name in COMMON_FIELDS,
            }
        )
    out.sort(key=lambda o: COMMON_FIELDS.index(o["name"]) if o["common"] else len(COMMON_FIELDS))
    return out


def config_from_settings(settings: Any, limits: Limits) -> StyleConfig:
    """A :class:`StyleConfig` from the page's settings (JSON), every value checked as the CLI checks it.

    Raises:
      JobError: an unknown or server-only setting, a value of the wrong type, or one
        :class:`StyleConfig` refuses; the message names the setting and the valid values.
    """
    if not isinstance(settings, dict):
        raise JobError(f"`settings` must be an object of setting -> value, got {type(settings).__name__}")
    known = {f.name: f for f in app_settings.settings(skip=())}
    values = {}
    for name, value in settings.items():
        if name in SERVER_ONLY_FIELDS:
            cli_only = name == "fine_style_layers"
            why = "scale control is in the CLI and the library" if cli_only else "the server's command line sets it"
            raise JobError(f"`{name}` cannot be set from the page ({why})")
        if name not in known:
            valid = ", ".join(n for n in known if n not in SERVER_ONLY_FIELDS)
            raise JobError(f"unknown setting {str(name)[:40]!r}; valid settings are {valid}")
        values[name] = _coerce(known[name], value)
    if values.get("init", "content") not in INITS:
        raise JobError(f"`init` must be one of {', '.join(INITS)}, got {values['init']!r}")
    try:
        config = app_settings.config_from(values)
    except (ValueError, TypeError) as e:
        raise JobError(str(e)) from None
    if config.size > limits.max_size:
        raise JobError(f"`size` {config.size} is over this server's largest, {limits.max_size} (its --max-size)")
    for name in ("num_steps", "coarse_steps"):
        value = getattr(config, name)
        if value is not None and value > limits.max_steps:
            raise JobError(f"`{name}` {value} is over this server's largest, {limits.max_steps}")
    return config


def _coerce(setting: app_settings.Setting, value):
    """One JSON value as the field's type (numbers as given or as text, lists as arrays or comma-separated text)."""
    name, kind, item, optional = setting.name, setting.kind, setting.item, setting.optional
    if optional and (value is None or value == ""):
        return None
    bad = JobError(
        f"`{name}` must be {'a list of ' + item.__name__ if kind == 'list' else 'a ' + kind}, got {short_repr(value)}"
    )
    if kind == "list":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or len(value) > 64:
            raise bad
        return tuple(_scalar(v, item, bad) for v in value)
    return _scalar(value, item, bad)


def _scalar(value, kind: type, bad: JobError):
    if isinstance(value, bool):
        raise bad
    if kind is str:
        if not isinstance(value, str) or len(value) > 100:
            raise bad
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise bad from None
    if not isinstance(value, int | float):
        raise bad
    if kind is int:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise bad  # NaN, Infinity (1e999) and fractions; big integers go on to StyleConfig's bounds
        return int(value)
    if isinstance(value, int) and abs(value) > 2**1000:
        raise bad  # past float's range (10**400): float() would raise OverflowError
    return float(value)


class Jobs:
    """Uploads and runs of one server; a worker thread feeds the queue to a runner, one job at a time.

    Args:
      params: the network's parameters (loaded once, by the server, from its --weights).
      limits: the caps (:class:`Limits`).
      folder: where uploads and results go; default a new temporary folder, removed by :meth:`close`.
      isolation: ``"process"`` (runs in a child process, ended when a cancelled run does not stop
        within ``limits.cancel_grace`` seconds: :class:`~nst_jax.runner.ProcessRunner`) or
        ``"thread"`` (runs in the worker thread; a cancel waits for the chunk in hand).
    """

    def __init__(self, params, limits: Limits = Limits(), folder: str | Path | None = None, isolation: str = "process"):
        if isolation not in ISOLATIONS:
            raise ValueError(f"`isolation` must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        if not 0 < limits.cancel_grace <= 600:
            raise ValueError(f"`cancel_grace` must be in (0, 600] seconds, got {limits.cancel_grace!r}")
        self.params, self.limits = params, limits
        self.runner: ProcessRunner | ThreadRunner = (
            ProcessRunner(params, limits.cancel_grace) if isolation == "process" else ThreadRunner(params)
        )
        self.folder = Path(tempfile.mkdtemp(prefix="nst-jax-serve-", dir=folder))
        self.uploads: dict[str, Upload] = {}
        self.jobs: dict[str, Job] = {}
        self.queue: collections.deque[Job] = collections.deque()
        self.sessions: dict[str, float] = {}  # session -> when it was last seen
        self.version = 0  # bumped on every change; the page's event stream sends a snapshot when it moves
        self._lock = threading.Condition()
        # Uploads decode one at a time: a 50-megapixel image is 600 MB as floats, and a page can
        # send many at once (the run's own memory is checked against what is left, not this).
        self._decoding = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="nst-jax-jobs", daemon=True)
        self._worker.start()

    # --- sessions -------------------------------------------------------------------------

    def new_session(self) -> str:
        """A new session, after ending idle ones: those unseen for ``session_idle`` seconds, and the
        longest-idle ones past ``max_sessions`` (a session with a queued or running run is kept).

        Raises:
          JobError: ``max_sessions`` sessions all have runs waiting.
        """
        session = new_id()
        now = time.time()
        with self._lock:
            busy = {j.session for j in self.jobs.values() if j.state in ("queued", "running")}
            idle = sorted((seen, s) for s, seen in self.sessions.items() if s not in busy)
            ended = [s for seen, s in idle if now - seen > self.limits.session_idle]
            over = len(self.sessions) - len(ended) + 1 - self.limits.max_sessions
            ended += [s for _, s in idle if s not in ended][: max(over, 0)]
            if len(self.sessions) - len(ended) >= self.limits.max_sessions:
                raise JobError("the server has as many pages open as it takes; try again later")
            files = [self._end_session(s) for s in ended]
            self.sessions[session] = now
        for path in (p for group in files for p in group):
            path.unlink(missing_ok=True)
        if ended:
            log.info("ended %d idle sessions", len(ended))
        return session

    def has_session(self, session: str | None) -> bool:
        """Whether ``session`` is live (and marks it seen now)."""
        with self._lock:
            if session not in self.sessions:
                return False
            self.sessions[session] = time.time()
            return True

    def _end_session(self, session: str) -> list[Path]:
        """Forgets a session's uploads and finished runs (under the lock); returns their files to remove."""
        files: list[Path] = []
        for upload_id in [u for u, upload in self.uploads.items() if upload.session == session]:
            files.append(self.uploads.pop(upload_id).path)
        for job_id in [j for j, job in self.jobs.items() if job.session == session]:
            job = self.jobs.pop(job_id)
            files += [p for p in (job.preview, job.result, *job.member_previews) if isinstance(p, Path)]
        del self.sessions[session]
        return files

    def _changed(self) -> None:
        with self._lock:
            self.version += 1
            self._lock.notify_all()

    # --- uploads --------------------------------------------------------------------------

    def add_upload(self, session: str, data: bytes, name: str = "") -> Upload:
        """Checks, decodes and keeps an uploaded image, under a name made here: as our own PNG, or
        a JPEG as sent where its bytes are fewer.

        The checks are :func:`nst_jax.io.load_image`'s (the CLI's reader of foreign files),
        after this server's caps on bytes and on the pixels the header declares.

        Raises:
          JobError: too large, not an image, truncated, or too many uploads.
        """
        name = _display_name(name)
        if len(data) > self.limits.max_upload_bytes:
            cap = _mb(self.limits.max_upload_bytes)
            raise JobError(f"{name!r} is {_mb(len(data))}; this server takes images up to {cap}")
        if not data:
            raise JobError(f"{name!r} is empty")
        with self._lock:
            if sum(u.session == session for u in self.uploads.values()) >= self.limits.max_uploads:
                raise JobError(f"this page has {self.limits.max_uploads} images already; reload to start over")
            stored = sum(u.stored_bytes for u in self.uploads.values())
            if len(self.uploads) >= self.limits.max_stored_uploads or stored >= self.limits.max_stored_bytes:
                raise JobError("the server holds as many images as it takes; try again later")
        upload_id = new_id()
        raw = self.folder / f"upload-{upload_id}.bin"
        with self._decoding:
            return self._decode(session, upload_id, raw, data, name)

    def _decode(self, session: str, upload_id: str, raw: Path, data: bytes, name: str) -> Upload:
        from PIL import Image

        from nst_jax.io import image_shape, load_image, png_bytes, save_image, to_uint8

        raw.write_bytes(data)
        try:
            try:
                h, w = image_shape(raw, "upload")
                if h * w > self.limits.max_upload_pixels:
                    raise ValueError(
                        f"{name!r} is {w} x {h} pixels; this server takes images up to "
                        f"{self.limits.max_upload_pixels // 10**6} megapixels"
                    )
                image = load_image(raw, what="upload")
                with Image.open(raw) as opened:  # its header again, after load_image's checks
                    jpeg = opened.format == "JPEG"
            except ValueError as e:
                message = str(e).replace(repr(str(raw)), repr(name)).removeprefix("`upload`: ")
                raise JobError(message) from None
        finally:
            raw.unlink(missing_ok=True)
        path = save_image(self.folder / f"image-{upload_id}.png", image)
        if jpeg and len(data) < path.stat().st_size:
            # A JPEG's pixels as PNG can be 20x its bytes (noise: 381 KB as 8.9 MB), and a second
            # lossy encoding would change them: the bytes as sent are kept instead, under our
            # name. They have just passed load_image's checks, and each run reads them with it.
            kept = self.folder / f"image-{upload_id}.jpg"
            kept.write_bytes(data)
            path.unlink()
            path = kept
        thumbnail = Image.fromarray(to_uint8(image))
        thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        upload = Upload(upload_id, session, name, path, image.shape[:2], png_bytes(np.asarray(thumbnail) / 255.0))
        upload.stored_bytes = path.stat().st_size + len(upload.thumbnail)
        with self._lock:
            self.uploads[upload_id] = upload
        return upload

    def upload(self, session: str, upload_id: str) -> Upload:
        with self._lock:
            upload = self.uploads.get(upload_id)
        if upload is None or upload.session != session:
            raise NotFound(f"no image {upload_id[:40]!r} on this page")
        return upload

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, session: str, request: Any) -> Job:
        """Queues a run from the page's request ``{kind, content, styles, settings, vary}``.

        Everything that can be checked before the run is checked here, so a mistake is
        answered at once: the settings, the images' ids, the sizes (the library's
        :func:`~nst_jax.transfer.check_sizes`), a quick memory estimate and the sweep's axis.

        Raises:
          JobError: with the message the page shows.
          NotFound: an image id that is not this session's.
        """
        from nst_jax.image import fit_long_side

        if not isinstance(request, dict):
            raise JobError("the request must be a JSON object")
        kind = request.get("kind", "stylize")
        if kind not in KINDS:
            raise JobError(f"`kind` must be one of {', '.join(KINDS)}, got {str(kind)[:40]!r}")
        config = config_from_settings(request.get("settings", {}), self.limits)
        if not isinstance(request.get("content"), str):
            raise JobError("choose a content image first")
        content = self.upload(session, request["content"])
        style_ids = request.get("styles")
        if not isinstance(style_ids, list) or not style_ids or not all(isinstance(s, str) for s in style_ids):
            raise JobError("choose at least one style image")
        if len(style_ids) > self.limits.max_styles:
            raise JobError(f"{len(style_ids)} style images; a run takes up to {self.limits.max_styles}")
        styles = [self.upload(session, s) for s in style_ids]
        final = fit_long_side(content.shape, config.size)
        loaded_styles = [fit_long_side(s.shape, config.size) for s in styles]
        try:
            app_settings.check_style_blend(config, len(styles))
            app_settings.check_shapes(config, final, loaded_styles, True, source=content.shape)
        except ValueError as e:
            raise JobError(str(e)) from None
        fine_style = self._fine_style(session, request.get("fine_style"), config, final, len(styles))
        axis: str | None = None
        values: list = []
        labels: list[str] = []
        if kind == "sweep":
            axis, values, labels = self._sweep_axis(request.get("vary"), config, styles)
        job = Job(new_id(), session, kind, config, content, styles, axis, values, fine_style, labels=labels)
        job.member_previews = [None] * len(labels)
        with self._lock:
            if self._closed:
                raise JobError("the server is stopping")
            mine = sum(j.session == session and j.state in ("queued", "running") for j in self.jobs.values())
            if mine >= self.limits.max_queued:
                raise JobError(f"this page has {mine} runs waiting already; wait for some to finish")
            self.jobs[job.id] = job
            self.queue.append(job)
            self.version += 1
            self._lock.notify_all()
        return job

    def _fine_style(self, session: str, fine_id, config: StyleConfig, final, num_styles: int) -> Upload | None:
        """Scale control's fine style (an upload id, or None), checked as stylize checks it."""
        if fine_id is None:
            return None
        if not isinstance(fine_id, str):
            raise JobError("`fine_style` must be the id of an uploaded image")
        fine = self.upload(session, fine_id)
        from nst_jax.image import fit_long_side
        from nst_jax.transfer import check_fine_style

        pixel = np.zeros((1, 1, 3), np.float32)  # the images' values are checked when the run loads them
        try:  # one fine style for every style, blended as they are (runner._stylize)
            check_fine_style(config, final, [pixel] * num_styles, pixel, None)
            app_settings.check_shapes(config, final, [fit_long_side(fine.shape, config.size)], True)
        except ValueError as e:
            raise JobError(str(e)) from None
        return fine

    def _sweep_axis(self, vary, config: StyleConfig, styles: list[Upload]) -> tuple[str, list, list[str]]:
        from nst_jax.sweeps import parse_axis, value_label

        if vary == "style":
            if len(styles) < 2:
                raise JobError("sweeping the style needs two style images or more")
            names = [s.name for s in styles]
            labels = [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]
            return "style", list(range(len(styles))), labels
        if len(styles) > 1:
            raise JobError("a sweep of a setting takes one style image (or sweep the style itself)")
        if not isinstance(vary, str):
            raise JobError("`vary` must be text like style_weight=10,36,100")
        try:
            name, values = parse_axis(vary, "`vary`")
        except ValueError as e:
            raise JobError(str(e)) from None
        if not values:
            raise JobError(f"`vary` gives no values for {name}")
        if len(values) > MAX_SWEEP_MEMBERS:
            raise JobError(f"`vary` has {len(values)} values; a sweep on the page takes up to {MAX_SWEEP_MEMBERS}")
        from nst_jax.sweeps import check_axes

        try:
            check_axes(config, {name: values})
        except ValueError as e:
            raise JobError(str(e)) from None
        return name, values, [f"{name}={value_label(v)}" for v in values]

    def cancel(self, session: str, job_id: str) -> Job:
        """Cancels a queued run (it leaves the queue) or a running one: it stops after its current chunk,
        or (isolation "process") its process is ended ``limits.cancel_grace`` seconds after the cancel."""
        job = self.job(session, job_id)
        with self._lock:
            if job.state == "queued":
                self.queue.remove(job)
                job.state, job.finished = "cancelled", time.time()
            job.cancel.set()
            self.version += 1
            self._lock.notify_all()
        return job

    def job(self, session: str, job_id: str) -> Job:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None or job.session != session:
            raise NotFound(f"no run {job_id[:40]!r} on this page")
        return job

    def snapshot(self, session: str) -> dict:
        """What the page shows: this session's jobs (newest first), with queue positions counting everyone's."""
        with self._lock:
            positions = {job.id: i for i, job in enumerate(self.queue)}
            running = [j for j in self.jobs.values() if j.state == "running"]
            mine = [j for j in self.jobs.values() if j.session == session]
            others_queued = sum(j.session != session for j in self.queue)
            return {
                "version": self.version,
                "jobs": [j.public(positions.get(j.id)) for j in reversed(mine)],
                "others_running": any(j.session != session for j in running),
                "others_queued": others_queued,
            }

    # --- the worker -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self.queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self.queue.popleft()
                job.state, job.started = "running", time.time()
                self.version += 1
                self._lock.notify_all()
            try:
                self.runner.run(self._spec(job), functools.partial(self._apply, job), self._stopper(job))
            except RunEnded as e:
                log.warning("nst-jax serve: run %s: %s", job.id, e)
                seconds = {"seconds": round(time.time() - (job.started or time.time()), 1)}
                self._finish(job, "cancelled" if e.cancelled else "failed", None if e.cancelled else str(e), seconds)
            except RunFailed as e:
                if not e.user:
                    log.error("nst-jax serve: run %s failed:\n%s", job.id, e.details)
                    e = RunFailed(f"internal error ({e}); see the server's log", user=False)
                self._finish(job, "failed", error=str(e))
            except (ValueError, FileNotFoundError, MemoryError) as e:  # what the CLI reports in one line
                self._finish(job, "failed", error=" ".join(str(e).splitlines()))
            except Exception as e:  # a bug: the page says so, the server's terminal keeps the traceback
                log.error("nst-jax serve: run %s failed:\n%s", job.id, traceback.format_exc())
                self._finish(job, "failed", error=f"internal error ({type(e).__name__}: {e}); see the server's log")
            if job.state == "running":  # the runner returned without a finish: a bug here, not the user's
                self._finish(
                    job, "failed", error="internal error (the run ended without a result); see the server's log"
                )

    def _stopper(self, job: Job):
        return lambda: job.cancel.is_set() or self._closed

    def _spec(self, job: Job) -> RunSpec:
        from nst_jax.image import fit_long_side

        side = max(fit_long_side(job.content.shape, job.config.size))
        return RunSpec(
            job.kind, job.config, job.content.path, tuple(s.path for s in job.styles), job.axis,
            tuple(job.values), tuple(job.labels), tuple(stage_costs(job.config, side)),
            None if job.fine_style is None else job.fine_style.path,
        )  # fmt: skip

    def _apply(self, job: Job, message: tuple) -> None:
        """A runner's message (:mod:`nst_jax.runner`) on ``job``: previews and progress, or its end."""
        if message[0] == "update":
            _, images, progress = message
            if "preview" in images:
                job.preview = images["preview"]
            for k, data in images.get("members", {}).items():
                if 0 <= k < len(job.member_previews):
                    job.member_previews[k] = data
            job.progress = progress
            job.version += 1
            return self._changed()
        _, state, error, summary, images = message  # finish
        job.preview = images.get("preview", job.preview)
        if images.get("members") is not None:
            job.member_previews = list(images["members"])
        result = images.get("result")
        job.result = job.preview if result == "preview" else result
        job.version += 1
        self._finish(job, state, error=error, summary=summary)

    def _finish(self, job: Job, state: str, error: str | None = None, summary: dict | None = None) -> None:
        same = job.result is not None and job.result is job.preview
        job.preview = self._spill(job.preview, f"preview-{job.id}.png")
        job.result = job.preview if same else self._spill(job.result, f"result-{job.id}.png")
        job.member_previews = [self._spill(p, f"member-{job.id}-{k}.png") for k, p in enumerate(job.member_previews)]
        with self._lock:
            job.state, job.error, job.finished = state, error, time.time()
            job.summary.update(summary or {})
            self.version += 1
            self._lock.notify_all()

    def _spill(self, data: bytes | Path | None, name: str) -> bytes | Path | None:
        """A finished run's PNG moves to the server's folder (kept in memory if the server is stopping)."""
        if not isinstance(data, bytes) or self._closed:
            return data
        path = self.folder / name
        path.write_bytes(data)
        return path

    # --- the end --------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Cancels every run, waits up to ``timeout`` seconds for the running one to stop (its process is
        ended after ``limits.cancel_grace``), ends the runner, removes the folder."""
        with self._lock:
            self._closed = True
            for job in self.queue:
                job.state, job.finished = "cancelled", time.time()
            self.queue.clear()
            self._lock.notify_all()
        self._worker.join(timeout)
        self.runner.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def closed(self) -> bool:
        return self._closed


def _display_name(name: str) -> str:
    """The client's file name, for messages and labels only: printable, at most 60 characters."""
    name = "".join(ch for ch in str(name) if ch.isprintable()).strip() or "image"
    return name if len(name) <= 60 else name[:57] + "..."


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"
