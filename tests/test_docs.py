"""The README and the manual (docs/): every page is in mkdocs' nav, the manual builds in strict
mode, and every Python block runs as written, in order, from an empty folder, on the installed package."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def nav_pages() -> list[Path]:
    """The manual's pages in mkdocs.yml's nav order."""
    return [DOCS / name for name in re.findall(r"^\s*- [^:]+: (\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.S | re.M)


def test_every_page_is_in_the_nav_and_the_readme_links_to_it():
    pages = nav_pages()
    assert sorted(pages) == sorted(DOCS.glob("*.md"))
    readme = README.read_text()
    missing = [page.name for page in pages if f"(docs/{page.name})" not in readme]
    assert missing == []
    assert len(readme.splitlines()) <= 150  # a newcomer's five minutes; the rest is the manual's


def test_readme_and_manual_have_python_blocks():
    assert len(python_blocks(README)) >= 1
    assert sum(len(python_blocks(page)) for page in nav_pages()) >= 3


def test_the_manual_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocstrings", reason='the manual needs pip install ".[docs]"')
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "api.html").is_file()


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path):
    sources = [README, *nav_pages()]
    blocks = [(f"{path.relative_to(ROOT)} python block {i + 1}", block) for path in sources
              for i, block in enumerate(python_blocks(path))]  # fmt: skip
    # One interpreter for all blocks (later blocks use earlier names, as a reader's session would);
    # each block is compiled under its own name so a failure says which one.
    program = "\n".join(f"exec(compile({block!r}, {name!r}, 'exec'))" for name, block in blocks)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out.png").is_file() and (tmp_path / "out" / "sweep.json").is_file()
