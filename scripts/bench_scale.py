"""One image over several devices: memory per device and seconds per evaluation, sharded and not, as JSON.

For 1, 2 and 4 devices (forced host devices on a CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
one subprocess each, since the count is fixed when JAX starts) and each ``--sizes`` square:

* ``bytes_per_device``: XLA's memory analysis of the compiled optimisation loop
  (:func:`nst_jax.transfer.memory_needed`), one device's share with ``--shard-image``'s row split,
  the whole program without;
* ``eval_s``: seconds per loss+gradient evaluation (jitted, warm, best of ``--repeats``).

Then, from the same analysis, the largest square whose plan fits this machine's memory,
without and with the split (``nst-jax ... --dry-run`` reports the same figures). Forced host
devices share the CPU's cores and its memory: their times show the split's overhead, not a
speed-up, and on one host the split cannot make more memory; on GPUs or TPUs each device
brings its own.

    python scripts/bench_scale.py --sizes 512 1024 --devices 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = """
import json, math, sys, time
import jax, jax.numpy as jnp, numpy as np
from nst_jax import StyleConfig, load_params, make_objective, optim, samples
from nst_jax.transfer import memory_needed
from nst_jax.memory import available_memory

sizes, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
params = jax.tree.map(jnp.asarray, load_params()[0])  # real weights: random ones underflow to slow denormals
n = len(jax.devices())
mesh = optim.image_mesh() if n > 1 else None
free = available_memory(jax.devices()[0])
for size in sizes:
    content, style = samples.village(size, size), samples.swirls(512, 512)
    config = StyleConfig(size=size)
    for sharded in ([False, True] if mesh is not None else [False]):
        m = mesh if sharded else None
        shape = jax.ShapeDtypeStruct((size, size, 3), jnp.float32)
        plan = memory_needed(shape, jax.ShapeDtypeStruct((512, 512, 3), jnp.float32), config, params=params, mesh=m)
        objective = make_objective(params, content, style, config)
        loss_fn = jax.tree_util.Partial(type(objective).value, objective)
        image = jnp.asarray(content)
        if m is not None:
            loss_fn, image = optim.shard_rows((loss_fn, image), image.shape, m)
        evaluate = jax.jit(jax.value_and_grad(lambda f, x: f(x), argnums=1))  # the image gradient
        jax.block_until_ready(evaluate(loss_fn, image))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(evaluate(loss_fn, image))
            times.append(time.perf_counter() - start)
        print(json.dumps({"devices": n, "size": size, "sharded": sharded, "bytes_per_device": plan,
                          "eval_s": round(min(times), 3)}), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for n in args.devices:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHILD), json.dumps(args.sizes), str(args.repeats)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        for line in done.stdout.splitlines():
            rows.append(json.loads(line))
            print(line, flush=True)
    base = {(r["size"]): r for r in rows if r["devices"] == 1}
    for r in rows:
        whole = base.get(r["size"])
        if whole:
            r["bytes_vs_one_device"] = round(r["bytes_per_device"] / whole["bytes_per_device"], 3)
            r["time_vs_one_device"] = round(r["eval_s"] / whole["eval_s"], 2)
    import jax

    from nst_jax.memory import RSS_OVER_ANALYSIS, available_memory

    free = available_memory(jax.devices()[0])
    largest = {}
    big = max(args.sizes)
    for r in rows:
        if r["size"] != big:
            continue
        per_pixel = r["bytes_per_device"] / big**2  # the plan grows with the pixels (fixed costs aside)
        budget = free / (r["devices"] if r["sharded"] else 1)  # forced devices share this host's memory
        key = f"{r['devices']} devices, {'sharded' if r['sharded'] else 'not sharded'}"
        largest[key] = int((budget / (RSS_OVER_ANALYSIS * per_pixel)) ** 0.5)
    print(json.dumps({"rows": rows, "free_bytes": free, "largest_square_that_fits": largest}, indent=1))


if __name__ == "__main__":
    main()
