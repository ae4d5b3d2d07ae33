"""Per-evaluation speed of the style-transfer loss+gradient, printed as JSON.

Measures, in one run: seconds per loss+gradient evaluation at each size
(compile time separate; warm; several repeats; min and median), L-BFGS
evaluations per step, peak memory (process max RSS), achieved GFLOP/s (XLA cost
analysis) against a jitted f32 matrix multiply measured in the same run, and,
when torch is importable (``pip install ".[bench]"``), an eager PyTorch
evaluation of the same loss on the same weights, interleaved with ours.

    python scripts/bench.py --sizes 256 512 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import StyleConfig, load_params, make_objective, optim, samples


def _timeit(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _matmul_gflops(repeats: int, n: int = 2048) -> float:
    a = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    best = min(_timeit(lambda: mm(a).block_until_ready(), repeats))
    return 2 * n**3 / best / 1e9


def _torch_loss(params, content, style, config):
    """The same loss in eager PyTorch (NCHW), on the same weights."""
    import torch
    import torch.nn.functional as F

    torch.set_grad_enabled(True)
    weights = {
        name: (
            torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()),
            torch.from_numpy(np.asarray(p["bias"])),
        )
        for name, p in params.items()
    }
    from nst_jax.vgg import LAYERS

    wanted = set(config.content_layers) | set(config.style_layers)
    deepest = max(LAYERS.index(layer) for layer in wanted)
    mode = "reflect" if config.padding == "reflect" else "constant"

    def features(x):
        x = F.conv2d(x, *weights["preprocess"])
        out = {}
        for name in LAYERS[: deepest + 1]:
            if name.startswith("conv"):
                if mode == "reflect":
                    x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), *weights[name])
                else:
                    x = F.conv2d(x, *weights[name], padding=1)
            elif name.startswith("relu"):
                x = F.relu(x)
            else:
                x = F.avg_pool2d(x, 2) if config.pooling == "avg" else F.max_pool2d(x, 2)
            if name in wanted:
                out[name] = x
        return out

    def gram(f):
        _, c, h, w = f.shape
        flat = f.reshape(c, h * w)
        return flat @ flat.T / (h * w)

    to_torch = lambda a: torch.from_numpy(np.asarray(a).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        c_feats = features(to_torch(content))
        s_feats = features(to_torch(style))
        content_targets = {k: c_feats[k] for k in config.content_layers}
        style_targets = {k: gram(s_feats[k]) for k in config.style_layers}
    from nst_jax.objective import default_layer_weights

    layer_weights = dict(zip(config.style_layers, default_layer_weights(config.style_layers), strict=True))
    image = to_torch(content).requires_grad_(True)

    def evaluate():
        image.grad = None
        feats = features(image)
        loss = sum(config.content_weight * F.mse_loss(feats[k], t) for k, t in content_targets.items())
        loss = loss + sum(
            config.style_weight * layer_weights[k] * F.mse_loss(gram(feats[k]), t) for k, t in style_targets.items()
        )
        loss.backward()
        return float(loss)

    return evaluate


def bench_size(params, size: int, config: StyleConfig, repeats: int, lbfgs_steps: int, use_torch: bool) -> dict:
    h = w = size  # square, as the figures in the issues are quoted
    content, style = samples.village(h, w), samples.swirls(h, w)
    objective = make_objective(params, content, style, config)
    value_and_grad = jax.jit(jax.value_and_grad(lambda o, x: o(x)[0], argnums=1))
    x = jnp.asarray(content)
    start = time.perf_counter()
    compiled = value_and_grad.lower(objective, x).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    run = lambda: jax.block_until_ready(compiled(objective, x))
    run()
    torch_eval = _torch_loss(params, content, style, config) if use_torch else None
    if torch_eval:
        torch_eval()
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        ours += _timeit(run, 1)
        if torch_eval:
            theirs += _timeit(torch_eval, 1)
    result = {
        "size": f"{h}x{w}",
        "compile_s": round(compile_s, 2),
        "eval_s_min": round(min(ours), 4),
        "eval_s_median": round(statistics.median(ours), 4),
        "gflop_per_eval": round(flops / 1e9, 1),
        "gflops_achieved": round(flops / min(ours) / 1e9, 1),
    }
    if torch_eval:
        result["torch_eval_s_min"] = round(min(theirs), 4)
        result["torch_eval_s_median"] = round(statistics.median(theirs), 4)
        result["speedup_vs_torch"] = round(min(theirs) / min(ours), 3)
    if lbfgs_steps:
        optimizer = optim.make_optimizer("lbfgs")
        loss_fn = jax.tree_util.Partial(type(objective).value, objective)
        state = optim.init_loop(loss_fn, optimizer, x)
        state = optim.run_chunk(loss_fn, optimizer, state, 1)
        jax.block_until_ready(state)
        evals0, steps0 = int(state.num_evals), int(state.step)
        start = time.perf_counter()
        state = jax.block_until_ready(optim.run_chunk(loss_fn, optimizer, state, lbfgs_steps))
        seconds = time.perf_counter() - start
        evals, steps = int(state.num_evals) - evals0, int(state.step) - steps0
        result["lbfgs_evals_per_step"] = round(evals / steps, 3)
        result["lbfgs_step_s"] = round(seconds / steps, 4)
        result["lbfgs_overhead_vs_evals"] = round(seconds / (evals * min(ours)) - 1, 3)
    result["peak_rss_gib_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lbfgs-steps", type=int, default=10, help="L-BFGS steps timed per size (0: skip)")
    parser.add_argument("--padding", default="zeros", choices=("zeros", "reflect"))
    parser.add_argument(
        "--no-torch", action="store_true", help="skip the PyTorch comparison even if torch is installed"
    )
    args = parser.parse_args(argv)
    try:
        import torch

        use_torch = not args.no_torch
        torch_version = torch.__version__
    except ImportError:
        use_torch, torch_version = False, None
    params, _ = load_params()
    params = jax.tree.map(jnp.asarray, params)
    config = StyleConfig(padding=args.padding)
    report = {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "torch": torch_version,
        "padding": args.padding,
        "matmul_gflops_f32": round(_matmul_gflops(args.repeats), 1),
        "sizes": [],
    }
    for size in args.sizes:
        entry = bench_size(params, size, config, args.repeats, args.lbfgs_steps, use_torch)
        entry["fraction_of_matmul_rate"] = round(entry["gflops_achieved"] / report["matmul_gflops_f32"], 3)
        report["sizes"].append(entry)
        print(json.dumps(entry), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
