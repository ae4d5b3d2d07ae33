"""The README's Python blocks run as written, in order, from an empty folder, on the installed package."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path):
    blocks = python_blocks()
    # One interpreter for all blocks (later blocks use earlier names, as a reader's session would);
    # each block is compiled under its own name so a failure says which one.
    program = "\n".join(
        f"exec(compile({block!r}, 'README python block {i + 1}', 'exec'))" for i, block in enumerate(blocks)
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out.png").is_file() and (tmp_path / "out" / "sweep.json").is_file()
