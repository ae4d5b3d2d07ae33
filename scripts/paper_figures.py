"""Re-makes the figures of Gatys et al. (2015/2016) as contact sheets.

Figure 1: reconstructions from white noise: the content from relu1_1 .. relu5_1 (top row) and
the style from the nested sets relu1_1, relu1_1..relu2_1, ..., relu1_1..relu5_1 (bottom row).
Figure 2 and 3 are one batched sweep each. Figure 2: one photograph rendered in several
styles (top row: the styles; bottom row: results). Figure 3: style layer sets (conv1_1,
+conv2_1, ..., +conv5_1) down, alpha/beta 1e-5..1e-2 across.

The images are not part of the project; pass their paths, e.g. from ``../shared/images``:

    python scripts/paper_figures.py 1 --content ../shared/images/tubingen.jpg \
        --styles ../shared/images/starry_night.jpg -o figures/fig1
    python scripts/paper_figures.py 2 --content ../shared/images/tubingen.jpg \\
        --styles ../shared/images/{shipwreck,starry_night,the_scream,seated-nude}.jpg -o figures/fig2
    python scripts/paper_figures.py 3 --content ../shared/images/tubingen.jpg \\
        --styles ../shared/images/the_scream.jpg -o figures/fig3

"alpha/beta" is content_weight / style_weight in this library's normalisation (see
docs/loss.md); each member's paper alpha and beta*w_l are in sweep.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from nst_jax import StyleConfig, load_image, load_params
from nst_jax.image import resize
from nst_jax.io import contact_sheet, save_image
from nst_jax.sweeps import save_sweep, sweep

LAYER_SETS = [("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")[:n] for n in range(1, 6)]
RATIOS = [1.0, 0.1, 0.03, 0.01]  # content_weight / style_weight on the relative terms (default 1/36)


def _progress(p) -> None:
    print(
        f"  batch {p.batch + 1}/{p.num_batches}: steps {p.steps.min()}-{p.steps.max()}, {p.seconds:.0f} s",
        file=sys.stderr,
    )


def figure1(args, params) -> None:
    from nst_jax import stylize

    config = StyleConfig(size=args.size, num_steps=args.steps, init="noise")
    content = load_image(args.content, args.size)
    style = load_image(args.styles[0], args.size)
    tiles = []
    for layers in LAYER_SETS:
        result = stylize(content, None, config.replace(content_layers=(layers[-1],)), params=params)
        tiles.append(result.image)
        print(f"  content from {layers[-1]}: loss {result.loss:.3g}", file=sys.stderr)
    for layers in LAYER_SETS:
        result = stylize(None, style, config.replace(style_layers=layers), params=params, shape=content.shape[:2])
        tiles.append(result.image)
        print(f"  style from {'+'.join(layers)}: loss {result.loss:.3g}", file=sys.stderr)
    columns = [layers[-1].replace("relu", "conv") for layers in LAYER_SETS]
    sheet = contact_sheet(tiles, ["content", "style (up to)"], columns, title="Figure 1: reconstructions")
    print("wrote", save_image(Path(args.output) / "figure1.png", sheet))


def figure2(args, params) -> None:
    config = StyleConfig(size=args.size, num_steps=args.steps)
    content = load_image(args.content, args.size)
    styles = {Path(p).stem: load_image(p, args.size) for p in args.styles}
    result = sweep(
        content, None, config, {"style": styles}, params=params, batch_size=args.batch_size, callback=_progress
    )
    save_sweep(args.output, result, content=args.content, styles=args.styles)
    h, w = content.shape[:2]
    tops = [content] + [np.asarray(resize(s, (h, w))) for s in styles.values()]
    bottoms = [content, *result.images]
    sheet = contact_sheet(tops + bottoms, ["style", "result"], ["photograph", *styles], title="Figure 2")
    print("wrote", save_image(Path(args.output) / "figure2.png", sheet))


def figure3(args, params) -> None:
    config = StyleConfig(size=args.size, num_steps=args.steps)
    content = load_image(args.content, args.size)
    style = load_image(args.styles[0], args.size)
    axes = {"style_layers": LAYER_SETS, "ratio": RATIOS}
    result = sweep(content, style, config, axes, params=params, batch_size=args.batch_size, callback=_progress)
    save_sweep(args.output, result, content=args.content, style=args.styles[0])
    rows = ["conv1_1"] + [f"conv1_1..{layers[-1].replace('relu', 'conv')}" for layers in LAYER_SETS[1:]]
    columns = [f"alpha/beta {r:g}" for r in RATIOS]
    sheet = contact_sheet(list(result.images), rows, columns, title=f"Figure 3: {Path(args.styles[0]).stem}")
    print("wrote", save_image(Path(args.output) / "figure3.png", sheet))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", type=int, choices=(1, 2, 3))
    parser.add_argument("--content", required=True)
    parser.add_argument("--styles", nargs="+", required=True)
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    params, _ = load_params()
    {1: figure1, 2: figure2, 3: figure3}[args.figure](args, params)


if __name__ == "__main__":
    main()
