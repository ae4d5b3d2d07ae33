"""Per-evaluation speed, start-up time and memory of the style-transfer loss+gradient, printed as JSON.

Measures, in one run: seconds per loss+gradient evaluation at each size and precision
(compile time separate; warm; several repeats; min and median), achieved GFLOP/s (XLA cost
analysis of the float32 program, so "direct-convolution-equivalent") against jitted float32
and bfloat16 matrix multiplies measured in the same run, L-BFGS evaluations per step, and,
when torch is importable (``pip install ".[bench]"``), an eager PyTorch evaluation of the
same loss on the same weights, interleaved with ours. Also: how far each precision's
features and final image are from float32's; the first and the second start of
``nst-jax stylize`` at 512 px with a fresh persistent compilation cache; memory per megapixel
(XLA's analysis of the loop, and the process's peak RSS); optionally (``--big 2048``) a
real coarse-to-fine run at that size with its peak RSS. Ends with each target of issue 6
and whether it is met.

    python scripts/bench.py --sizes 256 512 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import StyleConfig, load_params, make_objective, optim, samples, save_image, stylize, vgg
from nst_jax.transfer import memory_needed


def _timeit(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _matmul_gflops(repeats: int, dtype, n: int = 2048) -> float:
    a = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32), dtype)
    mm = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    mm(a).block_until_ready()
    best = min(_timeit(lambda: mm(a).block_until_ready(), repeats))
    return 2 * n**3 / best / 1e9


def _torch_loss(params, content, style, config):
    """The same loss in eager PyTorch (NCHW), on the same weights, on CUDA when torch sees a GPU.

    PyTorch's defaults stand: on a GPU its convolutions use TF32 (``cudnn.allow_tf32``).
    """
    import torch
    import torch.nn.functional as F

    torch.set_grad_enabled(True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = {
        name: (
            torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()).to(device),
            torch.from_numpy(np.array(p["bias"])).to(device),
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

    to_torch = lambda a: torch.from_numpy(np.asarray(a).transpose(2, 0, 1)[None].copy()).to(device)
    with torch.no_grad():
        c_feats = features(to_torch(content))
        s_feats = features(to_torch(style))
        content_targets = {k: c_feats[k] for k in config.content_layers}
        style_targets = {k: gram(s_feats[k]) for k in config.style_layers}
    from nst_jax.objective import default_layer_weights

    layer_weights = dict(
        zip(config.style_layers, default_layer_weights(config.style_layers, config.loss_scale), strict=True)
    )  # not named ``weights``: features() reads the convolutions' weights from that name
    relative = lambda targets: {
        k: 1.0 / float(t.pow(2).mean()) if config.loss_scale == "relative" else 1.0 for k, t in targets.items()
    }
    content_scale, style_scale = relative(content_targets), relative(style_targets)
    image = to_torch(content).requires_grad_(True)

    def evaluate():
        image.grad = None
        feats = features(image)
        loss = sum(
            config.content_weight * content_scale[k] * F.mse_loss(feats[k], t) for k, t in content_targets.items()
        )
        loss = loss + sum(
            config.style_weight * layer_weights[k] * style_scale[k] * F.mse_loss(gram(feats[k]), t)
            for k, t in style_targets.items()
        )
        loss.backward()
        return float(loss.detach())  # waits for the GPU's queue, the backward pass included

    return evaluate


def _compiled_eval(params, content, style, config):
    objective = make_objective(params, content, style, config)
    value_and_grad = jax.jit(jax.value_and_grad(lambda o, x: o(x)[0], argnums=1))
    x = jnp.asarray(content)
    start = time.perf_counter()
    compiled = value_and_grad.lower(objective, x).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    run = lambda: jax.block_until_ready(compiled(objective, x))
    run()
    return objective, run, compile_s, float(cost.get("flops", float("nan")))


def bench_size(params, h: int, w: int, config: StyleConfig, precisions, repeats: int, lbfgs_steps: int, torch_on):
    """Evaluation times of each precision and of PyTorch, interleaved, at one size."""
    content, style = samples.village(h, w), samples.swirls(h, w)
    runs = {p: _compiled_eval(params, content, style, config.replace(precision=p)) for p in precisions}
    torch_eval = _torch_loss(params, content, style, config) if torch_on else None
    if torch_eval:
        torch_eval()
    times = {p: [] for p in precisions}
    theirs = []
    for _ in range(repeats):  # interleaved, so all see the same machine state
        for p, (_, run, _, _) in runs.items():
            times[p] += _timeit(run, 1)
        if torch_eval:
            theirs += _timeit(torch_eval, 1)
    flops = runs["highest"][3] if "highest" in runs else next(iter(runs.values()))[3]
    result = {"size": f"{h}x{w}", "gflop_per_eval": round(flops / 1e9, 1)}
    if torch_eval:
        result["torch_eval_s_min"] = round(min(theirs), 4)
        result["torch_eval_s_median"] = round(statistics.median(theirs), 4)
    for p, (objective, _, compile_s, _) in runs.items():
        entry = {
            "compile_s": round(compile_s, 2),
            "eval_s_min": round(min(times[p]), 4),
            "eval_s_median": round(statistics.median(times[p]), 4),
            "gflops_achieved": round(flops / min(times[p]) / 1e9, 1),  # float32 direct-convolution FLOPs
        }
        if torch_eval:
            entry["speedup_vs_torch"] = round(min(theirs) / min(times[p]), 3)
        if lbfgs_steps:
            entry.update(_lbfgs_figures(objective, jnp.asarray(content), lbfgs_steps, min(times[p])))
        result[p] = entry
    feats = {
        p: vgg.features(params, jnp.asarray(content), config.style_layers, precision=p, padding=config.padding)
        for p in precisions
    }
    for p in precisions:
        if p != "highest" and "highest" in feats:
            errors = [
                float(jnp.linalg.norm(feats[p][k] - feats["highest"][k]) / jnp.linalg.norm(feats["highest"][k]))
                for k in config.style_layers
            ]
            result[p]["feature_rel_error_max"] = round(max(errors), 5)
    needed = memory_needed(content, [style], config, params=params)
    result["loop_memory_mib"] = round(needed / 2**20, 1)
    result["loop_memory_mib_per_mp"] = round(needed / 2**20 / (h * w / 1e6), 1)
    result["peak_rss_gib_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def _lbfgs_figures(objective, x, lbfgs_steps: int, eval_s: float) -> dict:
    optimizer = optim.make_optimizer("lbfgs")
    loss_fn = jax.tree_util.Partial(type(objective).value, objective)
    state = optim.init_loop(loss_fn, optimizer, x)
    state = jax.block_until_ready(optim.run_chunk(loss_fn, optimizer, state, 1))
    evals0, steps0 = int(state.num_evals), int(state.step)
    start = time.perf_counter()
    state = jax.block_until_ready(optim.run_chunk(loss_fn, optimizer, state, lbfgs_steps))
    seconds = time.perf_counter() - start
    evals, steps = int(state.num_evals) - evals0, int(state.step) - steps0
    return {
        "lbfgs_evals_per_step": round(evals / steps, 3),
        "lbfgs_step_s": round(seconds / steps, 4),
        "lbfgs_overhead_vs_evals": round(seconds / (evals * eval_s) - 1, 3),
    }


def final_images(params, size: int, steps: int, precisions, config: StyleConfig) -> dict:
    """How far each precision's stylised image is from float32's after the same L-BFGS steps."""
    content, style = samples.village(size * 3 // 4, size), samples.swirls(size * 3 // 4, size)
    images = {}
    for p in precisions:
        result = stylize(content, style, config.replace(precision=p, num_steps=steps), params=params)
        images[p] = (result.image, result.loss)
    reference, _ = images.get("highest", next(iter(images.values())))
    out = {"size": f"{size * 3 // 4}x{size}", "steps": steps}
    for p, (image, loss) in images.items():
        difference = np.abs(image - reference)
        out[p] = {
            "loss": round(loss, 4),
            "pixel_abs_diff_mean": round(float(difference.mean()), 5),
            "pixel_abs_diff_max": round(float(difference.max()), 4),
        }
    return out


_CHILD = """
import json, sys, time
start = time.perf_counter()
import jax
totals = {}
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: totals.__setitem__(event, totals.get(event, 0.0) + seconds))
from nst_jax.cli import main
status = main(sys.argv[1:])
wall = time.perf_counter() - start
compile_s = sum(v for k, v in totals.items() if k.startswith("/jax/core/compile/") or "retrieval" in k)
print(json.dumps({"status": status, "wall_s": wall, "compile_s": compile_s, **totals}))
"""


def startup(params, size: int, config: StyleConfig) -> dict:
    """``nst-jax stylize`` at ``size`` px for one step, twice, with a fresh persistent compilation cache.

    compile_s: tracing, lowering and compiling (or loading from the cache) in the process;
    start_s: the process's wall time minus the work it was asked for: its loss+gradient
    evaluations (count printed by the command) and the final forward pass for the loss
    terms, each timed here at the same size; start_s_without_targets: minus also the two
    forward passes that compute the targets (real work, but no start-up cost).
    """
    h, w = 384 * size // 512, size
    content, style = samples.village(h, w), samples.swirls(h, w)
    objective, run, _, _ = _compiled_eval(params, content, style, config)
    eval_s = min(_timeit(run, 3))
    forward = jax.jit(lambda o, x: o(x)[1])
    x = jnp.asarray(content)
    jax.block_until_ready(forward(objective, x))
    forward_s = min(_timeit(lambda: jax.block_until_ready(forward(objective, x)), 3))
    targets = lambda: jax.block_until_ready(make_objective(params, content, style, config))
    targets()
    targets_s = min(_timeit(targets, 3))  # the content's features and the style's Gram matrices
    out = {
        "command": f"nst-jax stylize C S --size {size} --steps 1 --chunk-size 1",
        "eval_s": round(eval_s, 3),
        "targets_s": round(targets_s, 3),
    }
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as folder:
        save_image(f"{folder}/content.png", content)
        save_image(f"{folder}/style.png", style)
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
        argv = ["stylize", f"{folder}/content.png", f"{folder}/style.png", "-o", f"{folder}/out.png"]
        argv += ["--size", str(size), "--steps", "1", "--chunk-size", "1"]
        for which in ("first", "second"):
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, *argv], env=env, capture_output=True, text=True, check=True
            )
            child = json.loads(done.stdout.strip().splitlines()[-1])
            evals = int(re.search(r"(\d+) evaluations", done.stderr).group(1))
            start_s = child["wall_s"] - evals * eval_s - forward_s
            out[which] = {
                "wall_s": round(child["wall_s"], 2),
                "compile_s": round(child["compile_s"], 2),
                "evaluations": evals,
                "start_s": round(start_s, 2),
                "start_s_without_targets": round(start_s - targets_s, 2),
            }
    return out


def big_run(size: int, steps: int) -> dict:
    """A real coarse-to-fine ``nst-jax stylize`` of a square image at ``size`` px in a subprocess: time, peak RSS."""
    scales = ",".join(str(s) for s in (512, 1024, 2048, 4096, 8192) if s < size) + f",{size}"
    with tempfile.TemporaryDirectory() as folder:
        save_image(f"{folder}/content.png", samples.village(512, 512))
        save_image(f"{folder}/style.png", samples.swirls(512, 512))
        options = ["--size", str(size), "--scales", scales, "--steps", str(steps), "-q"]
        argv = ["stylize", f"{folder}/content.png", f"{folder}/style.png", "-o", f"{folder}/big.png", *options]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nst_jax", *argv], check=True)
        wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {
        "command": "nst-jax stylize C S " + " ".join(options),
        "output": f"{size}x{size}",
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(rss, 2),
    }


def targets(report: dict) -> list[dict]:
    """Each target of issue 6, its measured value, and whether it is met."""
    out = []
    for entry in report["sizes"]:
        best = max((p for p in report["precisions"] if "speedup_vs_torch" in entry[p]), default=None,
                   key=lambda p: entry[p]["speedup_vs_torch"])  # fmt: skip
        if best:
            value = entry[best]["speedup_vs_torch"]
            out.append({"target": f"{entry['size']}: torch time / ours >= 1.5", "value": value,
                        "precision": best, "met": value >= 1.5})  # fmt: skip
        for p in report["precisions"]:
            value = entry[p]["fraction_of_matmul_rate"]
            out.append({"target": f"{entry['size']} {p}: GFLOP/s / f32 matmul GFLOP/s >= 1", "value": value,
                        "met": value >= 1.0})  # fmt: skip
    if "startup" in report:
        first, second = report["startup"]["first"], report["startup"]["second"]
        out.append({"target": "first start compiles in <= 15 s", "value": first["compile_s"],
                    "met": first["compile_s"] <= 15})  # fmt: skip
        out.append({"target": "second start < 3 s", "value": second["start_s"], "met": second["start_s"] < 3})
    if "big" in report:
        out.append({"target": "big run peak RSS <= 24 GiB", "value": report["big"]["peak_rss_gib"],
                    "met": report["big"]["peak_rss_gib"] <= 24})  # fmt: skip
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lbfgs-steps", type=int, default=10, help="L-BFGS steps timed per size (0: skip)")
    parser.add_argument("--padding", default="zeros", choices=("zeros", "reflect"))
    parser.add_argument("--precisions", nargs="+", default=["highest", "bf16"], choices=vgg.PRECISIONS)
    parser.add_argument("--image-steps", type=int, default=30, help="L-BFGS steps of the final-image comparison")
    parser.add_argument("--no-startup", action="store_true", help="skip the first/second start measurement")
    parser.add_argument("--big", type=int, default=0, help="also run a real coarse-to-fine stylisation this large")
    parser.add_argument("--big-steps", type=int, default=10, help="steps per scale of the --big run")
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
        "precisions": args.precisions,
        "matmul_gflops_f32": round(_matmul_gflops(args.repeats, jnp.float32), 1),
        "matmul_gflops_bf16": round(_matmul_gflops(args.repeats, jnp.bfloat16), 1),
        "sizes": [],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "sizes"}), flush=True)
    for size in args.sizes:
        entry = bench_size(params, size, size, config, args.precisions, args.repeats, args.lbfgs_steps, use_torch)
        for p in args.precisions:
            entry[p]["fraction_of_matmul_rate"] = round(entry[p]["gflops_achieved"] / report["matmul_gflops_f32"], 3)
        report["sizes"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.image_steps and len(args.precisions) > 1:
        report["final_images"] = final_images(params, 256, args.image_steps, args.precisions, config)
        print(json.dumps(report["final_images"]), flush=True)
    if not args.no_startup:
        report["startup"] = startup(params, 512, config)
        print(json.dumps(report["startup"]), flush=True)
    if args.big:
        report["big"] = big_run(args.big, args.big_steps)
        print(json.dumps(report["big"]), flush=True)
    report["targets"] = targets(report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
