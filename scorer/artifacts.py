"""Versioned model artifacts: one folder per version under a model dir, newest by name.

    models/20261129T051500Z-3fa2c1d0/model.joblib   the fitted models
    models/20261129T051500Z-3fa2c1d0/meta.json      version, members, metrics, data fingerprint

A version is written to a hidden temp folder and renamed into place, so a scorer polling the dir
never sees half an artifact.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import joblib

_VERSION = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
MODEL_FILE = "model.joblib"
META_FILE = "meta.json"


@dataclasses.dataclass
class Artifact:
    version: str
    models: dict[str, Any]  # "line": LineEnsemble, "block": BlockModel
    meta: dict[str, Any]


class ArtifactError(Exception):
    """A model dir or artifact that cannot be used; the message says why and what to do."""


def new_version(fingerprint: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + fingerprint[:8]


def save(model_dir: Path, version: str, models: dict[str, Any], meta: dict[str, Any]) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        joblib.dump(models, staging / MODEL_FILE, compress=3)
        (staging / META_FILE).write_text(json.dumps({**meta, "version": version}, indent=2, sort_keys=True))
        final = model_dir / version
        os.rename(staging, final)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def versions(model_dir: Path) -> list[str]:
    """Complete artifact versions in `model_dir`, oldest first."""
    if not model_dir.is_dir():
        return []
    return sorted(p.name for p in model_dir.iterdir() if _VERSION.match(p.name) and (p / META_FILE).exists())


def newest(model_dir: Path) -> str | None:
    found = versions(model_dir)
    return found[-1] if found else None


def load(model_dir: Path, version: str) -> Artifact:
    path = model_dir / version
    try:
        meta = json.loads((path / META_FILE).read_text())
        models = joblib.load(path / MODEL_FILE)
    except Exception as exc:
        raise ArtifactError(f"artifact {path} is unreadable ({type(exc).__name__}: {exc}); "
                            f"retrain with `logmesh train --out {model_dir}` or delete it") from exc
    if not isinstance(models, dict) or not {"line", "block"} <= set(models):
        raise ArtifactError(f"artifact {path} lacks the line or block model; "
                            f"retrain with `logmesh train --out {model_dir}`")
    return Artifact(version, models, meta)
