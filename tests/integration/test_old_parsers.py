"""The contracts parse with a .proto parser from before proto3 `optional` (jhump/protoreflect v1.6.1's
protoparse, the kind load-testing and mocking tools embed): no field label other than `repeated`."""
from __future__ import annotations

import subprocess
from pathlib import Path

from go_tools import old_parser

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def test_every_proto_parses_with_a_pre_proto3_optional_parser():
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    assert "logmesh/v1/scorer_service.proto" in files
    done = subprocess.run([str(old_parser()), "-I", str(PROTOS), *files], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(files)


def test_the_old_parser_does_refuse_proto3_optional(tmp_path):
    """The check bites: the same parser refuses a file with a proto3 `optional` field."""
    (tmp_path / "x.proto").write_text('syntax = "proto3";\npackage x;\nmessage M { optional M m = 1; }\n')
    done = subprocess.run([str(old_parser()), "-I", str(tmp_path), "x.proto"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "LABEL_OPTIONAL" in done.stderr, done.stderr
