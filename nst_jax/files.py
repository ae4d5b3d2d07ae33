"""Writing without losing anything: output checks before the long part, atomic files and folders.

The rules (docs/files.md): nothing the user did not name as the output is deleted, moved
or overwritten; the named output is replaced only by a finished result; a folder is
replaced only when it is empty or one of our own outputs of the same kind (it holds our
:data:`MARKER` file and nothing else of the user's).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

# A file in every folder nst-jax writes (weights, checkpoints, sweeps): {"kind": ...}.
MARKER = ".nst-jax.json"
# Staging folders are named `.{name}.staging-{pid}-{random}`: a dead pid's are removed.
_STAGING = ".staging-"
_WRITE_TEST = ".nst-jax-write-test."  # the empty file check_writable_folder makes and removes


class OutputError(ValueError):
    """An output path that cannot be written, or that would replace something of the user's."""


def _describe_os_error(e: OSError) -> str:
    return e.strerror or str(e)


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Checks that files can be created in ``folder`` (or, if it does not exist yet, in its nearest existing ancestor).

    Creates and removes one empty temporary file there; creates no folders.

    Raises:
      OutputError: naming ``what`` (the argument) and the reason.
    """
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"`{what}`: {str(existing)!r} is a file, not a folder, so nothing can be written under it")
    try:
        fd, name = tempfile.mkstemp(prefix=_WRITE_TEST, dir=existing)
    except OSError as e:
        raise OutputError(f"`{what}`: cannot write in {str(existing)!r} ({_describe_os_error(e)})") from None
    os.close(fd)
    Path(name).unlink(missing_ok=True)  # gone already if another writer swapped the folder out meanwhile


def check_output_file(
    path: str | os.PathLike, what: str = "output", encode: Callable[[], object] | None = None
) -> Path:
    """Checks, before any long computation, that ``path`` can be written as a file.

    ``path`` must not be a folder, its folder must accept new files, and ``encode``
    (a trial encoding in the output's format, if given) must succeed.

    Raises:
      OutputError: naming ``what`` and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"`{what}`: {str(path)!r} is a folder; name a file inside it, e.g. {str(path / 'out.png')!r}")
    if path.exists() and not path.is_file():
        raise OutputError(f"`{what}`: {str(path)!r} exists and is not a regular file")
    if encode is not None:
        encode()
    check_writable_folder(path.parent, what)
    return path


def _marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_output_folder(
    folder: str | os.PathLike, kind: str, what: str = "output", allowed: Iterable[str] | None = None
) -> Path:
    """Checks, before any long computation, that ``folder`` may be written (or replaced) as an output of ``kind``.

    Accepted: a path that does not exist (its parent must accept new files), an empty
    folder, or a folder whose marker says ``kind`` and (when ``allowed`` is given) that
    holds nothing but the names in ``allowed`` and the marker.

    Raises:
      OutputError: a file, a folder with the user's files, a folder of another kind, or
        one that cannot be written; naming ``what``.
    """
    folder = Path(folder)
    if not folder.exists():
        check_writable_folder(folder.parent, what)
        return folder
    if not folder.is_dir():
        raise OutputError(f"`{what}`: {str(folder)!r} is a file; name a new or empty folder")
    try:
        entries = [e.name for e in os.scandir(folder)]
    except FileNotFoundError:  # moved away by another writer this instant
        check_writable_folder(folder.parent, what)
        return folder
    if entries:
        marker = _marker(folder)
        if marker is None:
            raise OutputError(
                f"`{what}`: {str(folder)!r} is a folder with files nst-jax did not write; name a new or empty folder"
            )
        if marker.get("kind") != kind:
            raise OutputError(
                f"`{what}`: {str(folder)!r} holds nst-jax {marker.get('kind')!r} output, not {kind!r}; "
                "name a new or empty folder"
            )
        if allowed is not None:
            foreign = sorted(e for e in set(entries) - set(allowed) - {MARKER} if not e.startswith(_WRITE_TEST))
            if foreign:
                raise OutputError(
                    f"`{what}`: {str(folder)!r} also holds {foreign[0]!r}, which nst-jax did not write; "
                    "move it away or name another folder"
                )
    check_writable_folder(folder, what)
    return folder


def write_marker(folder: Path, kind: str) -> None:
    (folder / MARKER).write_text(json.dumps({"kind": kind}) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(folder: Path) -> None:
    """Removes staging folders left in ``folder`` by killed processes of this machine (ours by name and pid)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not (entry.name.startswith(".") and _STAGING in entry.name and entry.is_dir(follow_symlinks=False)):
                continue
            pid = entry.name.rsplit(_STAGING, 1)[1].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def write_folder(folder: str | os.PathLike, kind: str, fill: Callable[[Path], None], allowed: Iterable[str]) -> Path:
    """Makes ``folder`` appear whole, with the contents ``fill(staging)`` writes, or not at all.

    The folder is filled beside its final place and renamed into it. An existing folder
    (checked by :func:`check_output_folder`: empty, or ours of ``kind`` holding only
    ``allowed``) is swapped out atomically where the system allows it, so there is no
    moment without a whole folder, and only then removed. Two processes writing the same
    folder at once both succeed (the last one's contents stay).
    """
    folder = Path(folder).absolute()
    allowed = set(allowed)
    check_output_folder(folder, kind, allowed=allowed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_STAGING}{os.getpid()}-", dir=folder.parent))
    try:
        fill(staging)
        write_marker(staging, kind)
        for _ in range(5):
            if not folder.exists():
                try:
                    os.replace(staging, folder)
                    return folder
                except OSError as e:  # another process made it meanwhile: replace theirs
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
                        raise
                    continue
            check_output_folder(folder, kind, allowed=allowed)
            if _exchange(staging, folder):
                return folder  # `staging` now holds the old contents; removed below
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_STAGING}{os.getpid()}-", dir=folder.parent))
            try:
                os.replace(folder, old)  # onto an empty folder of ours
            except FileNotFoundError:
                shutil.rmtree(old, ignore_errors=True)
                continue
            try:
                os.replace(staging, folder)
            finally:
                shutil.rmtree(old, ignore_errors=True)
            return folder
        raise OutputError(f"`output`: {str(folder)!r} keeps changing under another process; try again")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
