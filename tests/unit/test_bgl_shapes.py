"""BGL's masked shape: register dumps, chip ids and paths are masked, so lines of one kind share one shape (one
embedding, one verdict) instead of a shape per printed value; training and serving build it the same way."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from logmesh.ingest.families import record_shape
from logmesh.ingest.families.bgl import BglFamily

HEAD = "- 1117838583 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.43.03.623873 R02-M1-N0-C:J12-U11 RAS"


def shape(message: str, level: str = "FATAL", component: str = "KERNEL") -> str:
    return BglFamily().parse(f"{HEAD} {component} {level} {message}").record.shape


def test_register_dumps_that_differ_only_in_values_are_one_shape():
    a = shape("0:0b0f8cd4 1:ffffffff 2:0000002c 3:1eeeeeee")
    b = shape("0:00d3b3e0 1:2f4c0a91 2:feaa9b30 3:ffffffff")
    assert a == b == "KERNEL FATAL: <NUM>:<HEX> <NUM>:<HEX> <NUM>:<HEX> <NUM>:<HEX>"
    assert shape("r12=0x000000a4 dear 0a1b2c3d") == "KERNEL FATAL: r<NUM>=<HEX> dear <HEX>"


def test_numbers_words_and_node_ids_keep_their_common_masking():
    assert shape("rts: kernel terminated for reason 1004") == "KERNEL FATAL: rts: kernel terminated for reason <NUM>"
    assert shape("Power deactivated: R05-M0-N4") == "KERNEL FATAL: Power deactivated: R<NUM>-M<NUM>-N<NUM>"
    assert shape("rts tree/torus link training failed", "INFO") == "KERNEL INFO: rts tree/torus link training failed"
    assert shape("instruction cache parity error corrected", "INFO") == (
        "KERNEL INFO: instruction cache parity error corrected")


def test_chip_ids_and_paths_are_masked():
    assert shape("Ido chip status changed: FF:F2:9F:16:E5:54:00:0D:47 ip=10.0.0.1", "INFO", "DISCOVERY") == (
        "DISCOVERY INFO: Ido chip status changed: <HEX> ip=<IP>")
    a = shape("ciod: LOGIN chdir(/p/gb1/stella/RAPTOR/13) failed: Input/output error", component="APP")
    b = shape("ciod: LOGIN chdir(/home/germann2/SPaSM_static) failed: Input/output error", component="APP")
    assert a == b == "APP FATAL: ciod: LOGIN chdir(<PATH>) failed: Input/output error"
    assert shape("ciod: Error loading /bgl/apps/a.out: invalid or missing program image", component="APP") == (
        "APP FATAL: ciod: Error loading <PATH>: invalid or missing program image")


def test_serving_builds_the_shape_training_reads():
    family = BglFamily()
    for text in (f"{HEAD} KERNEL FATAL 0:0b0f8cd4 1:ffffffff", f"{HEAD} APP FATAL ciod: Error loading /x/y: bad"):
        assert record_shape(family.record(text)) == family.parse(text).record.shape


BGL = Path(os.environ.get("LOGMESH_BGL_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bgl"))


def test_a_real_sample_has_far_fewer_shapes_than_lines_of_one_kind():
    if not (BGL / "BGL_16k.log").exists():
        pytest.fail(f"real BGL data not found at {BGL}; set LOGMESH_BGL_DATA to a folder with loghub's BGL samples")
    family = BglFamily()
    lines = (BGL / "BGL_16k.log").read_text().splitlines()
    shapes = Counter(family.parse(line).record.shape for line in lines if line)
    assert len(shapes) < 400  # 991 with the common masking alone
