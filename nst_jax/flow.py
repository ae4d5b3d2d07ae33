"""Optical flow between video frames, its reliability masks, and the warp that sits inside the loss.

The temporal loss of Ruder, Dosovitskiy and Brox ("Artistic style transfer for videos", GCPR
2016) compares frame t with the stylised frame t-1 *warped* along the optical flow, where the
flow is reliable. Here:

- :func:`optical_flow` computes the flow with OpenCV (DIS or Farneback: no binaries, no weights
  to download; ``opencv-python-headless``, in the optional extra ``video``). Convention: a
  *backward* flow ``b = optical_flow(frame_t, frame_prev)`` says where each pixel of frame t
  was in the previous frame, ``frame_t(p) ~ frame_prev(p + b(p))``.
- :func:`reliability` is the paper's consistency checker: 0 where the forward and backward
  flows disagree (disocclusions) and at motion boundaries, 1 elsewhere.
- :func:`warp` samples an image at ``p + flow(p)`` bilinearly in JAX, so it is differentiable
  and jit-compatible: the warp of the previous frame is part of the jitted loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.checks import check_choice

FLOWS = ("dis", "farneback")  # OpenCV's dense optical flow methods (cv2.DISOpticalFlow, cv2.calcOpticalFlowFarneback)
# A pair of frames whose flow is reliable on less than this share of the picture is a cut: the
# next shot starts there, and nothing of the previous one is carried into it.
CUT_SHARE = 0.3


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError(
            "optical flow needs OpenCV: pip install 'nst-jax[video]' (opencv-python-headless, PyAV)"
        ) from None
    return cv2


def _grey(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame, np.float32)
    luma = frame[..., 0] * 0.299 + frame[..., 1] * 0.587 + frame[..., 2] * 0.114
    return np.clip(np.rint(luma * 255.0), 0, 255).astype(np.uint8)


def optical_flow(frame: np.ndarray, other: np.ndarray, method: str = "dis") -> np.ndarray:
    """The dense flow ``f`` ``[h, w, 2]`` (x, y in pixels) with ``frame(p) ~ other(p + f(p))``.

    ``frame`` and ``other`` are ``[h, w, 3]`` RGB in [0, 1] of one size. ``method``: ``"dis"``
    (OpenCV's DIS, preset MEDIUM: fast and accurate on large motions) or ``"farneback"``.
    """
    check_choice("flow", method, FLOWS)
    if np.shape(frame) != np.shape(other):
        raise ValueError(f"the two frames differ in shape: {np.shape(frame)} and {np.shape(other)}")
    cv2 = _cv2()
    a, b = _grey(frame), _grey(other)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(a, b, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 5, 5, 1.1, 0)
    return np.asarray(flow, np.float32)


def reliability(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """The paper's consistency mask ``[h, w]`` (1: reliable) for the backward flow of frame t.

    ``backward`` is ``optical_flow(frame_t, frame_prev)``, ``forward`` is
    ``optical_flow(frame_prev, frame_t)``. A pixel is unreliable (0) where following the
    backward flow and then the forward flow does not come back
    (``|f~ + b|^2 > 0.01 (|f~|^2 + |b|^2) + 0.5``, ``f~`` the forward flow at ``p + b(p)``: a
    disocclusion), at a motion boundary (``|grad b_x|^2 + |grad b_y|^2 > 0.01 |b|^2 + 0.002``),
    or where ``p + b(p)`` falls outside the previous frame.
    (Ruder, Dosovitskiy, Brox, GCPR 2016, section 3.2.)
    """
    backward = np.asarray(backward, np.float32)
    forward = np.asarray(forward, np.float32)
    h, w = backward.shape[:2]
    there = np.asarray(warp(jnp.asarray(forward), jnp.asarray(backward)))  # the forward flow at p + b(p)
    square = lambda v: np.sum(v * v, axis=-1)
    consistent = square(there + backward) <= 0.01 * (square(there) + square(backward)) + 0.5
    gy_x, gx_x = np.gradient(backward[..., 0])
    gy_y, gx_y = np.gradient(backward[..., 1])
    boundary = gx_x**2 + gy_x**2 + gx_y**2 + gy_y**2 > 0.01 * square(backward) + 0.002
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xs + backward[..., 0], ys + backward[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return (consistent & ~boundary & inside).astype(np.float32)


def warp(image: jax.Array, flow: jax.Array) -> jax.Array:
    """``image`` (``[h, w, c]``) sampled at ``p + flow(p)`` bilinearly, edges clamped; differentiable in both.

    With a backward flow of frame t (:func:`optical_flow`), ``warp(previous, flow)`` is the
    previous frame moved to where its pixels are in frame t.
    """
    image = jnp.asarray(image)
    flow = jnp.asarray(flow, image.dtype)
    h, w = image.shape[:2]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=image.dtype), jnp.arange(w, dtype=image.dtype), indexing="ij")
    x = jnp.clip(xs + flow[..., 0], 0, w - 1)
    y = jnp.clip(ys + flow[..., 1], 0, h - 1)
    x0 = jnp.clip(jnp.floor(x), 0, w - 2).astype(jnp.int32) if w > 1 else jnp.zeros_like(x, jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, h - 2).astype(jnp.int32) if h > 1 else jnp.zeros_like(y, jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def resize_flow(flow: np.ndarray | jax.Array, shape: tuple[int, int]) -> jax.Array:
    """A flow field brought to ``shape`` (``(height, width)``), its vectors scaled with the picture."""
    flow = jnp.asarray(flow, jnp.float32)
    h, w = flow.shape[:2]
    if (h, w) == tuple(shape):
        return flow
    scaled = jax.image.resize(flow, (*shape, 2), "linear", antialias=True)
    return scaled * jnp.asarray([shape[1] / w, shape[0] / h], jnp.float32)


def resize_mask(mask: np.ndarray | jax.Array, shape: tuple[int, int]) -> jax.Array:
    """A reliability mask brought to ``shape``; a pixel touched by an unreliable one stays unreliable."""
    mask = jnp.asarray(mask, jnp.float32)
    if mask.shape == tuple(shape):
        return mask
    return (jax.image.resize(mask, tuple(shape), "linear", antialias=True) > 0.99).astype(jnp.float32)


def frame_flows(frames: np.ndarray, method: str = "dis", cut_share: float = CUT_SHARE):
    """Backward flows, reliability masks and cuts of a clip ``[T, h, w, 3]``.

    Returns ``(flows [T, h, w, 2], masks [T, h, w], cuts)``: ``flows[t]`` and ``masks[t]`` relate
    frame t to frame t-1 (entry 0 is zeros: the first frame has no previous one); ``cuts`` lists
    the frames that start a new shot (reliable on less than ``cut_share`` of the picture), whose
    masks are zeroed.
    """
    frames = np.asarray(frames, np.float32)
    flows, masks, cuts = span_flows(frames, range(len(frames)), (1,), method, cut_share)
    return flows[0], masks[0], cuts


def span_flows(frames: np.ndarray, span: range, offsets=(1,), method: str = "dis", cut_share: float = CUT_SHARE):
    """Flows ``[J, W, h, w, 2]`` and masks ``[J, W, h, w]`` of the frames in ``span`` to each earlier offset; the cuts.

    Entry ``[k, i]`` relates frame ``span[i]`` to frame ``span[i] - offsets[k]`` (zeros before the
    clip's start). A pair reliable on less than ``cut_share`` of the picture has a cut between its
    frames: its mask and every further offset's are zeroed (for offset 1 the frame is a cut, and
    listed). A longer offset's mask keeps only what no nearer offset covers (Ruder et al., eq. 8).
    """
    h, w = frames.shape[1:3]
    flows = np.zeros((len(offsets), len(span), h, w, 2), np.float32)
    masks = np.zeros((len(offsets), len(span), h, w), np.float32)
    cuts = []
    for i, t in enumerate(span):
        covered = np.zeros((h, w), np.float32)
        for k, j in enumerate(offsets):
            if t - j < 0:
                break
            flows[k, i] = optical_flow(frames[t], frames[t - j], method)
            mask = reliability(flows[k, i], optical_flow(frames[t - j], frames[t], method))
            if mask.mean() < cut_share:  # a cut between them: nothing of before is held
                if j == 1:
                    cuts.append(t)
                break
            masks[k, i] = np.maximum(mask - covered, 0.0)
            covered = np.minimum(covered + mask, 1.0)
    return flows, masks, cuts
