"""Clips whose true motion is known, and the flicker comparison of docs/video.md.

    python scripts/video_clips.py compare --clips pan,zoom,rotation,slide,cut -o video-figures/
    python scripts/video_clips.py compare --clips slide --size 192x256 --frames 4 --modes sequential,window

Each clip is made from the built-in village and swirls (``nst_jax.samples``): a pan, a zoom, a
rotation, the swirls sliding over the village (occlusions) and a cut. ``compare`` styles each
clip four ways (every frame alone, frame after frame with the temporal loss, a window of
frames together, and frame after frame followed by the paper's backward and forward passes:
``multipass``, ``--passes``) and prints one JSON line per clip and way: the flicker (mean
absolute change of output frame t from output frame t-1 moved by the true motion, over pixels
visible in both), the judge's mean figures, each frame's figures over the same frame styled
alone (the worst frame's ratio), evaluations and seconds. The frames go to ``-o`` as .npy and
a GIF.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from nst_jax import StyleConfig, clips, flow, quality, samples, video
from nst_jax.image import resize
from nst_jax.weights import params_or_default


def _affine(transforms, size):
    """frame_t(p) = village(A_t p + o_t) (the 384 x 512 village); the true backward flow and visibility."""
    src = np.asarray(samples.village(384, 512), np.float32)
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    points = np.stack([xs, ys], -1)
    frames, flows, masks = [], [], []
    for t, (a, o) in enumerate(transforms):
        q = points @ a.T + o
        field = np.zeros((*src.shape[:2], 2), np.float32)
        field[:h, :w] = q - points
        frames.append(np.asarray(flow.warp(jnp.asarray(src), jnp.asarray(field)))[:h, :w])
        if t == 0:
            flows.append(np.zeros((h, w, 2), np.float32))
            masks.append(np.zeros((h, w), np.float32))
            continue
        a0, o0 = transforms[t - 1]
        before = (q - o0) @ np.linalg.inv(a0).T
        flows.append((before - points).astype(np.float32))
        inside = (before[..., 0] >= 0) & (before[..., 0] <= w - 1) & (before[..., 1] >= 0) & (before[..., 1] <= h - 1)
        masks.append(inside.astype(np.float32))
    return np.stack(frames).astype(np.float32), np.stack(flows), np.stack(masks)


def pan(count, size, speed=3.0):
    """A pan right over the village at 192 x 256 (``speed`` px a frame; frames up to about 170 x 230)."""
    source = np.asarray(resize(jnp.asarray(samples.village(384, 512)), (192, 256)))
    h, w = size
    frames = []
    for t in range(count):
        x0 = 8 + speed * t
        xi, fx = int(np.floor(x0)), x0 - np.floor(x0)
        crop = source[20 : 20 + h, xi : xi + w + 1]
        frames.append(crop[:, :w] * (1 - fx) + crop[:, 1 : w + 1] * fx)
    flows = np.zeros((count, h, w, 2), np.float32)
    flows[1:, ..., 0] = speed
    masks = np.ones((count, h, w), np.float32)
    masks[0] = 0
    masks[1:, :, w - int(np.ceil(speed)) - 1 :] = 0
    return np.stack(frames).astype(np.float32), flows, masks


def zoom(count, size, rate=1.03):
    """Zooming in on the village, ``rate`` a frame (2 source pixels a frame pixel at first)."""
    centre, transforms = np.array([200.0, 150.0]), []
    for t in range(count):
        a = np.eye(2) * rate**-t * 2.0
        transforms.append((a, centre - a @ np.array([size[1] / 2, size[0] / 2])))
    return _affine(transforms, size)


def rotation(count, size, degrees=2.0):
    """Turning about a point of the village, ``degrees`` a frame."""
    centre, transforms = np.array([250.0, 190.0]), []
    for t in range(count):
        r = np.radians(degrees * t)
        a = 2.0 * np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
        transforms.append((a, centre - a @ np.array([size[1] / 2, size[0] / 2])))
    return _affine(transforms, size)


def slide(count, size, speed=4):
    """A 32 px square of the swirls sliding right over the village: occlusions and disocclusions."""
    h, w = size
    background = np.asarray(resize(jnp.asarray(samples.village(384, 512)), (h, w)))
    square = np.asarray(resize(jnp.asarray(samples.swirls(256, 256)), (32, 32)))
    frames, flows, masks = [], [], []
    for t in range(count):
        x0, y0 = 10 + speed * t, 40
        frame = background.copy()
        frame[y0 : y0 + 32, x0 : x0 + 32] = square
        field, mask = np.zeros((h, w, 2), np.float32), np.ones((h, w), np.float32)
        if t == 0:
            mask[:] = 0
        else:
            field[y0 : y0 + 32, x0 : x0 + 32, 0] = -speed
            mask[y0 : y0 + 32, x0 - speed : x0 - speed + 32] = 0  # background the square covered a frame ago
            mask[y0 : y0 + 32, x0 : x0 + 32] = 1
        frames.append(frame)
        flows.append(field)
        masks.append(mask)
    return np.stack(frames).astype(np.float32), np.stack(flows), np.stack(masks)


def cut(count, size, speed=3):
    """Half the frames of the pan, then the swirls panning: a cut."""
    first = pan(count // 2, size, float(speed))
    h, w = size
    rest = count - count // 2
    swirls = np.asarray(resize(jnp.asarray(samples.swirls(256, 256)), (h + 8, w + 40)))
    frames = np.stack([swirls[4 : 4 + h, speed * t : speed * t + w] for t in range(rest)]).astype(np.float32)
    flows = np.zeros((rest, h, w, 2), np.float32)
    flows[1:, ..., 0] = speed
    masks = np.ones((rest, h, w), np.float32)
    masks[:, :, w - 4 :] = 0
    masks[0] = 0  # the first frame of the new shot: nothing of it was visible before
    return tuple(np.concatenate([a, b]) for a, b in zip(first, (frames, flows, masks), strict=True))


CLIPS = {"pan": pan, "zoom": zoom, "rotation": rotation, "slide": slide, "cut": cut}
MODES = ("alone", "sequential", "window", "multipass")


def compare(args) -> None:
    h, w = _shape(args.size)
    long_term = tuple(int(j) for j in args.long_term.split(","))
    config = StyleConfig(num_steps=args.steps)
    params = params_or_default(None, config)
    style = np.asarray(resize(jnp.asarray(samples.swirls(256, 256)), (128, 128)))  # the figures' style
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.clips.split(","):
        frames, true, visible = CLIPS[name](args.frames, (h, w))
        results = {}
        for mode in args.modes.split(","):
            settings = {
                "alone": video.VideoConfig(temporal_weight=0.0, window=1),
                "sequential": video.VideoConfig(temporal_weight=args.temporal_weight, window=1, long_term=long_term),
                "window": video.VideoConfig(
                    temporal_weight=args.temporal_weight, window=args.window, long_term=long_term
                ),
                "multipass": video.VideoConfig(
                    temporal_weight=args.temporal_weight,
                    window=1,
                    long_term=long_term,
                    passes=args.passes,
                    pass_steps=args.pass_steps,
                ),
            }[mode]
            began = time.perf_counter()
            result = video.stylize_video(frames, style, config, settings, params=params)
            seconds = time.perf_counter() - began
            judged = [quality.judge(params, f, c, style) for f, c in zip(result.frames, frames, strict=True)]
            figures = np.array([[j["content"], j["style"]["relu3_1"], j["style"]["relu4_1"]] for j in judged])
            results[mode] = figures
            flicker = float(video.temporal_error(result.frames, true, visible)[1:].mean())
            row = {
                "clip": name, "mode": mode, "flicker": flicker,
                "content": float(figures[:, 0].mean()), "relu3_1": float(figures[:, 1].mean()),
                "relu4_1": float(figures[:, 2].mean()), "evaluations_per_frame": result.evaluations,
                "batched_evaluations": result.batched_evaluations, "cuts": result.cuts, "seconds": seconds,
                "flow_seconds": result.flow_seconds,
            }  # fmt: skip
            if "alone" in results and mode != "alone":
                worst = (figures / results["alone"]).max(axis=0)
                row["worst_frame_over_alone"] = [round(float(x), 3) for x in worst]
            print(json.dumps(row), flush=True)
            np.save(out / f"{name}_{mode}.npy", result.frames)
            clips.write_clip(out / f"{name}_{mode}.gif", result.frames, 4.0)


def _shape(text: str) -> tuple[int, int]:
    w, h = (int(n) for n in text.lower().split("x"))
    return h, w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("compare", help="style clips alone, frame after frame and in a window; print the figures")
    run.add_argument("--clips", default="pan,zoom,rotation,slide,cut")
    run.add_argument("--modes", default=",".join(MODES))
    run.add_argument("--size", default="128x96", help="WIDTHxHEIGHT of the clips (default 128x96)")
    run.add_argument("--frames", type=int, default=8)
    run.add_argument("--steps", type=int, default=120)
    run.add_argument("--temporal-weight", type=float, default=video.VideoConfig().temporal_weight)
    run.add_argument("--window", type=int, default=8)
    run.add_argument("--long-term", default="1", help="frame offsets of the temporal loss, e.g. 1,2,4")
    run.add_argument("--passes", type=int, default=3, help="passes of the multipass mode")
    run.add_argument("--pass-steps", type=int, default=video.VideoConfig().pass_steps)
    run.add_argument("-o", "--output", default="video-figures")
    args = parser.parse_args()
    compare(args)


if __name__ == "__main__":
    main()
