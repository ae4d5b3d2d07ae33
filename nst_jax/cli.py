"""The ``nst-jax`` command: argument parsing built from :class:`~nst_jax.config.StyleConfig`; nothing else.

User mistakes (a missing or unreadable input, a bad option value) print one
line to stderr and exit 2, before any output file exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pickle
import sys
import types
import typing
from pathlib import Path

from nst_jax.config import INITS, StyleConfig

# Flags whose name is not simply the field's name with dashes.
_FLAG_NAMES = {"num_steps": "--steps"}
# Defaults of `nst-jax demo`: small enough for a laptop CPU in a few minutes.
DEMO_DEFAULTS = {"size": 256}


class _UsageError(Exception):
    """A user mistake: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise _UsageError(message)


def _base_type(annotation: str):
    hint = typing.get_type_hints(StyleConfig)[annotation]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return lambda text, item=item: _comma_list(text, item)
    return hint


def _comma_list(text: str, item):
    try:
        return tuple(item(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {item.__name__}, got {text!r}") from None


def _add_config_arguments(parser: argparse.ArgumentParser, defaults: dict, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(StyleConfig):
        if f.name in skip:
            continue
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        default = defaults.get(f.name, f.default)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag,
            dest=f.name,
            type=_base_type(f.name),
            default=argparse.SUPPRESS,
            choices=f.metadata.get("choices"),
            metavar=None if f.metadata.get("choices") else f.name.upper(),
            help=f"{f.metadata['help']} (default: {shown})",
        )
        if f.name == "padding":
            parser.add_argument(
                "--tileable", dest="padding", action="store_const", const="circular", default=argparse.SUPPRESS,
                help="make the output a seamless tile (same as --padding circular: wrap-around convolutions, "
                "pooling and TV)",
            )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nst-jax", description="Neural style transfer (Gatys et al.) in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    stylize = commands.add_parser("stylize", help="render CONTENT in the style of STYLE")
    stylize.add_argument("content", help="content image")
    stylize.add_argument("style", nargs="+", help="style image(s); several are blended (--style-blend)")
    stylize.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, ...)")
    stylize.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    stylize.add_argument("--resume", metavar="DIR", help="continue from a checkpoint (OUT.ckpt of an earlier run)")
    stylize.add_argument(
        "--masks", metavar="IMAGE",
        help="spatial control: a mask image of flat colours, one region per STYLE (darkest colour -> first "
        "STYLE); a STYLE of 'none' leaves its region unstyled",
    )  # fmt: skip
    stylize.add_argument(
        "--style-masks", nargs="+", metavar="IMAGE",
        help="with --masks: one mask per STYLE, white where its Gram matrices are taken from",
    )  # fmt: skip
    _add_config_arguments(stylize, {})
    demo = commands.add_parser("demo", help="stylise the built-in village with the built-in swirls (offline)")
    demo.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, ...)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    demo.add_argument("--save-inputs", action="store_true", help="also write the demo's content and style images")
    _add_config_arguments(demo, DEMO_DEFAULTS)
    texture = commands.add_parser(
        "texture", help="synthesise a texture from STYLE alone (Gatys et al. 2015), any output size"
    )
    texture.add_argument("style", nargs="+", help="style image(s)")
    texture.add_argument("-o", "--output", required=True, help="output image")
    texture.add_argument("--size", dest="shape", type=_shape, default=(512, 512), metavar="WxH", help="output size")
    texture.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    texture.add_argument("--resume", metavar="DIR", help="continue from a checkpoint (OUT.ckpt of an earlier run)")
    _add_config_arguments(texture, {"init": "noise"}, skip=("size",))
    reconstruct = commands.add_parser(
        "reconstruct", help="reconstruct an image from its features at some layers (the paper's Figure 1)"
    )
    reconstruct.add_argument("image", help="the image to reconstruct")
    reconstruct.add_argument("-o", "--output", required=True, help="output image")
    reconstruct.add_argument("--from", dest="source", choices=("content", "style"), default="content",
                             help="content: match feature maps; style: match Gram matrices (a texture)")  # fmt: skip
    reconstruct.add_argument("--layers", required=True, help="comma-separated layers, e.g. relu4_2 or relu1_1,relu2_1")
    reconstruct.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_config_arguments(reconstruct, {"init": "noise"}, skip=("content_layers", "style_layers"))
    sweep = commands.add_parser(
        "sweep",
        help="optimise one image per combination of swept settings, batched in one compiled program",
        description=(
            "Writes OUTDIR/NNN_<settings>.png per member, OUTDIR/sweep.json and the labelled contact sheet "
            "OUTDIR/grid.png (first --vary axis down, the others across). Several STYLE images sweep the style."
        ),
    )
    sweep.add_argument("content", help="content image")
    sweep.add_argument("style", nargs="+", help="style image(s); several are swept (one member per style)")
    sweep.add_argument("-o", "--output", required=True, help="output directory")
    sweep.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help=(
            "a swept axis (repeatable): content_weight, style_weight, ratio (content/style weight), tv_weight, "
            "seed (with --init noise), style_layers (sets joined by +: relu1_1,relu1_1+relu2_1), "
            "layer_weights (vectors joined by ':')"
        ),
    )
    sweep.add_argument("--zip", action="store_true", help="pair the axes' values (equal lengths) instead of crossing")
    sweep.add_argument("--batch-size", type=int, default=None, help="members per compiled batch (default: what fits)")
    sweep.add_argument("--extension", default=".png", help="image format of the members (default: .png)")
    sweep.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_config_arguments(sweep, {})
    weights = commands.add_parser("weights", help="show which VGG-19 weights are loaded, from where")
    weights.add_argument("--weights", default=None, help="a weight file (any format) or orbax directory")
    convert = commands.add_parser(
        "convert",
        help="convert a VGG-19 weight file (torch, torchvision, caffe, keras, matconvnet) into an orbax checkpoint",
    )
    convert.add_argument("source", help="the weight file (its format is detected from its content)")
    convert.add_argument("-o", "--output", required=True, help="output directory (an orbax checkpoint)")
    convert.add_argument("--format", default=None, help="override the detected format: " + ", ".join(_formats()))
    normalize = commands.add_parser(
        "normalize",
        help="rescale a VGG-19 so every filter's mean activation over some images is 1 (Gatys et al.)",
    )
    normalize.add_argument("source", help="a weight file (any format) or orbax directory")
    normalize.add_argument("-o", "--output", required=True, help="output directory (an orbax checkpoint)")
    normalize.add_argument("--images", required=True, help="directory of images to average the activations over")
    normalize.add_argument("--size", type=int, default=256, help="long side the images are resized to (default 256)")
    normalize.add_argument("--pooling", default="avg", choices=("avg", "max"), help="pooling while measuring")
    return parser


def _config_from(args: argparse.Namespace, defaults: dict) -> StyleConfig:
    values = {**defaults, **{f.name: getattr(args, f.name) for f in dataclasses.fields(StyleConfig) if f.name in args}}
    config = StyleConfig(**values)
    # With --scales the last scale is the output's long side (images load at it).
    return config.replace(size=config.scales[-1]) if config.scales else config


class _Progress:
    """Prints loss, speed and ETA between chunks; saves intermediate images when asked."""

    def __init__(self, output: Path, config: StyleConfig, quiet: bool):
        self.output, self.config, self.quiet = output, config, quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, progress) -> None:
        from nst_jax.io import save_image

        last_stage = progress.stage == progress.num_stages - 1  # intermediate saves are at the output's size
        if self.config.save_every and last_stage and progress.step % self.config.save_every == 0 and progress.step:
            save_image(
                self.output.with_name(f"{self.output.stem}.step{progress.step:05d}{self.output.suffix}"), progress.image
            )
        if self.quiet:
            return
        rate = progress.step / progress.seconds if progress.seconds > 0 else 0.0
        remaining = (progress.num_steps - progress.step) / rate if rate > 0 else 0.0
        stage = ""
        if progress.num_stages > 1:
            stage = f"stage {progress.stage + 1}/{progress.num_stages} {max(progress.image.shape[:2])} px  "
        line = (
            f"{stage}step {progress.step:>5}/{progress.num_steps}  loss {progress.loss:.4e}  "
            f"{rate:5.2f} steps/s  ETA {int(remaining) // 60}:{int(remaining) % 60:02d}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


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


def _formats() -> tuple[str, ...]:
    from nst_jax.converters import FORMATS

    return FORMATS


def _convert(args) -> int:
    from nst_jax.converters import convert
    from nst_jax.weights import save_params, sha256_of

    source = Path(args.source)
    if not source.is_file():
        raise FileNotFoundError(f"`source`: no such file: {str(source)!r}")
    params, used = convert(source, args.format)
    out = save_params(params, args.output, source=str(source), sha256=sha256_of(source), format=used)
    print(f"wrote {out}: {used} weights as an orbax checkpoint (preprocess, conv1_1..conv5_4)", file=sys.stderr)
    return 0


def _normalize(args) -> int:
    from nst_jax.converters.normalize import normalize_params
    from nst_jax.io import load_image
    from nst_jax.weights import load_params, save_params

    folder = Path(args.images)
    if not folder.is_dir():
        raise FileNotFoundError(f"`--images`: no such directory: {str(folder)!r}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = []
    for path in paths:
        try:
            images.append(load_image(path, args.size))
        except ValueError:
            continue  # not an image
    if not images:
        raise ValueError(f"`--images`: no readable images in {str(folder)!r}")
    params, info = load_params(args.source)
    normalised, scales = normalize_params(params, images, pooling=args.pooling)
    out = save_params(
        normalised, args.output, source=info.source, sha256=info.sha256, format="normalized",
        images=len(images), size=args.size, pooling=args.pooling,
        mean_scale={layer: float(s.mean()) for layer, s in scales.items()},
    )  # fmt: skip
    print(f"wrote {out}: normalised over {len(images)} images", file=sys.stderr)
    return 0


def _sweep_axis(text: str) -> tuple[str, list]:
    """``NAME=V1,V2`` -> (name, values) for :func:`nst_jax.sweep.sweep`."""
    from nst_jax.sweep import SWEEP_AXES

    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not values.strip():
        raise _UsageError(f"--vary must look like NAME=V1,V2,..., got {text!r}")
    if name not in SWEEP_AXES or name == "style":
        valid = ", ".join(a for a in SWEEP_AXES if a != "style")
        raise _UsageError(
            f"--vary has unknown axis {name!r}; valid axes are {valid} (give several STYLE images to sweep styles)"
        )
    parts = [part.strip() for part in values.split(",") if part.strip()]
    try:
        if name == "seed":
            return name, [int(p) for p in parts]
        if name == "style_layers":
            return name, [tuple(layer.strip() for layer in p.split("+")) for p in parts]
        if name == "layer_weights":
            return name, [tuple(float(w) for w in p.split(":")) for p in parts]
        return name, [float(p) for p in parts]
    except ValueError:
        raise _UsageError(f"--vary {name}: cannot read {values!r} as {name} values") from None


def _prepare_sweep(args: argparse.Namespace):
    from nst_jax.io import load_image, output_format
    from nst_jax.sweep import check_axes
    from nst_jax.weights import load_params

    output_format(Path("x" + args.extension))
    config = _config_from(args, {})
    axes = dict(_sweep_axis(text) for text in args.vary)
    if len(axes) != len(args.vary):
        raise _UsageError("--vary names an axis twice")
    content = load_image(args.content, config.size)
    styles = [load_image(path, config.size) for path in args.style]
    if len(styles) > 1:
        axes["style"] = {
            _style_label(path, i, args.style): image
            for i, (path, image) in enumerate(zip(args.style, styles, strict=True))
        }
    if not axes:
        raise _UsageError("nothing to sweep: give --vary NAME=V1,V2,... or several STYLE images")
    check_axes(config, axes, product=not args.zip)
    if args.batch_size is not None and args.batch_size < 1:
        raise _UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    params, _ = load_params(config.weights)
    return content, styles[0] if len(styles) == 1 else None, axes, params, config, Path(args.output)


def _style_label(path: str, index: int, paths: list[str]) -> str:
    stem = Path(path).stem
    return stem if [Path(p).stem for p in paths].count(stem) == 1 else f"{stem}{index}"


class _SweepProgress:
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


def _run_sweep(args, content, style, axes, params, config: StyleConfig, output: Path) -> int:
    from nst_jax.sweep import MemoryLimitError, save_sweep, sweep

    _use_persistent_compilation_cache()
    try:
        result = sweep(
            content, style, config, axes, params=params, product=not args.zip, batch_size=args.batch_size,
            callback=_SweepProgress(args.quiet),
        )  # fmt: skip
    except MemoryLimitError as e:
        print(f"nst-jax: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    path = save_sweep(output, result, config, extension=args.extension, content=args.content, style=args.style)
    if not args.quiet:
        print(
            f"wrote {len(result.settings)} images, {output / 'grid.png'} and {path}: batches of "
            f"{result.batch_size}, {result.iterations} batched evaluations, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


def _shape(text: str) -> tuple[int, int]:
    """``WxH`` (or one number for a square) -> ``(height, width)``."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 512x384) or one number, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT with both sides >= 16, got {text!r}")
    return parts[1], parts[0]


def _prepare(args: argparse.Namespace):
    """Everything a user can get wrong, checked before any optimisation: config, inputs, weights."""
    from nst_jax.io import load_image, output_format
    from nst_jax.weights import load_params

    output = Path(args.output)
    output_format(output)  # a bad extension fails now, not after the optimisation
    shape = None
    masks = style_masks = None
    if args.command == "stylize":
        config = _config_from(args, {})
        content = load_image(args.content, config.size)
        masked = args.masks is not None
        style = [None if masked and path == "none" else load_image(path, config.size) for path in args.style]
        if masked:
            masks, style_masks = _masks(args, content, style)
        elif args.style_masks:
            raise _UsageError("--style-masks needs --masks")
    elif args.command == "texture":
        shape = args.shape
        config = _config_from(args, {"size": max(shape), "init": "noise"})
        content, style = None, [load_image(path, config.size) for path in args.style]
    elif args.command == "reconstruct":
        layers = tuple(args.layers.split(","))
        config = _config_from(args, {"init": "noise"})
        image = load_image(args.image, config.size)
        if args.source == "content":
            config = config.replace(content_layers=layers)
            content, style = image, None
        else:
            config = config.replace(style_layers=layers)
            content, style, shape = None, [image], image.shape[:2]
    else:
        from nst_jax import samples
        from nst_jax.image import fit_long_side
        from nst_jax.io import save_image

        config = _config_from(args, DEMO_DEFAULTS)
        h, w = fit_long_side((384, 512), config.size)
        content, style = samples.village(h, w), [samples.swirls(h, w)]
        if args.save_inputs:
            save_image(output.with_name(f"{output.stem}.content{output.suffix}"), content)
            save_image(output.with_name(f"{output.stem}.style{output.suffix}"), style[0])
    if style is not None and config.style_blend is not None and len(config.style_blend) != len(style):
        raise ValueError(f"`style_blend` has {len(config.style_blend)} weights for {len(style)} style images")
    init = config.init if config.init in INITS else load_image(config.init)  # a path; errors name it
    resume = getattr(args, "resume", None)
    if resume is not None and not (Path(resume) / "run.json").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {resume!r}")
    params, _ = load_params(config.weights)
    _check_memory(content, style, init, params, config, shape, masks, style_masks)
    return content, style, init, params, config, output, shape, resume, masks, style_masks


# XLA's memory analysis of the default loop: 3.18 kB per output pixel at 2048x2048, 3.26 kB at
# 1024x1024 (fixed costs weigh more at small sizes). Only a quick first guess: above half
# the free memory the exact analysis decides.
_ROUGH_BYTES_PER_PIXEL = 3200
# Peak RSS over XLA's analysis, measured: 14.8 GiB vs 12.4 GiB for a 2048x2048 stylisation
# (the runtime, Python, images, targets and the allocator's slack come on top of the loop).
_RSS_OVER_ANALYSIS = 1.25


def _check_memory(content, style, init, params, config: StyleConfig, shape, masks, style_masks) -> None:
    """Refuses, before the optimisation allocates anything, an output that cannot fit in memory."""
    import jax

    from nst_jax.stylize import memory_needed
    from nst_jax.sweep import available_memory

    h, w = shape if content is None else content.shape[:2]
    free = available_memory(jax.devices()[0])
    if free is None or _RSS_OVER_ANALYSIS * _ROUGH_BYTES_PER_PIXEL * h * w < free / 2:
        return
    analysis = memory_needed(
        content, style, config, params=params, init=init, shape=shape, masks=masks, style_masks=style_masks
    )
    needed = _RSS_OVER_ANALYSIS * analysis
    if needed > free:
        fits = int(max(h, w) * math.sqrt(free / needed))
        raise ValueError(
            f"`size` {config.size} ({h}x{w} output) needs about {needed / 2**30:.1f} GiB, more than the "
            f"{free / 2**30:.1f} GiB of memory available; the largest size that fits is about {fits}"
        )


def _masks(args, content, styles):
    """Region masks of the output and the optional per-style masks, from the mask images."""
    import jax
    import numpy as np

    from nst_jax.image import region_masks, resize
    from nst_jax.io import load_image

    labels = load_image(args.masks)
    # Nearest neighbour: resampling must not invent colours between the regions'.
    labels = np.asarray(jax.image.resize(labels, (*content.shape[:2], 3), "nearest"))
    masks = region_masks(labels, len(styles))
    if not args.style_masks:
        return masks, None
    if len(args.style_masks) != len(styles):
        raise _UsageError(f"--style-masks has {len(args.style_masks)} images for {len(styles)} STYLE images")
    style_masks = []
    for path, style in zip(args.style_masks, styles, strict=True):
        grey = load_image(path).mean(axis=-1)
        style_masks.append(None if style is None else np.asarray(resize(grey[..., None], style.shape[:2]))[..., 0])
    return masks, style_masks


def _run(
    content, style, init, params, config: StyleConfig, output: Path, shape, resume, masks, style_masks, quiet: bool
) -> int:
    from nst_jax.io import save_image
    from nst_jax.stylize import Interrupted, stylize

    _use_persistent_compilation_cache()
    progress = _Progress(output, config, quiet)
    checkpoint = str(output.with_name(output.name + ".ckpt"))
    try:
        result = stylize(
            content, style, config, params=params, init=init, callback=progress, shape=shape,
            checkpoint=checkpoint, resume=resume, masks=masks, style_masks=style_masks,
        )  # fmt: skip
    except Interrupted as e:
        save_image(output, e.result.image)
        where = f" and a checkpoint to {e.checkpoint} (continue with --resume {e.checkpoint})" if e.checkpoint else ""
        print(f"\nnst-jax: interrupted at step {e.result.num_steps}; saved {output}{where}", file=sys.stderr)
        return 130
    if not quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    save_image(output, result.image)
    if not result.finite:
        print(
            f"nst-jax: the loss became non-finite after step {result.num_steps}; "
            f"saved the last finite image to {output}",
            file=sys.stderr,
        )
        return 1
    if not quiet:
        print(
            f"wrote {output}: {result.num_steps} steps, {result.num_evals} evaluations, "
            f"loss {result.loss:.4e}, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


# What a user's mistake raises: reported in one line, exit status 2. Anything raised once
# the optimisation has started is a bug and keeps its traceback.
_USER_ERRORS = (
    _UsageError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError, pickle.UnpicklingError, ImportError,
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nst-jax``; returns the exit status."""
    try:
        try:
            args = _build_parser().parse_args(argv)
            if args.command == "convert":
                return _convert(args)
            if args.command == "normalize":
                return _normalize(args)
            if args.command == "weights":
                from nst_jax.weights import describe, load_params

                _, info = load_params(args.weights)
                print(describe(info))
                return 0
            prepared = _prepare_sweep(args) if args.command == "sweep" else _prepare(args)
        except _USER_ERRORS as e:
            print(f"nst-jax: error: {e}", file=sys.stderr)
            return 2
        if args.command == "sweep":
            return _run_sweep(args, *prepared)
        return _run(*prepared, quiet=args.quiet)
    except KeyboardInterrupt:
        print("\nnst-jax: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
