"""Demo images the project draws itself (no downloads, nothing from ../shared).

:func:`village` is a content "photo": a dusk sky, hills, a row of houses with a
church tower, and their reflection in a river. :func:`swirls` is a style
"painting": brush strokes drawn by line-integral convolution of noise along a
field of vortices, in a night-sky palette with haloed stars. Both are
deterministic functions of their size.
"""

from __future__ import annotations

import numpy as np


def _bilinear(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    y = np.clip(y, 0, h - 1.001)
    x = np.clip(x, 0, w - 1.001)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    if image.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    h, w = shape
    coarse = rng.random((h // cell + 2, w // cell + 2))
    y, x = np.mgrid[0:h, 0:w] / cell
    return _bilinear(coarse, y, x)


def village(height: int = 384, width: int = 512) -> np.ndarray:
    """A content image: a village at dusk by a river, float32 ``[height, width, 3]`` in [0, 1]."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    v, u = y / height, x / width
    horizon = 0.62
    # Sky: deep blue at the top to warm orange at the horizon, and a low sun.
    t = np.clip(v / horizon, 0, 1)[..., None]
    sky = (1 - t) * np.array([0.10, 0.18, 0.42]) + t * np.array([0.98, 0.62, 0.32])
    sun = np.exp(-(((u - 0.72) / 0.05) ** 2 + ((v - 0.45) / 0.066) ** 2))
    sky = sky + sun[..., None] * np.array([0.6, 0.45, 0.2])
    image = sky
    # Two layers of hills.
    for level, amp, freq, colour in ((0.50, 0.05, 3.0, (0.28, 0.30, 0.42)), (0.56, 0.04, 5.0, (0.18, 0.26, 0.22))):
        ridge = level + amp * np.sin(2 * np.pi * freq * u + level * 9) + 0.015 * np.sin(2 * np.pi * 13 * u)
        image = np.where((v > ridge)[..., None], np.array(colour), image)
    # Houses along the bank, each with a gabled roof and lit windows.
    left = 0.02
    while left < 0.95:
        wide = rng.uniform(0.07, 0.12)
        top = horizon - rng.uniform(0.10, 0.20)
        wall = rng.choice([(0.86, 0.78, 0.62), (0.78, 0.52, 0.40), (0.92, 0.88, 0.80), (0.70, 0.66, 0.56)])
        body = (u > left) & (u < left + wide) & (v > top) & (v < horizon)
        image = np.where(body[..., None], np.array(wall), image)
        roof_h = wide * width / height * 0.45
        centre = left + wide / 2
        roof = (v < top) & (v > top - roof_h * (1 - np.abs(u - centre) / (wide / 2 + 0.01)))
        image = np.where(roof[..., None], np.array((0.45, 0.16, 0.12)), image)
        for row in np.arange(top + 0.03, horizon - 0.04, 0.05):
            for col in np.arange(left + 0.015, left + wide - 0.025, 0.03):
                window = (u > col) & (u < col + 0.014) & (v > row) & (v < row + 0.025)
                image = np.where(window[..., None], np.array((0.98, 0.86, 0.40)), image)
        left += wide + rng.uniform(0.0, 0.02)
    # A church tower with a spire.
    tower = (u > 0.40) & (u < 0.45) & (v > 0.22) & (v < horizon)
    spire = (v <= 0.22) & (v > 0.08 + 0.14 * np.abs(u - 0.425) / 0.025) & (np.abs(u - 0.425) < 0.025)
    image = np.where(tower[..., None], np.array((0.62, 0.58, 0.52)), image)
    image = np.where(spire[..., None], np.array((0.20, 0.30, 0.30)), image)
    clock = ((u - 0.425) * width) ** 2 + ((v - 0.28) * height) ** 2 < (0.012 * width) ** 2
    image = np.where(clock[..., None], np.array((0.95, 0.92, 0.80)), image)
    # The river mirrors everything above the bank, with ripples, darker and bluer.
    below = v > horizon + 0.02
    mirror_v = 2 * (horizon + 0.02) - v + 0.006 * np.sin(v * height / 3.0)
    mirror_u = u + 0.004 * np.sin(v * height / 2.0 + u * 40)
    reflected = _bilinear(image, np.clip(mirror_v, 0, 1) * (height - 1), np.clip(mirror_u, 0, 1) * (width - 1))
    water = reflected * 0.65 + np.array((0.02, 0.06, 0.12))
    image = np.where(below[..., None], water, image)
    bank = (v > horizon) & (v <= horizon + 0.02)
    image = np.where(bank[..., None], np.array((0.25, 0.22, 0.18)), image)
    image = image + (rng.random((height, width, 1)) - 0.5) * 0.03  # a little sensor grain
    return np.clip(image, 0, 1).astype(np.float32)


def swirls(height: int = 384, width: int = 512, steps: int = 24) -> np.ndarray:
    """A style image: swirling night-sky brush strokes with haloed stars, float32 ``[height, width, 3]``."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = max(height, width)
    # Flow field: a drift to the right plus a few vortices, like a windy night sky.
    vy = 0.15 * np.sin(x / scale * 9)
    vx = np.ones_like(x) * 0.6
    for cy, cx, r, spin in (
        (0.30, 0.35, 0.16, 1.0),
        (0.38, 0.62, 0.12, -1.0),
        (0.22, 0.82, 0.10, 1.0),
        (0.70, 0.5, 0.2, 1),
    ):
        dy, dx = y / scale - cy * height / scale, x / scale - cx * width / scale
        d2 = dy**2 + dx**2
        strength = spin * np.exp(-d2 / (2 * r**2)) * 2.5
        vy, vx = vy + strength * dx / (np.sqrt(d2) + 1e-3), vx - strength * dy / (np.sqrt(d2) + 1e-3)
    norm = np.sqrt(vy**2 + vx**2) + 1e-6
    vy, vx = vy / norm, vx / norm
    # Line-integral convolution of noise along the field draws the brush strokes.
    noise = rng.random((height, width)) * 0.7 + _smooth_noise(rng, (height, width), 6) * 0.6
    strokes = np.zeros((height, width))
    step_len = scale / 260
    for direction in (1.0, -1.0):
        py, px = y.copy(), x.copy()
        for _ in range(steps):
            strokes += _bilinear(noise, py, px)
            fy, fx = _bilinear(vy, py, px), _bilinear(vx, py, px)
            py, px = py + direction * step_len * fy, px + direction * step_len * fx
    strokes = strokes / (2 * steps)
    strokes = (strokes - strokes.mean()) / (strokes.std() + 1e-6)
    # Colour: deep blue to cobalt to pale yellow, modulated by strokes and broad regions.
    region = _smooth_noise(rng, (height, width), 40)
    level = np.clip(0.35 + 0.18 * strokes + 0.35 * (region - 0.5), 0, 1)[..., None]
    palette = np.array(
        [(0.05, 0.10, 0.30), (0.12, 0.28, 0.62), (0.30, 0.52, 0.78), (0.80, 0.82, 0.62), (0.98, 0.90, 0.45)]
    )
    position = level * (len(palette) - 1)
    low = np.floor(position).astype(int).clip(0, len(palette) - 2)
    frac = position - low
    image = palette[low[..., 0]] * (1 - frac) + palette[low[..., 0] + 1] * frac
    # Stars and a moon, each with concentric halos of strokes.
    for cy, cx, r in (
        (0.15, 0.2, 0.035),
        (0.12, 0.55, 0.03),
        (0.28, 0.9, 0.05),
        (0.1, 0.78, 0.025),
        (0.45, 0.12, 0.03),
    ):
        d = np.sqrt(((y - cy * height) / scale) ** 2 + ((x - cx * width) / scale) ** 2)
        halo = np.exp(-((d / (r * 2.2)) ** 2)) * (0.6 + 0.4 * np.cos(d / r * 9 + strokes * 0.8))
        core = np.clip(1.2 - d / r, 0, 1)
        star = np.clip(halo * 0.7 + core, 0, 1)[..., None]
        image = image * (1 - star) + star * np.array((1.0, 0.93, 0.45))
    # A dark flame-shaped tree on the left edge, and hills at the bottom.
    sway = 0.03 * np.sin(y / scale * 30 + strokes * 0.3)
    tree = (np.abs(x / width - 0.12 - sway) < 0.06 * (y / height) ** 1.5) & (y / height > 0.25)
    image = np.where(tree[..., None], np.array((0.10, 0.14, 0.08)) + 0.08 * strokes[..., None], image)
    hills = y / height > 0.82 + 0.04 * np.sin(x / width * 7) + 0.01 * strokes
    image = np.where(hills[..., None], np.array((0.12, 0.18, 0.30)) + 0.06 * strokes[..., None], image)
    return np.clip(image, 0, 1).astype(np.float32)
