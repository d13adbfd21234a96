"""BGL material the tests share: the real samples in ../shared/data/bgl (LOGMESH_BGL_DATA), read in place, and a
BGL artifact trained on a slice of them with the real embedding model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BGL = Path(os.environ.get("LOGMESH_BGL_DATA", REPO.parent / "shared" / "data" / "bgl"))
TRAIN = ("BGL_2k.log", "BGL_4k.log", "BGL_templates.csv")


def bgl_data(name: str = "BGL_6k.log") -> Path:
    if not (BGL / name).exists():
        pytest.fail(f"real BGL data not found at {BGL}; set LOGMESH_BGL_DATA to a folder with loghub's BGL samples")
    return BGL / name


def train_bgl_models(tmp_path_factory, encode) -> Path:  # type: ignore[no-untyped-def]
    """A model dir with one BGL artifact trained on BGL_2k + BGL_4k (chronological cut; no leave-one-out, for
    speed): ~30 s on the polyglot box."""
    from logmesh.scorer import bgl
    bgl_data("BGL_4k.log")
    d = tmp_path_factory.mktemp("bgl")
    for name in TRAIN:
        (d / name).symlink_to(BGL / name)
    out = tmp_path_factory.mktemp("bgl-models")
    bgl.train_bgl(d, out, encode, seed=0, loco=False)
    return out
