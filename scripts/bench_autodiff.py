"""The convolution's derivative: the library's custom JVP, the earlier custom VJP and plain JAX; forward vs reverse.

Prints JSON, measured side by side in one run (compilation excluded; best of --repeats),
each variant of ``vgg.conv2d`` in its own subprocess (jitted functions inside the library
keep the first trace they see, so swapping the convolution within one process measures
the first variant every time):

* ``library``: ``vgg.conv2d`` as it is, a custom JVP whose transposition keeps the input
  gradient's kernel labelled HWIO; forward and reverse mode;
* ``custom_vjp``: the previous default, rebuilt here (an explicitly flipped kernel in the
  backward pass); reverse mode only;
* ``plain``: ``lax.conv_general_dilated`` with JAX's own derivatives.

For each: seconds per L-BFGS step of a real run (``nst_jax.transfer``, one scale, the
optimisation's ``while_loop``) for two objectives (the default style transfer, and a
relu2_1 reconstruction from noise, where the shallow layers are all the work); seconds of
one reverse-mode gradient, one forward-mode JVP and one Hessian-vector product (forward
over reverse) of the objective, each jitted on its own.

    python scripts/bench_autodiff.py --size 256 --steps 30 --repeats 2
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

VARIANTS = ("library", "custom_vjp", "plain")


def _custom_vjp_conv2d():
    from nst_jax import vgg

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def conv2d(x, kernel, padding, precision="highest"):
        return vgg._conv(x, kernel, padding, precision)

    def fwd(x, kernel, padding, precision):
        return vgg._conv(x, kernel, padding, precision), (x, kernel)

    def bwd(padding, precision, residuals, g):
        x, kernel = residuals
        kh, kw = kernel.shape[:2]
        (top, bottom), (left, right) = padding
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
        dx = vgg._conv(g, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), precision)
        _, kernel_vjp = jax.vjp(lambda k: vgg._conv(x, k, padding, precision), kernel)
        return dx.astype(x.dtype), kernel_vjp(g)[0].astype(kernel.dtype)

    conv2d.defvjp(fwd, bwd)
    return conv2d


def _best(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def _measure(variant: str, size: int, steps: int, repeats: int) -> dict:
    """One variant's figures, in this process (called in a subprocess per variant)."""
    import nst_jax
    from nst_jax import StyleConfig, load_params, make_objective, samples, vgg
    from nst_jax.image import fit_long_side

    if variant == "custom_vjp":
        vgg.conv2d = _custom_vjp_conv2d()
    elif variant == "plain":
        vgg.conv2d = lambda x, kernel, padding, precision="highest": vgg._conv(x, kernel, padding, precision)
    params, _ = load_params()
    h, w = fit_long_side((384, 512), size)
    content, style = jnp.asarray(samples.village(h, w)), jnp.asarray(samples.swirls(h, w))
    style_config = StyleConfig(size=size, num_scales=1)
    reconstruction = style_config.replace(content_layers=("relu2_1",), init="noise")
    record: dict = {"step_seconds": {}}
    for case, config, styles in (("style", style_config, style), ("relu2_1", reconstruction, None)):
        per_step = []
        for _ in range(repeats):
            times = []

            def callback(progress, times=times):
                times.append((progress.step, time.perf_counter()))

            nst_jax.stylize(content, styles, config.replace(num_steps=steps, chunk_size=steps // 2),
                            params=params, callback=callback)  # fmt: skip
            (first, start), (last, end) = times[0], times[-1]  # the first chunk holds the compilation
            per_step.append((end - start) / (last - first))
        record["step_seconds"][case] = round(min(per_step), 4)
    obj = make_objective(params, content, style, StyleConfig(size=size))
    tangent = jax.random.normal(jax.random.key(0), content.shape)
    value = lambda o, x: o(x)[0]
    grad = jax.jit(jax.grad(value, argnums=1))
    record["reverse_gradient_seconds"] = round(_best(lambda: grad(obj, content), repeats), 4)
    if variant != "custom_vjp":  # JAX cannot run forward mode through a custom VJP
        jvp = jax.jit(lambda o, x, t: jax.jvp(lambda x: value(o, x), (x,), (t,)))
        hvp = jax.jit(lambda o, x, t: jax.jvp(lambda x: grad(o, x), (x,), (t,)))
        record["forward_jvp_seconds"] = round(_best(lambda: jvp(obj, content, tangent), repeats), 4)
        record["hessian_vector_seconds"] = round(_best(lambda: hvp(obj, content, tangent), repeats), 4)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="long side (4:3 images)")
    parser.add_argument("--steps", type=int, default=30, help="L-BFGS steps per run (half of them timed)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant and case (best is kept)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in this process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(_measure(args.variant, args.size, args.steps, args.repeats)))
        return
    record: dict = {"jax": jax.__version__, "device": str(jax.devices()[0]), "size": args.size, "variants": {}}
    for variant in VARIANTS:
        argv = [sys.argv[0], "--variant", variant, "--size", str(args.size), "--steps", str(args.steps),
                "--repeats", str(args.repeats)]  # fmt: skip
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
        record["variants"][variant] = json.loads(done.stdout.strip().splitlines()[-1])
    steps = {v: r["step_seconds"] for v, r in record["variants"].items()}
    record["step_time_over_custom_vjp"] = {
        variant: {case: round(steps[variant][case] / steps["custom_vjp"][case], 3) for case in steps[variant]}
        for variant in ("library", "plain")
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
