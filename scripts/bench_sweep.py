"""Batched sweep against sequential runs of the same settings, printed as JSON.

Measures, in one run (defaults: 128 px, B = 8 style weights, 100 steps):

* the batched sweep (:func:`nst_jax.sweep`, the per-member L-BFGS of :mod:`nst_jax.lbfgs`):
  wall time, batched evaluations, loss+gradient evaluations per member-step, and the share
  of time spent outside the batched evaluations (one batched evaluation is timed alone);
* the same B settings run one after another with :func:`nst_jax.stylize` (optax L-BFGS,
  zoom line search), and with the batched L-BFGS at B = 1;
* throughput ratio sequential time / batched time, and the final losses side by side;
* optax's zoom L-BFGS under ``jax.vmap`` for a few steps: its cost per member-step in
  units of one batched evaluation (what the batched L-BFGS replaces).

Compilation is excluded everywhere (each path runs once to warm up, then is timed).

    python scripts/bench_sweep.py --size 128 --batch 8 --steps 100
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import StyleConfig, load_params, make_objective, optim, samples, stylize
from nst_jax.image import fit_long_side
from nst_jax.sweeps import sweep


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def _memory_table(params, sizes) -> dict:
    """MiB per device of the compiled batch program, by long side and batch size (nothing is run)."""
    table = {}
    for size in sizes:
        h, w = fit_long_side((384, 512), size)
        content, style = samples.village(h, w), samples.swirls(h, w)
        config = StyleConfig(num_steps=0)
        row = {}
        for batch in (1, 2, 4, 8):
            result = sweep(content, style, config, {"style_weight": [1e3] * batch}, params=params)
            row[batch] = round(result.bytes_per_device / 2**20, 1)
        table[f"{h}x{w}"] = row
    return {"mib_per_device": table}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optax-vmap-steps", type=int, default=10)
    parser.add_argument(
        "--memory", type=int, nargs="*", metavar="SIZE",
        help="only print the batch program's memory (XLA memory analysis) for B = 1, 2, 4, 8 at these sizes",
    )  # fmt: skip
    args = parser.parse_args(argv)

    params, _ = load_params()
    if args.memory:
        print(json.dumps(_memory_table(params, args.memory), indent=1))
        return
    h, w = fit_long_side((384, 512), args.size)
    content, style = samples.village(h, w), samples.swirls(h, w)
    config = StyleConfig(num_steps=args.steps, size=args.size)
    weights = [float(x) for x in np.geomspace(1e2, 1e4, args.batch)]
    axes = {"style_weight": weights}

    # One batched loss+gradient evaluation of B images, alone.
    objective = make_objective(params, content, style, config)
    objectives = objective.replace(style_weight=jnp.asarray(weights, jnp.float32))
    in_axes = objective.replace(
        params=None, content_targets=None, style_targets=None, content_weight=None, style_weight=0,
        layer_weights=None, tv_weight=None, box_weight=None,
    )  # fmt: skip
    batched_eval = jax.jit(jax.vmap(lambda o, x: jax.value_and_grad(o.value)(x), in_axes=(in_axes, 0)))
    images = jnp.broadcast_to(jnp.asarray(content), (args.batch, h, w, 3))
    jax.block_until_ready(batched_eval(objectives, images))
    eval_s = _best(lambda: batched_eval(objectives, images), 3)
    single_eval = jax.jit(jax.value_and_grad(objective.value))
    jax.block_until_ready(single_eval(images[0]))
    single_eval_s = _best(lambda: single_eval(images[0]), 3)

    # Batched sweep: warm up (compiles), then time.
    sweep(content, style, config.replace(num_steps=2), axes, params=params)
    start = time.perf_counter()
    batched = sweep(content, style, config, axes, params=params)
    batched_s = time.perf_counter() - start
    in_evals_s = batched.iterations * eval_s

    # Sequential: optax L-BFGS (stylize) and the batched L-BFGS at B = 1, same settings.
    stylize(content, style, config.replace(num_steps=2, style_weight=weights[0]), params=params)
    start = time.perf_counter()
    optax_runs = [stylize(content, style, config.replace(style_weight=w), params=params) for w in weights]
    optax_s = time.perf_counter() - start
    sweep(content, style, config.replace(num_steps=2), {"style_weight": weights[:1]}, params=params)
    start = time.perf_counter()
    single_runs = [sweep(content, style, config, {"style_weight": [w]}, params=params) for w in weights]
    single_s = time.perf_counter() - start

    # optax's zoom L-BFGS under vmap: a few steps, in units of one batched evaluation.
    optimizer = optim.make_optimizer("lbfgs")
    loss_fn = lambda o, x: o.value(x)

    def vmapped_steps(objectives, state, n):
        def one(o, s):
            return jax.lax.fori_loop(0, n, lambda _, s: optim.step(jax.tree_util.Partial(loss_fn, o), optimizer, s), s)

        return jax.vmap(one, in_axes=(in_axes, 0))(objectives, state)

    init = jax.vmap(lambda o, x: optim.init_loop(jax.tree_util.Partial(loss_fn, o), optimizer, x), in_axes=(in_axes, 0))
    state = init(objectives, images)
    run = jax.jit(vmapped_steps, static_argnums=2)
    jax.block_until_ready(run(objectives, state, args.optax_vmap_steps))
    optax_vmap_s = _best(lambda: run(objectives, state, args.optax_vmap_steps), 1)

    losses_batched = batched.losses.tolist()
    losses_optax = [r.loss for r in optax_runs]
    losses_single = [float(r.losses[0]) for r in single_runs]
    rel = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))
    report = {
        "device": str(jax.devices()[0]),
        "size": [h, w],
        "batch": args.batch,
        "steps": args.steps,
        "style_weights": weights,
        "one_eval_s": round(single_eval_s, 4),
        "batched_eval_s": round(eval_s, 4),
        "batched_eval_speedup_per_image": round(args.batch * single_eval_s / eval_s, 3),
        "batched": {
            "seconds": round(batched_s, 2),
            "batched_evals": batched.iterations,
            "evals_per_member_step": round(batched.iterations / args.steps, 3),
            "member_evals_per_step_mean": round(float(np.mean(batched.evals)) / args.steps, 3),
            "time_outside_evals": round(1 - in_evals_s / batched_s, 3),
        },
        "sequential_optax_lbfgs": {
            "seconds": round(optax_s, 2),
            "evals_per_step": round(sum(r.num_evals for r in optax_runs) / (args.steps * args.batch), 3),
        },
        "sequential_batched_lbfgs_b1": {"seconds": round(single_s, 2)},
        "throughput_vs_sequential_optax": round(optax_s / batched_s, 3),
        "throughput_vs_sequential_b1": round(single_s / batched_s, 3),
        "final_loss": {"batched": losses_batched, "sequential_optax": losses_optax, "sequential_b1": losses_single},
        "max_rel_loss_diff_vs_optax": round(rel(losses_batched, losses_optax), 4),
        "max_rel_loss_diff_vs_b1": round(rel(losses_batched, losses_single), 4),
        "optax_zoom_under_vmap_evals_per_member_step": round(optax_vmap_s / args.optax_vmap_steps / eval_s, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
