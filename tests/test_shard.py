"""One image over several devices (--shard-image, stylize(mesh=...)) and the memory plan (--dry-run).

Several devices need XLA_FLAGS before JAX starts, so these checks run in a subprocess with
four forced host devices.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nst_jax import cli, samples, save_image

FOUR = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


def _run_four(code: str, cwd, timeout: int = 900) -> str:
    # cwd: not the checkout, whose ./nst_jax (without nst_jax.converters) would shadow the installed package
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=FOUR, capture_output=True, text=True, timeout=timeout,
        cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


_EQUAL = """
import jax, jax.numpy as jnp, numpy as np
from nst_jax import StyleConfig, optim, samples, stylize, vgg
from nst_jax.transfer import memory_needed

assert len(jax.devices()) == 4
params = vgg.init_params(jax.random.key(0))
mesh = optim.image_mesh()
content, style = samples.village(64, 48), samples.swirls(40, 40)
cases = {
    # coarse to fine: the 32 x 24 stage splits too (32 rows), as does the 64 x 48 one
    "stylize": dict(content=content, style=style, config=StyleConfig(num_steps=6, coarse_steps=3, scales=(32, 64))),
    # a coarser stage whose rows do not divide (22) runs on one device
    "odd stage": dict(content=content, style=style, config=StyleConfig(num_steps=4, coarse_steps=3, scales=(22, 64))),
    "texture": dict(content=None, style=style, shape=(32, 40), config=StyleConfig(num_steps=5, init="noise")),
    "reconstruct": dict(content=content, style=None,
                        config=StyleConfig(num_steps=5, init="noise", content_layers=("relu2_1",))),
}
for name, kw in cases.items():
    one = stylize(params=params, **kw)
    four = stylize(params=params, mesh=mesh, **kw)
    assert one.num_steps == four.num_steps, name
    np.testing.assert_allclose(four.loss, one.loss, rtol=1e-3, err_msg=name)
    # Float32 sums in another order drift L-BFGS apart by a few pixels over the steps (a coarser
    # stage's result, upsampled, carries its own drift): the mean difference stays tiny.
    np.testing.assert_allclose(four.image, one.image, atol=3e-2, err_msg=name)
    assert np.abs(four.image - one.image).mean() < 1e-3, (name, np.abs(four.image - one.image).mean())
    print(name, one.loss, four.loss, float(np.abs(four.image - one.image).max()))

# The L-BFGS history is split by rows, not replicated on every device.
obj_image = jnp.asarray(content)
objective = __import__("nst_jax").make_objective(params, content, style, StyleConfig())
loss_fn = jax.tree_util.Partial(type(objective).value, objective)
loss_fn, image = optim.shard_rows((loss_fn, obj_image), obj_image.shape, mesh)
state = optim.init_loop(loss_fn, optim.make_optimizer("lbfgs"), image, mesh)
for leaf in jax.tree.leaves(state):
    if leaf.ndim >= 3 and leaf.shape[-3:] == obj_image.shape:
        assert leaf.addressable_shards[0].data.shape[-3] == 16, leaf.sharding

# The plan: at 1024 px, a device's share is at most 0.35x the one-device program.
shape = jax.ShapeDtypeStruct((1024, 1024, 3), jnp.float32)
style_shape = jax.ShapeDtypeStruct((512, 512, 3), jnp.float32)
whole = memory_needed(shape, style_shape, StyleConfig(size=1024), params=params)
split = memory_needed(shape, style_shape, StyleConfig(size=1024), params=params, mesh=mesh)
print("plan", whole, split, split / whole)
assert split <= 0.35 * whole
print("ok")
"""


@pytest.mark.slow
def test_a_sharded_image_equals_the_one_device_run(tmp_path):
    _run_four(_EQUAL, tmp_path)


_CLI = """
import json, sys, io, contextlib
from pathlib import Path
from nst_jax import cli, memory

out = Path(sys.argv[1])
out.mkdir()
argv = ["demo", "-o", str(out / "demo.png"), "--size", "64", "--steps", "2", "-q", "--shard-image"]

# The plan: one JSON line on stdout, nothing written.
buffer = io.StringIO()
with contextlib.redirect_stdout(buffer):
    assert cli.main([*argv, "--dry-run"]) == 0
plan = json.loads(buffer.getvalue().strip())
assert plan["devices"] == 4 and plan["sharded"] and plan["shape"] == [48, 64], plan
assert plan["bytes_per_device"] > 0 and plan["fits"] is True and plan["limit_bytes"] > 0, plan
assert not any(out.iterdir())

# Rows that do not divide: one line naming sizes that do.
assert cli.main(["demo", "-o", str(out / "demo.png"), "--size", "66", "--shard-image", "--steps", "2", "-q"]) == 2

# A size that fits only when split says so: as on GPUs, each device with its own (here 5 MiB) memory.
memory.limit_per_device = lambda sharded: 5 * 2**20
assert cli.main(["demo", "-o", str(out / "demo.png"), "--size", "64", "--steps", "2", "-q"]) == 2
print("ok")
"""


@pytest.mark.slow
def test_cli_shard_image_and_dry_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CLI), str(tmp_path / "out")], env=FOUR, capture_output=True,
        text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-4000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("nst-jax: error:")]
    assert errors[0] == (
        "nst-jax: error: --shard-image: the output's 50 rows do not split evenly over 4 devices; "
        "--size 64 or 69 gives 48 or 52 rows"
    )
    assert "it would fit with its rows split over the 4 devices" in errors[1] and "--shard-image" in errors[1]
    assert not any((tmp_path / "out").iterdir())


def test_shard_image_with_one_device_is_a_no_op_said_once(tmp_path, capsys, real_params):
    out = tmp_path / "demo.png"
    assert cli.main(["demo", "-o", str(out), "--size", "32", "--steps", "2", "-q", "--shard-image"]) == 0
    err = capsys.readouterr().err
    assert err.count("--shard-image: one device") == 1 and "nothing to split" in err
    assert out.is_file()


@pytest.mark.parametrize("command", ["stylize", "texture", "reconstruct"])
def test_dry_run_prints_one_json_line_and_writes_nothing(tmp_path, capsys, command, real_params):
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    save_image(content, samples.village(48, 64))
    save_image(style, samples.swirls(48, 48))
    out = tmp_path / "out" / "o.png"
    out.parent.mkdir()
    argv = {
        "stylize": ["stylize", str(content), str(style), "--size", "64"],
        "texture": ["texture", str(style), "--size", "40x32"],
        "reconstruct": ["reconstruct", str(content), "--layers", "relu2_1", "--size", "64"],
    }[command]
    assert cli.main([*argv, "-o", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    plan = json.loads(lines[0])
    assert plan["command"] == command and plan["devices"] == 1 and not plan["sharded"]
    assert plan["shape"] == ([32, 40] if command == "texture" else [48, 64])
    assert {"bytes_per_device", "limit_bytes", "fits"} <= set(plan)
    assert not any(out.parent.iterdir())
    assert np.isfinite(plan["bytes_per_device"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(argv_of, tmp_path):
    """Runs ``nst-jax`` in two processes on localhost (JAX's gloo CPU collectives); returns their results."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cluster = lambda i: ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nst_jax", *argv_of(i), *cluster(i), "--coordinator-timeout", "120"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, real_params):
    from PIL import Image

    content, style = tmp_path / "c.png", tmp_path / "s.png"
    save_image(content, samples.village(32, 32))
    save_image(style, samples.swirls(32, 32))
    # One image split by rows over the two processes' devices; process 0 alone writes.
    common = ["stylize", str(content), str(style), "--size", "32", "--steps", "3", "-q"]
    _two_processes(lambda i: [*common, "-o", str(tmp_path / f"two{i}.png"), "--shard-image"], tmp_path)
    assert (tmp_path / "two0.png").is_file() and not (tmp_path / "two1.png").exists()
    assert cli.main([*common, "-o", str(tmp_path / "one.png")]) == 0
    two = np.asarray(Image.open(tmp_path / "two0.png"), np.int16)
    one = np.asarray(Image.open(tmp_path / "one.png"), np.int16)
    assert np.abs(two - one).max() <= 2  # 8-bit levels
    # A sweep's members spread over the two processes.
    common = ["sweep", str(content), str(style), "--size", "32", "--steps", "3", "-q"]
    common += ["--vary", "style_weight=10,100,1e3"]
    _two_processes(lambda i: [*common, "-o", str(tmp_path / f"sweep{i}")], tmp_path)
    assert (tmp_path / "sweep0" / "sweep.json").is_file() and not (tmp_path / "sweep1").exists()
    assert cli.main([*common, "-o", str(tmp_path / "sweep")]) == 0
    losses = lambda folder: [m["loss"] for m in json.loads((tmp_path / folder / "sweep.json").read_text())["members"]]
    np.testing.assert_allclose(losses("sweep0"), losses("sweep"), rtol=1e-3)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--coordinator", "127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1",
          "--coordinator-timeout", "2"], "--coordinator 127.0.0.1:{port} did not answer within 2 s"),
        (["--num-processes", "2"], "--num-processes and --process-id need --coordinator HOST:PORT"),
        (["--coordinator", "nowhere"], "--coordinator must look like HOST:PORT or be 'auto', got 'nowhere'"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
        (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0", "--checkpoint-every", "5"],
         "checkpoints (--resume, --checkpoint-every) are for one process only"),
    ],
)  # fmt: skip
def test_coordinator_mistakes_are_one_line(tmp_path, capsys, extra, match):
    port = _free_port()
    extra = [a.format(port=port) for a in extra]
    out = tmp_path / "o.png"
    assert cli.main(["demo", "-o", str(out), "--size", "32", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nst-jax: error: ") and err.count("\n") == 1 and match.format(port=port) in err
    assert not out.exists()
