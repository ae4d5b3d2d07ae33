"""Prints the project's runtime dependencies pinned to their declared floors (`>=X` -> `==X`), one per line."""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)", requirement.strip())
    if match is None:
        raise SystemExit(f"floors: {requirement!r} has no plain '>=' floor to pin")
    print(f"{match[1]}=={match[2]}")
