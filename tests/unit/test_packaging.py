"""Every folder pyproject installs as a `logmesh.*` package is one the image copies: a new room (runtime/, cli/)
that the Dockerfile forgets builds an image whose `logmesh` fails on its first import."""
from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_image_copies_every_package_folder():
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    copied = {line.split()[1] for line in (REPO / "deploy/docker/Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and not line.startswith("COPY --")}
    missing = [f for f in folders if not any(f == c or f.startswith(c.rstrip("/") + "/") for c in copied)]
    assert not missing, f"deploy/docker/Dockerfile copies no {missing}"


def test_the_console_script_is_the_cli_package():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"logmesh": "logmesh.cli:main"}
    assert (REPO / "cli/__init__.py").is_file() and not (REPO / "clients/python/logmesh/cli.py").exists()
