"""Joining the processes of a multi-process run (``jax.distributed``), for the command line's ``--coordinator``.

A mistake (a malformed address, a missing process id, a coordinator that does not answer)
is a ``ValueError`` of one line naming the option, raised before any device is used.
"""

from __future__ import annotations

import argparse
import time


def join_processes(args: argparse.Namespace) -> None:
    """--coordinator: joins the other processes (jax.distributed.initialize) before any device is used."""
    coordinator = getattr(args, "coordinator", None)
    if coordinator is None:
        if getattr(args, "num_processes", None) is not None or getattr(args, "process_id", None) is not None:
            raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT")
        return
    if getattr(args, "resume", None) or getattr(args, "checkpoint_every", 0):
        raise ValueError("--coordinator: checkpoints (--resume, --checkpoint-every) are for one process only")
    if args.coordinator_timeout < 1:
        raise ValueError(f"--coordinator-timeout must be >= 1 second, got {args.coordinator_timeout}")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices of several processes talk
    if coordinator == "auto":
        if args.num_processes is not None or args.process_id is not None:
            raise ValueError("--coordinator auto takes --num-processes and --process-id from the cluster")
        keywords = {}
    else:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator must look like HOST:PORT or be 'auto', got {coordinator!r}")
        if args.num_processes is None or args.process_id is None:
            raise ValueError("--coordinator HOST:PORT needs --num-processes and --process-id")
        if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
            raise ValueError(
                f"--process-id must be in 0..{args.num_processes - 1} (--num-processes {args.num_processes}), "
                f"got {args.process_id}"
            )
        keywords = {"coordinator_address": coordinator, "num_processes": args.num_processes,
                    "process_id": args.process_id}  # fmt: skip
    if coordinator != "auto" and args.process_id != 0:
        # JAX aborts the whole process (a fatal C++ check) when the coordinator cannot be reached:
        # wait for its port here, so that case is one line and exit status 2.
        wait_for_port(host, int(port), args.coordinator_timeout)
    try:
        jax.distributed.initialize(**keywords, initialization_timeout=args.coordinator_timeout)
    except Exception as e:  # the runtime's own error types differ between versions
        reason = " ".join(str(e).split())[:300]
        raise ValueError(
            f"--coordinator {coordinator}: the processes did not all meet within {args.coordinator_timeout} s "
            f"({reason})"
        ) from None


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Returns once ``host:port`` accepts a connection; raises a one-line error after ``timeout`` seconds."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"--coordinator {host}:{port} did not answer within {timeout:g} s ({e.strerror or e}); "
                    "start process 0 there, or raise --coordinator-timeout"
                ) from None
            time.sleep(0.2)


def writes() -> bool:
    """Whether this process writes outputs: process 0 of a multi-process run, or the only one."""
    import jax

    return jax.process_index() == 0
