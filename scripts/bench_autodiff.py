"""The convolution's derivative: the library's, a custom VJP and plain JAX (forward_mode=True); forward vs reverse.

Prints JSON, measured side by side in one run (compilation excluded; best of --repeats):

* seconds per loss+gradient evaluation inside the L-BFGS loop (``optim.run_chunk``, the
  ``while_loop`` every step runs in), for two objectives (the default style transfer, and
  a relu2_1 reconstruction from noise, where the shallow layers are all the work), with
  ``vgg.conv2d`` as the library has it, as a custom VJP rebuilt here (an explicitly flipped
  kernel in the backward pass; the library's default) and as plain JAX
  (``vgg.forward_conv2d``, what ``forward_mode=True`` uses; XLA's own input gradient);
* seconds of one reverse-mode gradient and of one forward-mode JVP of the objective.

    python scripts/bench_autodiff.py --size 256 --steps 6 --repeats 2
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp

from nst_jax import StyleConfig, load_params, make_objective, objective, optim, samples, vgg
from nst_jax.image import fit_long_side


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def custom_vjp_conv2d(x, kernel, padding, precision="highest"):
    return vgg._conv(x, kernel, padding, precision)


def _fwd(x, kernel, padding, precision):
    return vgg._conv(x, kernel, padding, precision), (x, kernel)


def _bwd(padding, precision, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = vgg._conv(g, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), precision)
    _, kernel_vjp = jax.vjp(lambda k: vgg._conv(x, k, padding, precision), kernel)
    return dx.astype(x.dtype), kernel_vjp(g)[0].astype(kernel.dtype)


custom_vjp_conv2d.defvjp(_fwd, _bwd)


def plain_conv2d(x, kernel, padding, precision="highest"):
    return vgg._conv(x, kernel, padding, precision)


def _loop_seconds(obj, image, steps: int) -> float:
    """Seconds per evaluation over ``steps`` L-BFGS steps, after a compiled warm-up chunk."""
    # Fresh jits, so the convolution in use now is traced (not an earlier trace from the cache).
    objective._value = jax.jit(lambda o, x: o(x)[0])
    optim._run_chunk = jax.jit(optim._run_chunk.__wrapped__, static_argnames=("optimizer",))
    optim._init_loop = jax.jit(optim._init_loop.__wrapped__, static_argnames=("optimizer",))
    optimizer = optim.make_optimizer("lbfgs")
    loss_fn = jax.tree_util.Partial(type(obj).value, obj)
    state = optim.init_loop(loss_fn, optimizer, image)
    state = jax.block_until_ready(optim.run_chunk(loss_fn, optimizer, state, 2))
    evals, start = int(state.num_evals), time.perf_counter()
    state = jax.block_until_ready(optim.run_chunk(loss_fn, optimizer, state, steps))
    return (time.perf_counter() - start) / (int(state.num_evals) - evals)


def _best(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="long side (4:3 images)")
    parser.add_argument("--steps", type=int, default=6, help="timed L-BFGS steps per variant")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two variants (best is kept)")
    args = parser.parse_args()
    params, _ = load_params()
    h, w = fit_long_side((384, 512), args.size)
    content, style = jnp.asarray(samples.village(h, w)), jnp.asarray(samples.swirls(h, w))
    obj = make_objective(params, content, style, StyleConfig(size=args.size))
    reconstruction = make_objective(params, content, None, StyleConfig(size=args.size, content_layers=("relu2_1",)))
    noise = jax.random.uniform(jax.random.key(1), content.shape)
    library = vgg.conv2d
    variants = (("library", library), ("custom_vjp", custom_vjp_conv2d), ("plain", plain_conv2d))
    loop = {f"{case}/{name}": [] for case in ("style", "relu2_1") for name, _ in variants}
    try:
        for _ in range(args.repeats):
            for name, conv in variants:
                vgg.conv2d = conv
                loop[f"style/{name}"].append(_loop_seconds(obj, content, args.steps))
                loop[f"relu2_1/{name}"].append(_loop_seconds(reconstruction, noise, args.steps))
    finally:
        vgg.conv2d = library
    tangent = jax.random.normal(jax.random.key(0), content.shape)
    grad = jax.jit(jax.grad(lambda o, x: o(x)[0], argnums=1))
    jvp = jax.jit(lambda o, x, t: jax.jvp(lambda x: o.replace(forward_mode=True)(x)[0], (x,), (t,)))
    record = {
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "shape": [h, w],
        "loop_seconds_per_evaluation": {k: [round(t, 4) for t in v] for k, v in loop.items()},
        "library_over_custom_vjp": {
            case: round(min(loop[f"{case}/library"]) / min(loop[f"{case}/custom_vjp"]), 3)
            for case in ("style", "relu2_1")
        },
        "plain_over_custom_vjp": {
            case: round(min(loop[f"{case}/plain"]) / min(loop[f"{case}/custom_vjp"]), 3)
            for case in ("style", "relu2_1")
        },
        "reverse_gradient_seconds": round(_best(lambda: grad(obj, content), args.repeats), 4),
        "forward_jvp_seconds": round(_best(lambda: jvp(obj, content, tangent), args.repeats), 4),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
