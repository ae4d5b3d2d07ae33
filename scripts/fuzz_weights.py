"""Seeded mutants of every weight-file format, each converted in its own process under limits.

For each fixture format (the writers of ``tests/weight_files.py``: a random VGG-19 stored
as torch legacy and zip, torchvision, Caffe V1 and V2, Keras HDF5, MatConvNet) the script
writes one valid file, then N mutants of it (bit flips, interesting integers written over
a field, truncations, inserted and deleted chunks; most of them in the first and last 64 KiB,
where the headers, pickles and directories are), and converts each with
:func:`nst_jax.converters.convert` in a process of its own, as ``nst-jax convert`` would: a fork
of a server that has imported the readers (milliseconds), or with ``--fresh`` a new
interpreter (1-2 s more each). Keras and MatConvNet files are read, as always, in a further
child of that process (``nst_jax.converters.isolated``).

Each outcome is one of:
  converted   finite parameters of the right shapes
  one-line    an error the CLI prints as one line (its exception types, no newline)
  traceback   any other exception (a bug: the CLI would print a traceback)
  crash       the process died of a signal
  timeout     longer than --time-limit seconds (default 60)
  memory      a peak resident set above --memory-limit (default 2 GB; also its address-space cap x2)

The target (issue 13): 0 tracebacks, crashes, timeouts and memory outcomes. Prints one
JSON line per format, and every bad mutant's seed, so it can be written again:

    python scripts/fuzz_weights.py --mutants 500 --formats torch-zip,caffe-v2
    python scripts/fuzz_weights.py --write-mutant keras 17 -o bad.h5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
FORMATS = (
    "torch-legacy", "torch-zip", "torch-zip-pickle", "torchvision", "caffe-v1", "caffe-v2", "keras", "matconvnet",
)  # fmt: skip
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1)

# The child: converts, checks, reports one word, a detail and its peak RSS; the CLI's own
# exception types are one-liners, anything else is a traceback.
_CHILD = r"""
import sys
from fuzz_weights import convert_and_report
print(convert_and_report(sys.argv[1], int(sys.argv[2])))
"""


def convert_and_report(path: str, address_limit: int) -> str:
    """In the child: ``"<outcome> <peak bytes> <detail>"`` for converting ``path`` under an address-space cap."""
    import pickle
    import resource
    import traceback

    resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from nst_jax.converters import convert

    user_errors = (
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        pickle.UnpicklingError,
        ImportError,
    )
    try:
        params, _ = convert(path)
        finite = all(np.isfinite(np.asarray(leaf)).all() for layer in params.values() for leaf in layer.values())
        outcome, detail = ("converted", "") if finite else ("traceback", "non-finite parameters returned")
    except user_errors as e:
        text = str(e).strip()
        outcome = "one-line" if text and "\n" not in text else "traceback"
        detail = text.replace("\n", " | ")
    except BaseException as e:  # a bug: the CLI would print a traceback
        outcome, detail = "traceback", traceback.format_exception_only(e)[-1].strip()
    # Our own peak from VmHWM (ru_maxrss would carry over the peak of the process we were forked
    # from, across exec), the isolated reader's (a grandchild) from ru_maxrss of our children.
    own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    peak = 1024 * max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return f"{outcome} {peak} {detail[:300]}"


def _forked(path: str, address_limit: int, connection) -> None:
    connection.send(convert_and_report(path, address_limit))
    connection.close()


_CONTEXT = None


def _context():
    """A forkserver that has imported the readers once: each mutant still gets its own process, in milliseconds."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["fuzz_weights", "nst_jax.converters", "h5py", "scipy.io"])
    return _CONTEXT


def write_fixture(fmt: str, path: Path) -> None:
    """A valid file of ``fmt`` with a random VGG-19 (always the same one)."""
    sys.path.insert(0, str(TESTS))
    import weight_files

    rng = np.random.default_rng(0)
    convs = weight_files.random_convs(rng)
    if fmt in ("torch-legacy", "torch-zip", "torch-zip-pickle"):
        import torch_files

        state = {}
        first = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
        state["0.weight"], state["0.bias"] = first, np.zeros(3, np.float32)
        for i, (kernel, bias) in enumerate(convs):
            state[f"{2 * i + 2}.weight"], state[f"{2 * i + 2}.bias"] = kernel, bias
        (torch_files.save_legacy if fmt == "torch-legacy" else torch_files.save_zip)(path, state)
        if fmt == "torch-zip-pickle":  # stored, not deflated: the mutants rewrite data.pkl with a valid CRC
            _rezip(path, lambda name, data: data)
    elif fmt == "torchvision":
        weight_files.write_torchvision(path, convs, rng)
    elif fmt.startswith("caffe"):
        weight_files.write_caffemodel(path, convs, version=int(fmt[-1]))
    elif fmt == "keras":
        weight_files.write_keras_h5(path, convs)
    else:
        weight_files.write_matconvnet(path, convs)


def _rezip(path: Path, change) -> None:
    """Rewrites a zip with ``change(name, data)`` applied to every member (fresh CRCs: the zip stays valid)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = [(info.filename, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            z.writestr(name, change(name, data))


def mutant(fmt: str, original: Path, out: Path, seed: int) -> None:
    """Writes the ``seed``-th mutant of the fixture ``original`` of ``fmt`` to ``out``.

    ``torch-zip-pickle`` mutates only ``data.pkl`` inside a valid zip (a zip's CRCs stop
    every other change before the pickle is read); the others mutate the file's bytes.
    """
    if fmt != "torch-zip-pickle":
        out.write_bytes(mutate(original.read_bytes(), seed))
        return
    out.write_bytes(original.read_bytes())
    _rezip(out, lambda name, data: mutate(data, seed, headers=False) if name.endswith("data.pkl") else data)


def mutate(data: bytes, seed: int, headers: bool = True) -> bytes:
    """One seeded mutant of ``data`` (with ``headers``, most changes in its first and last 64 KiB)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    n = len(out)

    def position() -> int:
        region = rng.random() if headers else 1.0
        if region < 0.4:
            return int(rng.integers(0, min(n, 1 << 16)))
        if region < 0.7:
            return int(rng.integers(max(0, n - (1 << 16)), n))
        return int(rng.integers(0, n))

    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 6)
        at = position()
        if kind == 0:  # flip bits
            for _ in range(int(rng.integers(1, 9))):
                i = position()
                out[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # an interesting integer over a field
            width = int(rng.choice([1, 2, 4, 8]))
            value = int(rng.choice(_INTERESTING)) % (1 << (8 * width))
            order = "little" if rng.random() < 0.5 else "big"
            out[at : at + width] = value.to_bytes(width, order)
        elif kind == 2:  # truncate
            del out[max(1, at) :]
        elif kind == 3:  # insert a chunk copied from elsewhere
            src = position()
            out[at:at] = out[src : src + int(rng.integers(1, 256))]
        elif kind == 4:  # delete a chunk
            del out[at : at + int(rng.integers(1, 256))]
        else:  # random bytes over a span
            width = int(rng.integers(1, 64))
            out[at : at + width] = rng.integers(0, 256, width, dtype=np.uint8).tobytes()
        n = len(out)
        if not n:
            out = bytearray(b"\0")
            n = 1
    return bytes(out)


def run_one(path: Path, time_limit: float, memory_limit: int, fresh: bool = True) -> tuple[str, str, float, int]:
    """(outcome, detail, seconds, peak RSS bytes) of converting ``path`` in a process of its own.

    ``fresh``: a new Python interpreter (as ``nst-jax convert`` runs); else a fork of a
    server that has imported the readers already (the same code, without 1-2 s of start-up).
    The address space is capped at twice ``memory_limit`` plus 2 GiB (to protect the
    machine); the peak resident set is what is judged against ``memory_limit``.
    """
    address_limit = 2 * memory_limit + (2 << 30)
    start = time.perf_counter()
    if fresh:
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(Path(path).absolute()), str(address_limit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(path).absolute().parent,  # not a checkout: the installed nst_jax is what runs
        )
        try:
            stdout, stderr = child.communicate(timeout=time_limit)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return "timeout", f"over {time_limit} s", time.perf_counter() - start, 0
        code = child.returncode
        report = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        last = (stderr.strip().splitlines() or [""])[-1]
    else:
        receive, send = _context().Pipe(duplex=False)
        child = _context().Process(target=_forked, args=(str(path), address_limit, send))
        child.start()
        send.close()
        child.join(time_limit)
        if child.is_alive():
            child.kill()
            child.join()
            return "timeout", f"over {time_limit} s", time.perf_counter() - start, 0
        code = child.exitcode
        report = receive.recv() if receive.poll() else ""
        last = ""
    seconds = time.perf_counter() - start
    if code is not None and code < 0:
        return "crash", f"signal {-code}", seconds, 0
    words = report.split(" ", 2)
    if len(words) < 2 or words[0] not in ("converted", "one-line", "traceback"):
        return "traceback", last or f"exit status {code}", seconds, 0
    outcome, peak, detail = words[0], int(words[1]), words[2] if len(words) > 2 else ""
    if peak > memory_limit:
        outcome, detail = "memory", f"peak {peak / 2**30:.2f} GiB; {outcome}: {detail}"
    return outcome, detail, seconds, peak


def fuzz(
    fmt: str, mutants: int, first_seed: int, workers: int, time_limit: float, memory_limit: int, fresh: bool = False
) -> dict:
    counts = dict.fromkeys(("converted", "one-line", "traceback", "crash", "timeout", "memory"), 0)
    bad, seconds, peak = [], [], 0
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{fmt}.") as folder:
        original = Path(folder) / "original"
        write_fixture(fmt, original)
        outcome, detail, _, _ = run_one(original, time_limit, memory_limit, fresh)
        if outcome != "converted":
            raise RuntimeError(f"the {fmt} fixture itself does not convert: {outcome} {detail}")

        def one(seed: int):
            path = Path(folder) / f"mutant{seed}"
            mutant(fmt, original, path, seed)
            try:
                return seed, run_one(path, time_limit, memory_limit, fresh)
            finally:
                path.unlink(missing_ok=True)

        with ThreadPoolExecutor(workers) as pool:
            for seed, (outcome, detail, secs, rss) in pool.map(one, range(first_seed, first_seed + mutants)):
                counts[outcome] += 1
                seconds.append(secs)
                peak = max(peak, rss)
                if outcome not in ("converted", "one-line"):
                    bad.append({"seed": seed, "outcome": outcome, "detail": detail})
    return {
        "format": fmt,
        "mutants": mutants,
        **counts,
        "max_seconds": round(max(seconds), 2) if seconds else 0,
        "median_seconds": round(float(np.median(seconds)), 2) if seconds else 0,
        "peak_rss_gib": round(peak / 2**30, 3),
        "bad": bad,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {', '.join(FORMATS)}")
    parser.add_argument("--mutants", type=int, default=500, help="mutants per format")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--memory-limit", type=float, default=2.0, help="GB of peak resident memory")
    parser.add_argument(
        "--fresh", action="store_true", help="a new interpreter per mutant (default: a fork of a preloaded server)"
    )
    parser.add_argument("--write-mutant", nargs=2, metavar=("FORMAT", "SEED"), help="write one mutant and stop")
    parser.add_argument("-o", "--output", help="with --write-mutant: where")
    args = parser.parse_args(argv)
    if args.write_mutant:
        fmt, seed = args.write_mutant[0], int(args.write_mutant[1])
        with tempfile.TemporaryDirectory() as folder:
            write_fixture(fmt, Path(folder) / "original")
            mutant(fmt, Path(folder) / "original", Path(args.output), seed)
        return 0
    sys.path.insert(0, str(Path(__file__).parent))  # the forkserver imports this module by name
    failed = 0
    for fmt in args.formats.split(","):
        if fmt not in FORMATS:
            parser.error(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        report = fuzz(
            fmt, args.mutants, args.seed, args.workers, args.time_limit, int(args.memory_limit * 1e9), args.fresh
        )
        failed += len(report["bad"])
        print(json.dumps(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
