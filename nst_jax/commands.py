"""What each command of ``nst-jax`` does once its arguments are parsed (:mod:`nst_jax.cli` parses them).

Every command that optimises comes in two halves: ``prepare`` checks everything a user can
get wrong (the output can be written, the sizes, the memory, the options' combination)
before anything long starts, raising a one-line error; ``run`` optimises and writes the
output, replacing it only with a finished result, and keeps a failure's traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

from nst_jax import processes, settings
from nst_jax.config import INITS, StyleConfig

# Defaults of `nst-jax demo`: small enough for a laptop CPU in a few minutes.
DEMO_DEFAULTS = {"size": 256}
DEMO_SHAPE = (384, 512)  # the demo's aspect ratio


def _config_from(args: argparse.Namespace, defaults: dict) -> StyleConfig:
    given = {f.name: getattr(args, f.name) for f in settings.settings() if f.name in args}
    return settings.config_from({**defaults, **given})


def _use_persistent_compilation_cache() -> None:
    """Compiled programs are kept in the user's cache, so a second run skips most compilation.

    Set by the command only (a library user decides for their own program); an explicit
    ``JAX_COMPILATION_CACHE_DIR`` wins.
    """
    import jax

    from nst_jax.weights import cache_dir

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    # JAX caches only compilations over 1 s by default; the dozen small ones add ~0.9 s to every start.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def convert(args) -> int:
    from nst_jax.converters import convert
    from nst_jax.files import check_output_folder
    from nst_jax.weights import KIND, WEIGHTS_FILES, save_params, sha256_of

    source = Path(args.source)
    if source.is_dir():
        raise IsADirectoryError(f"`source`: {str(source)!r} is a folder; name the weight file")
    if not source.is_file():
        raise FileNotFoundError(f"`source`: no such file: {str(source)!r}")
    check_output_folder(args.output, KIND, allowed=WEIGHTS_FILES)
    params, used = convert(source, args.format)
    out = save_params(params, args.output, source=str(source), sha256=sha256_of(source), format=used)
    print(f"wrote {out}: {used} weights as an orbax checkpoint (preprocess, conv1_1..conv5_4)", file=sys.stderr)
    return 0


def normalize(args) -> int:
    from nst_jax.converters.normalize import normalize_params
    from nst_jax.files import check_output_folder
    from nst_jax.io import load_image
    from nst_jax.weights import KIND, WEIGHTS_FILES, load_params, save_params

    if args.size < 16:
        raise ValueError(f"`--size` must be at least 16 (pixels of the long side), got {args.size}")
    check_output_folder(args.output, KIND, allowed=WEIGHTS_FILES)
    folder = Path(args.images)
    if not folder.is_dir():
        raise FileNotFoundError(f"`--images`: no such directory: {str(folder)!r}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images, skipped = [], []
    for path in paths:
        try:
            images.append(load_image(path, args.size, what="--images"))
        except ValueError:
            skipped.append(path.name)  # not an image, truncated, or too large

    if not images:
        raise ValueError(f"`--images`: no readable images in {str(folder)!r}")
    params, info = load_params(args.source)
    normalised, scales = normalize_params(params, images, pooling=args.pooling)
    out = save_params(
        normalised, args.output, source=info.source, sha256=info.sha256, format="normalized",
        images=len(images), size=args.size, pooling=args.pooling,
        mean_scale={layer: float(s.mean()) for layer, s in scales.items()},
    )  # fmt: skip
    note = f" ({len(skipped)} files skipped: not readable images, e.g. {skipped[0]!r})" if skipped else ""
    print(f"wrote {out}: normalised over {len(images)} images{note}", file=sys.stderr)
    return 0


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A picture run (stylize, demo, texture, reconstruct) that passed every check: what :func:`run` needs."""

    content: Any  # the content image, or None (a texture; a style reconstruction)
    style: list[Any] | None  # the style images (None entries: unstyled regions), or None (a content reconstruction)
    init: Any  # a name or an image
    params: Any  # the feature network's parameters
    config: StyleConfig  # every setting
    output: Path  # the named output, written only with a finished result
    shape: tuple[int, int] | None  # the output's (height, width) when there is no content
    resume: str | None  # a checkpoint to continue from
    masks: Any  # spatial control's region masks, or None
    style_masks: list[Any] | None  # per-style masks, or None
    mesh: Any  # --shard-image's mesh, or None
    fine_style: list[Any] | None = None  # --fine-style's images (scale control), or None
    profile: bytes | None = None  # --keep-profile: the content's ICC profile, the output is written back in


@dataclasses.dataclass(frozen=True)
class PreparedSweep:
    """A sweep that passed every check: what :func:`run_sweep` needs."""

    content: Any  # the content image
    style: Any  # the one style image, or None when the style is an axis
    axes: dict[str, Any]  # the swept settings
    params: Any  # the feature network's parameters
    config: StyleConfig  # every setting the members share
    output: Path  # the output folder
    fine_style: Any = None  # --fine-style's image (scale control, every member's), or None


def _proof_profile(args: argparse.Namespace) -> bytes | None:
    """--proof's ICC profile, read and its proofing transform built now, so a bad one is refused
    before any image is decoded; ``None`` without the option."""
    from nst_jax.io import load_proof_profile

    return load_proof_profile(args.proof, what="proof") if getattr(args, "proof", None) else None


def _image_loader(profile: bytes | None):
    """:func:`nst_jax.io.load_image`, or with --proof's ``profile`` each image soft-proofed after
    loading (:func:`nst_jax.io.soft_proof`): the picture is made of colours the printer has."""
    from nst_jax.io import load_image, soft_proof

    if profile is None:
        return load_image
    return lambda path, size=None, what="image": soft_proof(load_image(path, size, what=what), profile)


def prepare_sweep(args: argparse.Namespace):
    from nst_jax.files import check_output_folder
    from nst_jax.io import output_format
    from nst_jax.sweeps import KIND, check_axes
    from nst_jax.weights import load_params

    output_format(Path("x" + args.extension), "--extension")
    check_output_folder(args.output, KIND)
    config = _config_from(args, {})
    _check_shapes(args, config)  # from the headers, before anything is decoded
    from nst_jax.sweeps import parse_axis

    axes: dict[str, typing.Any] = dict(parse_axis(text) for text in args.vary)
    if len(axes) != len(args.vary):
        raise ValueError("--vary names an axis twice")
    load = _image_loader(_proof_profile(args))  # --proof's profile is checked here, before any image is decoded
    content = load(args.content, config.size, what="content")
    styles = [load(path, config.size, what="style") for path in args.style]
    if len(styles) > 1:
        axes["style"] = {
            _style_label(path, i, args.style): image
            for i, (path, image) in enumerate(zip(args.style, styles, strict=True))
        }
    fine_style = None
    if args.fine_style:  # one: every member's; several: an axis of its own, as several STYLE images
        from nst_jax.transfer import check_fine_style

        fines = [load(path, config.size, what="fine-style") for path in args.fine_style]
        check_fine_style(config, content.shape[:2], fines[:1], styles[0], None)
        if len(fines) == 1:
            fine_style = fines[0]
        else:
            axes["fine_style"] = {
                _style_label(path, i, args.fine_style): image
                for i, (path, image) in enumerate(zip(args.fine_style, fines, strict=True))
            }
    if not axes:
        raise ValueError("nothing to sweep: give --vary NAME=V1,V2,..., several STYLE images or several --fine-style")
    check_axes(config, axes, product=not args.zip)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    params, _ = load_params(config.weights)
    style = styles[0] if len(styles) == 1 else None
    if args.dry_run:
        print(json.dumps(_sweep_plan(content, style, axes, params, config, args, fine_style)))
        return None
    return PreparedSweep(content, style, axes, params, config, Path(args.output), fine_style)


def _sweep_plan(content, style, axes, params, config: StyleConfig, args: argparse.Namespace, fine_style=None) -> dict:
    """sweep --dry-run's report: the batch that fits at the output's size and its memory per device."""
    import jax

    from nst_jax.sweeps import MemoryLimitError, sweep

    start = time.perf_counter()
    try:
        plan = sweep(
            content, style, config, axes, params=params, product=not args.zip, batch_size=args.batch_size,
            fine_style=fine_style, dry_run=True,
        )._asdict()  # fmt: skip
        plan["fits"] = plan["limit_bytes"] is None or plan["bytes_per_device"] <= (
            plan["memory_fraction"] * plan["limit_bytes"]
        )
    except MemoryLimitError as e:  # an asked --batch-size that does not fit
        plan = {"shape": list(content.shape[:2]), "devices": len(jax.devices()), "fits": False, "reason": str(e)}
    plan = {"command": "sweep", **plan, "platform": jax.devices()[0].platform}
    plan["shape"] = list(plan["shape"])
    plan["seconds"] = round(time.perf_counter() - start, 1)
    return plan


def _style_label(path: str, index: int, paths: list[str]) -> str:
    stem = Path(path).stem
    return stem if [Path(p).stem for p in paths].count(stem) == 1 else f"{stem}{index}"


def run_sweep(args: argparse.Namespace, prepared: PreparedSweep) -> int:
    """Runs a prepared sweep and writes its folder (rescued to the cache if the disk fills meanwhile)."""
    from nst_jax.progress import SweepLineProgress
    from nst_jax.sweeps import MemoryLimitError, failed_members, save_sweep, sweep

    config, output = prepared.config, prepared.output
    _use_persistent_compilation_cache()
    try:
        result = sweep(
            prepared.content, prepared.style, config, prepared.axes, params=prepared.params, product=not args.zip,
            batch_size=args.batch_size, callback=SweepLineProgress(args.quiet), fine_style=prepared.fine_style,
        )  # fmt: skip
    except MemoryLimitError as e:
        print(f"nst-jax: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    if not processes.writes():  # several processes ran the sweep together; process 0 writes it
        return 0
    save = lambda folder: save_sweep(folder, result, extension=args.extension, content=args.content, style=args.style)
    try:
        path = save(output)
    except OSError as e:  # checked before the run, so the disk filled up or the folder went away meanwhile
        rescue = _rescue_folder(output.name)
        path = save(rescue)
        print(f"nst-jax: could not write {output} ({e.strerror or e}); saved the sweep to {rescue}", file=sys.stderr)
        return 1
    failed = failed_members(result)
    if failed:
        print(
            f"nst-jax: {len(failed)} of {len(result.settings)} members failed: {', '.join(failed)}; "
            f"wrote all of them to {output}",
            file=sys.stderr,
        )
        return 1
    if not args.quiet:
        print(
            f"wrote {len(result.settings)} images, {output / 'grid.png'} and {path}: batches of "
            f"{result.batch_size}, {result.iterations} batched evaluations, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


def _rescue_folder(name: str) -> Path:
    """A new folder for a result that could not be written where asked: in the cache, else the system's temp folder."""
    import tempfile

    from nst_jax.weights import cache_dir

    for parent in (cache_dir() / "rescued", Path(tempfile.gettempdir())):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f"{name}.", dir=parent))
        except OSError:
            continue
    raise OSError(f"no folder to rescue {name} into")


def _save_result(output: Path, image, bits: int | None = None, profile: bytes | None = None) -> Path | None:
    """Saves ``image`` to ``output`` (``bits`` per channel, see :func:`nst_jax.io.output_bits`; back in
    ``profile``, --keep-profile's); if that fails now (disk full), to a rescue folder, returning its path."""
    from nst_jax.io import save_image

    try:
        save_image(output, image, bits, profile)
        return None
    except OSError as e:
        rescued = save_image(_rescue_folder(output.stem) / output.name, image, bits, profile)
        print(f"nst-jax: could not write {output} ({e.strerror or e}); saved the result to {rescued}", file=sys.stderr)
        return rescued


def prepare(args: argparse.Namespace):
    """Everything a user can get wrong, checked before any optimisation: config, outputs, inputs, weights."""
    from nst_jax.checkpoint import CHECKPOINT_FILES, KIND
    from nst_jax.files import check_output_folder
    from nst_jax.io import check_output_image, load_image, load_masks
    from nst_jax.weights import load_params

    bits = getattr(args, "bits", None)
    output = check_output_image(args.output, bits=bits)  # format, bits, folder, not a folder: now, not after the run
    side_outputs = []
    if getattr(args, "save_inputs", False):
        side_outputs = [output.with_name(f"{output.stem}.{name}{output.suffix}") for name in ("content", "style")]
    for side in side_outputs:
        check_output_image(side, "--save-inputs", bits)
    resume = getattr(args, "resume", None)
    checkpoint = _checkpoint_path(output)  # written on Ctrl-C by every command that optimises
    if resume is None or Path(resume).absolute() != checkpoint.absolute():
        check_output_folder(checkpoint, KIND, what="checkpoint", allowed=CHECKPOINT_FILES)
    shape = None
    masks = style_masks = None
    config = _config_from(args, {"size": max(args.shape), "init": "noise"} if args.command == "texture" else {})
    if args.command == "demo":
        config = _config_from(args, DEMO_DEFAULTS)
    elif args.command == "reconstruct":
        layers = tuple(args.layers.split(","))
        config = _config_from(args, {"init": "noise"})
        which = "content_layers" if args.source == "content" else "style_layers"
        config = config.replace(**{which: layers})
    mesh = _image_mesh(args)
    _check_shapes(args, config, mesh)  # from the files' headers: nothing large is decoded or resized before this
    load = _image_loader(_proof_profile(args))  # --proof's profile is checked here, before any image is decoded
    fine_style = None
    profile: bytes | None = None
    content: typing.Any  # an image; for --dry-run's demo, only its shape (jax.ShapeDtypeStruct)
    style: list[typing.Any] | None
    if args.command == "stylize":
        content = load(args.content, config.size, what="content")
        masked = args.masks is not None
        style = [None if masked and path == "none" else load(path, config.size, what="style") for path in args.style]
        if masked:
            masks, style_masks = load_masks(args.masks, args.style_masks, content.shape[:2], style)
        elif args.style_masks:
            raise ValueError("--style-masks needs --masks")
        if args.keep_profile:  # read from the header and checked against the output now, not after the run
            from nst_jax.io import check_output_profile, embedded_profile

            profile = embedded_profile(args.content, what="content")
            check_output_profile(output, profile, bits)
        if args.fine_style:
            from nst_jax.transfer import check_fine_style

            fine_style = [load(path, config.size, what="fine-style") for path in args.fine_style]
            check_fine_style(config, content.shape[:2], fine_style, style, masks)
    elif args.command == "texture":
        shape = args.shape
        content, style = None, [load(path, config.size, what="style") for path in args.style]
    elif args.command == "reconstruct":
        image = load_image(args.image, config.size, what="image")
        if args.source == "content":
            content, style = image, None
        else:
            content, style, shape = None, [image], image.shape[:2]
    else:
        from nst_jax import samples
        from nst_jax.image import fit_long_side

        h, w = fit_long_side(DEMO_SHAPE, config.size)
        if args.dry_run:  # shapes are all a plan needs (drawing the samples takes minutes at 8192 px)
            import jax
            import numpy as np

            content = jax.ShapeDtypeStruct((h, w, 3), np.float32)
            style = [content]
        else:
            content, style = samples.village(h, w), [samples.swirls(h, w)]
    if style is not None:
        settings.check_style_blend(config, len(style))
    init = config.init if config.init in INITS else load_image(config.init, what="init")  # a path
    if resume is not None and not (Path(resume) / "run.json").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {resume!r}")
    params, _ = load_params(config.weights)
    from nst_jax import memory
    from nst_jax.transfer import check_memory, check_setup, memory_needed

    inputs = dict(params=params, init=init, shape=shape, masks=masks, style_masks=style_masks)
    check_setup(content, style, config, **inputs)
    if args.dry_run:
        final = tuple(content.shape[:2]) if content is not None else tuple(shape or ())
        needed = lambda mesh: memory_needed(content, style, config, **inputs, mesh=mesh)
        print(json.dumps(memory.plan(args.command, final, needed, mesh)))
        return None
    check_memory(content, style, config, **inputs, mesh=mesh)  # stylize checks again: near the limit, twice
    if side_outputs and style and processes.writes():  # last: a later check must not leave them behind
        from nst_jax.io import save_image

        for side, image in zip(side_outputs, (content, style[0]), strict=True):
            save_image(side, image, bits)
    return Prepared(
        content,
        style,
        init,
        params,
        config,
        output,
        shape,
        resume,
        masks,
        style_masks,
        mesh,
        fine_style=fine_style,
        profile=profile,
    )


def _image_mesh(args: argparse.Namespace):
    """The 1-D mesh of --shard-image over every device; ``None`` without it, or with one device (said once)."""
    if not getattr(args, "shard_image", False):
        return None
    import jax

    return _mesh_over("--shard-image", jax.devices())


def _mesh_over(option: str, devices):
    """A 1-D mesh over ``devices``; ``None`` with one device, said once naming ``option``."""
    from nst_jax.optim import image_mesh

    if len(devices) == 1:
        print(f"nst-jax: {option}: one device ({devices[0]}), nothing to split; running on it", file=sys.stderr)
        return None
    return image_mesh(devices)


def _check_shapes(args: argparse.Namespace, config: StyleConfig, mesh=None) -> None:
    """Checks the sizes a run will work at, from the images' headers, before any image is decoded.

    The output and style images must be large enough for the layers at every stage, and
    small enough for memory (:func:`nst_jax.memory.check_roughly`).
    """
    from nst_jax.image import fit_long_side
    from nst_jax.io import image_shape

    loaded = lambda path, what: fit_long_side(image_shape(path, what), config.size)
    styles = []
    source = None  # the content's own shape, for the size check's hint
    if args.command in ("stylize", "sweep"):
        source = image_shape(args.content, "content")
        final, content = fit_long_side(source, config.size), True
    elif args.command == "texture":
        final, content = args.shape, False
    elif args.command == "reconstruct":
        final = loaded(args.image, "image")
        content = args.source == "content"
        styles = [] if content else [final]
    else:
        final, content = fit_long_side(DEMO_SHAPE, config.size), True
    if args.command in ("stylize", "texture", "sweep"):
        styles = [loaded(p, "style") for p in args.style if not (args.command == "stylize" and p == "none")]
    elif args.command == "demo":
        styles = [final]
    if config.init not in INITS:
        if not Path(config.init).exists():
            raise ValueError(
                f"--init must be one of {', '.join(INITS)} or an image file, got {config.init!r} (no such file)"
            )
        image_shape(config.init, "init")  # a folder or a bomb: now
    from nst_jax.optim import rows_divide

    if not rows_divide(final[0], mesh):
        raise ValueError(_rows_message(args, config, final, mesh.size))
    # A dry run reports what does not fit instead.
    devices = 1 if mesh is None else mesh.size
    settings.check_shapes(
        config, final, styles, content, source=source, devices=devices, memory=not getattr(args, "dry_run", False)
    )


def _rows_message(args: argparse.Namespace, config: StyleConfig, final: tuple[int, int], devices: int) -> str:
    """Why --shard-image refuses this output size, with the nearest sizes that split evenly."""
    from nst_jax.image import fit_long_side
    from nst_jax.io import image_shape

    start = f"--shard-image: the output's {final[0]} rows do not split evenly over {devices} devices"
    if args.command == "texture":
        return f"{start}; give a height that is a multiple of {devices}"
    if args.command == "demo":
        original = DEMO_SHAPE
    else:
        original = image_shape(args.content if args.command in ("stylize", "sweep") else args.image, "image")
    rows = lambda size: fit_long_side(original, size)[0]
    below = next((s for s in range(config.size - 1, 15, -1) if rows(s) % devices == 0), None)
    above = next((s for s in range(config.size + 1, 2 * config.size + 64) if rows(s) % devices == 0), None)
    sizes = [s for s in (below, above) if s is not None]
    return f"{start}; --size {' or '.join(map(str, sizes))} gives {' or '.join(str(rows(s)) for s in sizes)} rows"


def _side_file(output: Path, what: str) -> Path:
    """Where an unfinished run's image goes, beside the output: ``OUT.interrupted.png``, ``OUT.failed.png``."""
    return output.with_name(f"{output.stem}.{what}{output.suffix}")


def run(args: argparse.Namespace, prepared: Prepared) -> int:
    """Optimises a prepared picture and writes it: only a finished result replaces the named output."""
    quiet, config, output = args.quiet, prepared.config, prepared.output
    bits, profile = getattr(args, "bits", None), prepared.profile
    import jax

    from nst_jax.checkpoint import CheckpointError
    from nst_jax.memory import MemoryLimitError
    from nst_jax.progress import LineProgress
    from nst_jax.transfer import Interrupted, stylize

    _use_persistent_compilation_cache()
    writes = processes.writes()  # several processes run one image together; process 0 writes it
    progress = LineProgress(output, config, quiet or not writes, writes)
    # Checkpoints are of one process's state (--coordinator refuses --resume and --checkpoint-every).
    checkpoint = str(_checkpoint_path(output)) if jax.process_count() == 1 else None
    try:
        result = stylize(
            prepared.content, prepared.style, config, params=prepared.params, init=prepared.init, callback=progress,
            shape=prepared.shape, checkpoint=checkpoint, resume=prepared.resume, masks=prepared.masks,
            style_masks=prepared.style_masks, mesh=prepared.mesh, fine_style=prepared.fine_style,
        )  # fmt: skip
    except (CheckpointError, MemoryLimitError) as e:  # raised before the first step: nothing lost
        print(f"nst-jax: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        if not writes:
            return 130
        # The named output is replaced only by a finished result; the unfinished one goes beside it.
        side = _side_file(output, "interrupted")
        _save_result(side, e.result.image, bits, profile)
        where = f" and a checkpoint to {e.checkpoint} (continue with --resume {e.checkpoint})" if e.checkpoint else ""
        print(
            f"\nnst-jax: interrupted at step {e.result.num_steps}; saved the image so far to {side}{where}; "
            f"{output} was not written",
            file=sys.stderr,
        )
        return 130
    if not quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    if not writes:
        return 0 if result.finite else 1
    if not result.finite:
        if result.num_steps == 0:
            print("nst-jax: the loss was not finite at the first step; nothing written", file=sys.stderr)
            return 1
        side = _side_file(output, "failed")
        _save_result(side, result.image, bits, profile)
        print(
            f"nst-jax: the loss became non-finite after step {result.num_steps}; saved the last finite image "
            f"to {side}; {output} was not written",
            file=sys.stderr,
        )
        return 1
    if _save_result(output, result.image, bits, profile) is not None:
        return 1
    if not quiet:
        print(
            f"wrote {output}: {result.num_steps} steps, {result.num_evals} evaluations, "
            f"loss {result.loss:.4e}, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


def serve(args: argparse.Namespace) -> int:
    """nst-jax serve: every check (extra installed, port free, caps sane, weights load) before it listens."""
    try:
        from nst_jax import serve
    except ImportError as e:
        raise ImportError(f"nst-jax serve needs the ui extra ({e}): pip install 'nst-jax[ui]'") from None
    from nst_jax.jobs import Limits
    from nst_jax.weights import load_params

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not 16 <= args.max_size <= 16384:
        raise ValueError(f"--max-size must be in 16..16384, got {args.max_size}")
    if not 0 < args.max_upload_mb <= 1024:
        raise ValueError(f"--max-upload-mb must be in (0, 1024], got {args.max_upload_mb}")
    if serve.allowed_hosts_for(args.host) is None:
        print(
            f"nst-jax: warning: --host {args.host} makes the page reachable from other machines; anyone who reaches "
            f"port {args.port} can upload images and run them on this machine (there is no login)",
            file=sys.stderr,
        )
    sock = serve.bind(args.host, args.port)
    try:
        # The runs happen in a child process, which takes the accelerator; this one only serves,
        # so it stays on the CPU (a GPU held here too would leave the child a quarter of its memory).
        import jax

        jax.config.update("jax_platforms", "cpu")
        params, _ = load_params(args.weights)
        limits = Limits(max_size=args.max_size, max_upload_bytes=int(args.max_upload_mb * 2**20))

        def ready(running) -> None:
            serve.print_ready(running)
            if args.open:
                import webbrowser

                webbrowser.open(running.url)

        _use_persistent_compilation_cache()
        try:
            serve.serve(params, args.host, args.port, limits, sock=sock, ready=ready)
        except KeyboardInterrupt:  # Ctrl-C is how a server stops: uvicorn re-raises it once it has shut down
            pass
    finally:
        sock.close()
    print("nst-jax: stopped; its uploads and results are removed", file=sys.stderr)
    return 0


def _checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".ckpt")


@dataclasses.dataclass(frozen=True)
class PreparedVideo:
    """A clip that passed every check: what :func:`run_video` needs."""

    frames: Any  # [T, h, w, 3] the clip's frames at --size
    fps: float  # frames per second of the output
    audio_from: str | None  # the input video whose audio is copied into the output, or None
    style: list[Any]  # the style images
    fine_style: list[Any] | None  # --fine-style's images (scale control), or None
    params: Any
    config: StyleConfig
    video: Any  # nst_jax.video.VideoConfig
    output: Path  # the named output (a video file, a GIF or a folder), written only when every frame is done
    partial: Path  # OUT.partial: the finished frames so far (kept on Ctrl-C, read by --resume)
    finished: Any  # frames read back from OUT.partial with --resume, or None
    mesh: Any = None  # --shard-frames' mesh over this process's devices, or None


def _partial_folder(output: Path) -> Path:
    return output.with_name(f"{output.name}.partial")


def _video_config_from(args: argparse.Namespace):
    from nst_jax.video import VideoConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(VideoConfig) if f.name in args}
    return VideoConfig(**given)


def prepare_video(args: argparse.Namespace):
    """Everything ``nst-jax video`` can get wrong, checked before any frame is optimised."""
    import numpy as np

    from nst_jax import clips, memory
    from nst_jax.files import check_output_folder
    from nst_jax.image import fit_long_side
    from nst_jax.io import image_shape, load_image
    from nst_jax.video import window_that_fits
    from nst_jax.weights import load_params

    config = _config_from(args, {})
    video = _video_config_from(args)
    output = Path(args.output)
    clips.check_output_clip(output)
    partial = _partial_folder(output)
    check_output_folder(partial, clips.KIND + "-partial", what="the partial frames' folder")
    info = clips.clip_info(args.input, "input")
    span = clips.check_span(info.frames, info.shape, config.size, args.start, args.end, "input")
    final = fit_long_side(info.shape, config.size)
    styles = [fit_long_side(image_shape(p, "style"), config.size) for p in args.style]
    fine = [fit_long_side(image_shape(p, "fine-style"), config.size) for p in args.fine_style or []]
    settings.check_shapes(config, final, styles + fine, True, source=info.shape, memory=not args.dry_run)
    settings.check_style_blend(config, len(args.style))
    if args.fps is not None and not 0 < args.fps <= clips.MAX_FPS:
        raise ValueError(f"--fps must be in (0, {clips.MAX_FPS:g}], got {args.fps}")
    proof = _proof_profile(args)
    mesh = _frames_mesh(args, video.window)
    devices = 1 if mesh is None else mesh.size
    window = window_that_fits(config, final, min(video.window, len(span)), devices)
    if args.dry_run:
        free = memory.limit_per_device(False)
        plan = {"command": "video", "frames": len(span), "shape": list(final), "window": window, "passes": video.passes,
                "devices": devices, "bytes_per_device": int(window / devices * memory.rough_bytes(*final)),
                "limit_bytes": free}  # fmt: skip
        print(json.dumps(plan))
        return None
    finished = None
    if args.resume:
        if not (partial / "frame_00001.png").is_file():
            raise FileNotFoundError(f"--resume: no finished frames in {str(partial)!r}")
        files = sorted(partial.glob("frame_*.png"))
        finished = [load_image(f, what=f"--resume frame {f.name}") for f in files[: len(span)]]
        if any(f.shape[:2] != tuple(final) for f in finished):
            raise ValueError(f"--resume: the frames in {str(partial)!r} are not {final[1]}x{final[0]}: other settings")
    load = _image_loader(proof)
    style = [load(p, config.size, what="style") for p in args.style]
    fine_style = [load(p, config.size, what="fine-style") for p in args.fine_style] if args.fine_style else None
    clip = clips.read_clip(args.input, config.size, span.start, span.stop, "input")
    frames = clip.frames
    if proof is not None:  # every frame in the printer's colours too, as the style images
        from nst_jax.io import soft_proof

        frames = soft_proof(frames, proof)
    whole = span.start == 0 and (args.end is None or args.end >= info.frames)
    audio_from = str(args.input) if info.audio and whole else None
    if info.audio and not whole and not args.quiet:
        print("nst-jax: the audio is not kept for part of a clip (--start/--end)", file=sys.stderr)
    params, _ = load_params(config.weights)
    fps = args.fps if args.fps is not None else clip.fps
    return PreparedVideo(frames, fps, audio_from, style, fine_style, params, config, video, output, partial,
                         None if finished is None else np.stack(finished), mesh)  # fmt: skip


def _frames_mesh(args: argparse.Namespace, window: int):
    """--shard-frames' 1-D mesh over this process's devices (``None`` without it, or with one device: said once)."""
    if not args.shard_frames:
        return None
    import jax

    devices = jax.local_devices()
    if len(devices) > 1 and window % len(devices):
        raise ValueError(
            f"--shard-frames splits each window's frames over {len(devices)} devices: --window must be a multiple "
            f"of {len(devices)}, got {window}"
        )
    return _mesh_over("--shard-frames", devices)


def _remove_partial(partial: Path) -> None:
    """Removes the finished frames this command wrote to OUT.partial, its marker, and the folder once empty.

    Only our own names go: a file of the user's put there stays, and so does the folder then.
    """
    import contextlib

    from nst_jax.clips import is_frame_name
    from nst_jax.files import MARKER

    with contextlib.suppress(OSError):
        for entry in os.scandir(partial):
            if is_frame_name(entry.name) or entry.name == MARKER:
                os.unlink(entry.path)
        partial.rmdir()


def run_video(args: argparse.Namespace, prepared: PreparedVideo) -> int:
    """Styles the clip window by window, keeping finished frames in OUT.partial; writes OUT when all are done."""
    from nst_jax import clips
    from nst_jax.files import write_marker
    from nst_jax.io import save_image
    from nst_jax.video import VideoInterrupted, stylize_video

    _use_persistent_compilation_cache()
    partial, count = prepared.partial, len(prepared.frames)
    partial.mkdir(parents=True, exist_ok=True)
    write_marker(partial, clips.KIND + "-partial")

    def keep(span, images):
        for index, image in zip(span, images, strict=True):
            save_image(partial / clips.frame_name(index), image)
        if not args.quiet:
            which = f"frame {span.stop}" if len(span) == 1 else f"frames {span.start + 1}-{span.stop}"
            print(f"nst-jax: {which} of {count} done", file=sys.stderr)

    def passed(number, images):
        if not args.quiet:
            print(f"nst-jax: pass {number} of {prepared.video.passes} done", file=sys.stderr)

    try:
        result = stylize_video(
            prepared.frames, prepared.style, prepared.config, prepared.video, params=prepared.params,
            fine_style=prepared.fine_style, finished=prepared.finished, on_window=keep, on_pass=passed,
            mesh=prepared.mesh,
        )  # fmt: skip
    except VideoInterrupted as e:
        print(
            f"\nnst-jax: interrupted after {len(e.result.frames)} of {count} frames of the first pass; the finished "
            f"frames are in {partial} (continue with --resume, which runs any later passes again); "
            f"{prepared.output} was not written",
            file=sys.stderr,
        )
        return 130
    note = clips.write_clip(prepared.output, result.frames, prepared.fps, prepared.audio_from)
    _remove_partial(partial)
    if note and not args.quiet:
        print(f"nst-jax: {note}", file=sys.stderr)
    if not args.quiet:
        error = float(result.temporal_error[1:].mean()) if count > 1 else 0.0
        cuts = f", cuts before frames {', '.join(str(c + 1) for c in result.cuts)}" if result.cuts else ""
        print(
            f"wrote {prepared.output}: {count} frames, {result.evaluations:.0f} full-size evaluations per frame, "
            f"window {result.window}, mean change along the flow {error:.4f}{cuts}, {result.seconds:.1f} s "
            f"(flow {result.flow_seconds:.1f} s)",
            file=sys.stderr,
        )
    return 0
