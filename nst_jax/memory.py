"""The memory plan: how much a run needs, how much a device has, and the refusals before anything runs.

One place for the rules :func:`~nst_jax.stylize`, :func:`~nst_jax.sweep`, the CLI and the web
page follow: :func:`available_memory` (what one device holds), :func:`check_roughly` (from the
sizes alone, before any image is decoded), :func:`check` (XLA's analysis of the compiled loop,
near the limit), :func:`batch_size` (a sweep's batch that fits) and :func:`plan` (``--dry-run``'s
report). Each constant cites its measurement.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import jax
from jax.sharding import Mesh

from nst_jax.config import StyleConfig

# XLA's memory analysis of the default loop: 3.18 kB per output pixel at 2048x2048, 3.26 kB at
# 1024x1024 (fixed costs weigh more at small sizes). Only a quick first guess: above half
# the free memory the exact analysis decides.
ROUGH_BYTES_PER_PIXEL = 3200
# Peak RSS over XLA's analysis, measured: 14.8 GiB vs 12.4 GiB for a 2048x2048 stylisation
# (the runtime, Python, images, targets and the allocator's slack come on top of the loop).
RSS_OVER_ANALYSIS = 1.25


# VGG-19's forward pass (targets from a style image), XLA's memory analysis per input pixel:
# 1313 at 1024 x 1024 (1471 at 512: the weights weigh more), Gram matrices of relu1_1..relu5_1.
FORWARD_BYTES_PER_PIXEL = 1400


def rough_bytes(h: int, w: int, devices: int = 1) -> float:
    """A process's first guess for an ``h`` x ``w`` output split over ``devices`` (no compilation)."""
    return RSS_OVER_ANALYSIS * ROUGH_BYTES_PER_PIXEL * h * w / devices


class MemoryLimitError(ValueError):
    """A run (a picture, or a sweep's asked batch) does not fit in the device's free memory; raised before it runs."""


def available_memory(device: jax.Device) -> int | None:
    """Bytes one device can hold: the accelerator's limit, or the host's available RAM on CPU.

    A device of another process (a multi-process mesh) is measured by this process's first one.
    """
    if getattr(device, "process_index", 0) != jax.process_index():
        device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def limit_per_device(sharded: bool) -> int | None:
    """Bytes free for one device: an accelerator's own; on CPU the host's, shared by this process's devices
    when the image is split over them (forced host devices add no memory)."""
    device = jax.local_devices()[0]
    free = available_memory(device)
    if free is not None and sharded and device.platform == "cpu":
        free //= len(jax.local_devices())
    return free


def plan(command: str, final: tuple[int, int], needed: Callable[[Mesh | None], int], mesh: Mesh | None) -> dict:
    """--dry-run's report: XLA's analysis of the compiled loop at the output's size, against the memory free.

    ``final``: the output's ``(height, width)``; ``needed(mesh)``: XLA's bytes per device of the
    run's program with its rows over ``mesh`` (:func:`nst_jax.transfer.memory_needed`).
    """
    h, w = final
    start = time.perf_counter()
    per_device = needed(mesh)
    free = limit_per_device(mesh is not None)
    plan = {
        "command": command,
        "shape": [h, w],
        "devices": 1 if mesh is None else mesh.size,
        "platform": jax.devices()[0].platform,
        "sharded": mesh is not None,
        "bytes_per_device": per_device,
        # What a whole process needs on top of XLA's analysis (runtime, images, allocator slack).
        "needed_bytes": int(RSS_OVER_ANALYSIS * per_device),
        "limit_bytes": free,
        "fits": free is None or RSS_OVER_ANALYSIS * per_device <= free,
        "seconds": round(time.perf_counter() - start, 1),
    }
    from nst_jax.optim import image_mesh, rows_divide

    every = image_mesh()
    if not plan["fits"] and mesh is None and every.size > 1 and rows_divide(h, every):
        sharded = needed(every)
        plan["bytes_per_device_sharded"] = sharded
        plan["fits_sharded"] = free is None or RSS_OVER_ANALYSIS * sharded <= free
    return plan


def check_roughly(config: StyleConfig, final: tuple[int, int], styles, devices: int = 1) -> None:
    """Refuses at once a size far over the memory (the exact analysis would take long, and might not fit itself).

    ``devices``: how many devices the image's rows are split over (--shard-image).
    """

    from nst_jax.image import fit_long_side

    free = limit_per_device(devices > 1)
    if free is None:
        return
    h, w = final
    needed = rough_bytes(h, w, devices)
    if needed > 2 * free:
        fits = int(max(h, w) * math.sqrt(free / needed))
        where = " per device" if devices > 1 else ""
        raise MemoryLimitError(
            f"`size` {max(h, w)} ({h}x{w} output) needs about {needed / 2**30:.0f} GiB{where}, far more than the "
            f"{free / 2**30:.1f} GiB of memory available; the largest size that fits is about {fits}"
            + sharding_hint(needed * devices, devices)
        )
    for style in styles:
        if config.style_scale != 1.0:
            style = fit_long_side(style, max(16, round(config.style_scale * max(final))))
        needed = RSS_OVER_ANALYSIS * FORWARD_BYTES_PER_PIXEL * style[0] * style[1]
        if needed > free:
            raise MemoryLimitError(
                f"a style image at {style[0]}x{style[1]} px needs about {needed / 2**30:.0f} GiB for its features, "
                f"more than the {free / 2**30:.1f} GiB available; use a smaller `size` or `style_scale`"
            )


def batch_size(
    total: int,
    asked: int | None,
    devices: int,
    limit: int | None,
    fraction: float,
    needed: Callable[[int], int],
) -> int:
    """A sweep's batch: ``asked`` (or all ``total`` members), rounded up to a multiple of ``devices``,
    halved until XLA's analysis of its program, ``needed(size)`` bytes per device, is within
    ``fraction`` of ``limit`` (the device's free memory; ``None``: unknown, no limit).

    Raises:
      MemoryLimitError: an ``asked`` batch that does not fit, or one batch per device that does not.
    """
    round_up = lambda n: devices * math.ceil(n / devices)
    size = round_up(min(total, asked) if asked else total)
    while True:
        bytes_needed = needed(size)
        if limit is None or bytes_needed <= fraction * limit:
            return size
        if asked is not None or size <= devices:
            raise MemoryLimitError(
                f"`batch_size` {size} needs about {bytes_needed / 2**30:.1f} GiB per device, more than "
                f"{fraction:.0%} of the {limit / 2**30:.1f} GiB free; use a smaller batch or image size"
            )
        size = round_up(size // 2)


def sharding_hint(needed_on_one: float, devices: int) -> str:
    """ "; it would fit with its rows split ..." where splitting the rows over every device would make it fit.

    It names both ways to split them: the CLI's --shard-image and the library's ``mesh=``.

    A rough share (the replicated weights and the halos come on top); nothing where the split adds no
    memory (forced host devices of one CPU) or is already in use.
    """
    count = len(jax.devices())
    budget = limit_per_device(True)
    if devices > 1 or count == 1 or budget is None or needed_on_one / count > budget:
        return ""
    each = needed_on_one / count / 2**30
    return (
        f"; it would fit with its rows split over the {count} devices (about {each:.1f} GiB each: --shard-image, "
        "or mesh=nst_jax.optim.image_mesh() in the library)"
    )


def check(config: StyleConfig, final: tuple[int, int], needed: Callable[[], int], devices: int = 1) -> None:
    """Refuses, before the optimisation allocates anything, an output that cannot fit in memory.

    ``final``: the output's ``(height, width)``; ``needed()``: XLA's bytes per device of the run's
    program (:func:`nst_jax.transfer.memory_needed`), asked only when the rough guess is over half
    the memory free (it compiles the program); ``devices``: how many devices the rows are split over.

    Raises:
      MemoryLimitError: with the largest size that fits, and whether splitting the rows would.
    """
    h, w = final
    free = limit_per_device(devices > 1)
    if free is None or rough_bytes(h, w, devices) < free / 2:
        return
    needed_bytes = RSS_OVER_ANALYSIS * needed()
    if needed_bytes > free:
        fits = int(max(h, w) * math.sqrt(free / needed_bytes))
        where = f" per device over {devices} devices" if devices > 1 else ""
        raise MemoryLimitError(
            f"`size` {config.size} ({h}x{w} output) needs about {needed_bytes / 2**30:.1f} GiB{where}, more than the "
            f"{free / 2**30:.1f} GiB of memory available; the largest size that fits is about {fits}"
            + sharding_hint(needed_bytes, devices)
        )
