"""Contact sheets of the features beyond the seed paper, from images given on the command line.

texture:  textures synthesised from the style at two output sizes (style only, from noise)
colour:   no preservation / luminance-only / histogram (Cholesky) / histogram (eigen)
blend:    two styles mixed 1:0, 0.7:0.3, 0.3:0.7, 0:1 (Gram targets mixed)
scale:    style_scale 0.5, 1, 2
tile:     a seamless texture (--tileable) and its 2x2 tiling

    python scripts/feature_figures.py colour --content ../shared/images/tubingen.jpg \\
        --styles ../shared/images/the_scream.jpg -o figures/colour
    python scripts/feature_figures.py blend --content ../shared/images/tubingen.jpg \\
        --styles ../shared/images/starry_night.jpg ../shared/images/the_scream.jpg -o figures/blend

Without --content/--styles it uses the project's own drawn images (nst_jax.samples), the
only figures the manual may show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nst_jax import StyleConfig, load_image, load_params, samples, stylize
from nst_jax.image import fit_long_side
from nst_jax.io import contact_sheet, save_image


def _run(label, content, style, config, params, **kwargs):
    result = stylize(content, style, config, params=params, **kwargs)
    print(f"  {label}: loss {result.loss:.3g}, {result.seconds:.0f} s", file=sys.stderr)
    return result.image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=("texture", "colour", "blend", "scale", "tile"))
    parser.add_argument("--content")
    parser.add_argument("--styles", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    params, _ = load_params()
    h, w = fit_long_side((384, 512), args.size)
    content = load_image(args.content, args.size) if args.content else samples.village(h, w)
    styles = [load_image(p, args.size) for p in args.styles] if args.styles else [samples.swirls(h, w)]
    config = StyleConfig(size=args.size, num_steps=args.steps)
    if args.figure == "texture":
        tiles = [
            _run("texture", None, styles[0], config, params, shape=shape)
            for shape in ((args.size // 2, args.size // 2), (args.size // 2, args.size))
        ]
        rows, columns = ["texture"], ["square", "wide"]
    elif args.figure == "colour":
        modes = [("none", "cholesky"), ("luminance", "cholesky"), ("histogram", "cholesky"), ("histogram", "eigen")]
        tiles = [
            _run(f"{m}/{c}", content, styles[0], config.replace(preserve_colour=m, colour_match=c), params)
            for m, c in modes
        ]
        rows, columns = [""], ["transfer", "luminance only", "histogram (Cholesky)", "histogram (eigen)"]
    elif args.figure == "blend":
        if len(styles) < 2:
            styles = [styles[0], samples.swirls(h, w)[:, ::-1]]
        blends = [(1.0, 0.0), (0.7, 0.3), (0.3, 0.7), (0.0, 1.0)]
        tiles = [_run(f"blend {b}", content, styles[:2], config.replace(style_blend=b), params) for b in blends]
        rows, columns = [""], [f"{a:g} : {b:g}" for a, b in blends]
    elif args.figure == "tile":
        import numpy as np

        side = args.size // 2
        tile = _run("tile", None, styles[0], config.replace(padding="circular"), params, shape=(side, side))
        plain = _run("plain", None, styles[0], config, params, shape=(side, side))
        tiles = [np.tile(plain, (2, 2, 1)), np.tile(tile, (2, 2, 1))]
        rows, columns = [""], ["2x2 tiling, zeros padding", "2x2 tiling, --tileable"]
    else:
        scales = (0.5, 1.0, 2.0)
        tiles = [_run(f"scale {s}", content, styles[0], config.replace(style_scale=s), params) for s in scales]
        rows, columns = [""], [f"style_scale {s:g}" for s in scales]
    sheet = contact_sheet(tiles, rows, columns, title=args.figure)
    print("wrote", save_image(Path(args.output) / f"{args.figure}.png", sheet))


if __name__ == "__main__":
    main()
