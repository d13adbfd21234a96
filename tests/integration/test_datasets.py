"""`logmesh datasets`: fetching from a real local HTTP server (http.server, with Range support written here) that
serves small archives the tests make: a full download, a download cut mid-body and resumed, a server that ignores
Range, a checksum mismatch, a host that refuses connections, zip and tar.gz unpacking, the CLI's list and fetch."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from logmesh.cli import main
from logmesh.ingest import datasets
from logmesh.ingest.datasets import Dataset, DatasetError, Offline, fetch

LOG = "".join(f"081109 2035{i % 60:02d} {i} INFO dfs.DataNode$PacketResponder: Received block blk_{i} of size 1\n"
              for i in range(3000)).encode()
LABELS = b"BlockId,Label\n" + b"".join(f"blk_{i},Normal\n".encode() for i in range(3000))


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # stored: the archive is big enough to cut mid-way
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def make_tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


HDFS_ZIP = make_zip({"HDFS.log": LOG, "preprocessed/anomaly_label.csv": LABELS, "README.md": b"test archive\n"})


def spec(name: str, archive: str, payload: bytes, needs=("HDFS.log", "anomaly_label.csv"), md5: str | None = None):
    return Dataset(name, archive, len(payload), md5 or hashlib.md5(payload).hexdigest(), len(payload) * 4, needs,
                   "a small archive made by the test")


class Files:
    """What the server serves and what it saw: files by name, a cut (send this many body bytes of the next
    response, then drop the connection), whether it honours Range, the Range header of every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_next: int | None = None
        self.honour_range = True
        self.ranges: list[str | None] = []


def serve(files: Files) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/").split("?")[0]
            files.ranges.append(self.headers.get("Range"))
            data = files.files.get(name)
            if data is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and files.honour_range:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if files.cut_next is not None:  # a connection that breaks mid-body
                cut, files.cut_next = files.cut_next, None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def mirror():
    files = Files()
    server = serve(files)
    yield files, f"http://127.0.0.1:{server.server_address[1]}/loghub"
    server.shutdown()
    server.server_close()


def put(files: Files, ds: Dataset, payload: bytes) -> None:
    files.files[f"loghub/{ds.archive}"] = payload


def test_full_download_verifies_writes_sha256_and_unpacks(mirror, tmp_path):
    files, url = mirror
    ds = spec("hdfs", "HDFS_v1.zip", HDFS_ZIP)
    put(files, ds, HDFS_ZIP)
    done = fetch(ds, tmp_path, mirror=url, progress=False)
    assert done.downloaded and done.folder == tmp_path / "hdfs"
    assert (done.folder / "HDFS.log").read_bytes() == LOG
    # loghub's preprocessed/anomaly_label.csv is also put beside the log, where `logmesh train` reads it
    assert (done.folder / "anomaly_label.csv").read_bytes() == LABELS
    assert (done.folder / "preprocessed" / "anomaly_label.csv").read_bytes() == LABELS
    sha = hashlib.sha256(HDFS_ZIP).hexdigest()
    assert done.sha256 == sha
    assert (tmp_path / "archives" / "HDFS_v1.zip").read_bytes() == HDFS_ZIP
    assert (tmp_path / "archives" / "HDFS_v1.zip.sha256").read_text() == f"{sha}  HDFS_v1.zip\n"
    marker = json.loads((done.folder / datasets.MARKER).read_text())
    assert marker["md5"] == ds.md5 and marker["sha256"] == sha and marker["source"] == f"{url}/HDFS_v1.zip"
    assert not list(tmp_path.glob("archives/*.part")) and not list(tmp_path.glob(".hdfs.*"))
    assert files.ranges == [None]

    again = fetch(ds, tmp_path, mirror=url, progress=False)  # present: nothing is fetched
    assert again.was_present and not again.downloaded and files.ranges == [None]


def test_cut_connection_is_resumed_with_range_in_the_same_run_and_in_the_next(mirror, tmp_path):
    files, url = mirror
    ds = spec("hdfs", "HDFS_v1.zip", HDFS_ZIP)
    put(files, ds, HDFS_ZIP)
    cut = len(HDFS_ZIP) // 3

    files.cut_next = cut  # one try only: the run ends with the bytes received kept in the .part file
    with pytest.raises(DatasetError, match="resumes from there"):
        fetch(ds, tmp_path, mirror=url, attempts=1, wait_s=0.01, progress=False)
    part = tmp_path / "archives" / "HDFS_v1.zip.part"
    assert part.read_bytes() == HDFS_ZIP[:cut]
    assert not (tmp_path / "hdfs").exists() and not (tmp_path / "archives" / "HDFS_v1.zip").exists()
    assert datasets.state(ds, tmp_path).status == "partial"

    files.cut_next = 1000  # the next run resumes at `cut`, is cut again, retries from where that one ended
    done = fetch(ds, tmp_path, mirror=url, attempts=3, wait_s=0.01, progress=False)
    assert files.ranges == [None, f"bytes={cut}-", f"bytes={cut + 1000}-"]
    assert done.sha256 == hashlib.sha256(HDFS_ZIP).hexdigest()
    assert (done.folder / "HDFS.log").read_bytes() == LOG and not part.exists()


def test_a_server_that_ignores_range_sends_the_whole_file_again(mirror, tmp_path):
    files, url = mirror
    ds = spec("hdfs", "HDFS_v1.zip", HDFS_ZIP)
    put(files, ds, HDFS_ZIP)
    part = tmp_path / "archives" / "HDFS_v1.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(HDFS_ZIP[:5000])
    files.honour_range = False
    done = fetch(ds, tmp_path, mirror=url, progress=False)
    assert files.ranges == ["bytes=5000-"]
    assert (tmp_path / "archives" / "HDFS_v1.zip").read_bytes() == HDFS_ZIP and done.folder.is_dir()


def test_checksum_mismatch_keeps_nothing_and_says_what_to_do(mirror, tmp_path):
    files, url = mirror
    ds = spec("hdfs", "HDFS_v1.zip", HDFS_ZIP, md5="0" * 32)
    put(files, ds, HDFS_ZIP)
    with pytest.raises(DatasetError) as caught:
        fetch(ds, tmp_path, mirror=url, progress=False)
    message = str(caught.value)
    assert "is not Zenodo's file" in message and "removed and nothing was unpacked" in message
    assert "md5sum HDFS_v1.zip" in message  # the manual steps
    assert sorted(p.name for p in (tmp_path / "archives").iterdir()) == []
    assert not (tmp_path / "hdfs").exists() and datasets.state(ds, tmp_path).status == "absent"


def test_an_archive_copied_by_hand_is_verified_and_unpacked_without_network(tmp_path):
    ds = spec("hdfs", "HDFS_v1.zip", HDFS_ZIP)
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / "HDFS_v1.zip").write_bytes(HDFS_ZIP)
    done = fetch(ds, tmp_path, mirror="http://127.0.0.1:9/none", progress=False)  # the mirror is never asked
    assert not done.downloaded and (done.folder / "anomaly_label.csv").read_bytes() == LABELS


def test_tar_gz_of_one_folder_is_unpacked_to_the_dataset_folder(mirror, tmp_path):
    files, url = mirror
    payload = make_tgz({"BGL/BGL.log": b"- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 x RAS KERNEL INFO ok\n",
                        "BGL/README.md": b"x\n"})
    ds = spec("bgl", "BGL.tar.gz", payload, needs=("BGL.log",))
    put(files, ds, payload)
    done = fetch(ds, tmp_path, mirror=url, progress=False)
    assert sorted(p.name for p in done.folder.iterdir()) == [datasets.MARKER, "BGL.log", "README.md"]


def test_archive_members_outside_the_folder_are_refused(mirror, tmp_path):
    files, url = mirror
    payload = make_zip({"../escape.log": b"x\n", "BGL.log": b"y\n"})
    ds = spec("bgl", "BGL.zip", payload, needs=("BGL.log",))
    put(files, ds, payload)
    with pytest.raises(DatasetError, match="outside"):
        fetch(ds, tmp_path, mirror=url, progress=False)
    assert not (tmp_path / "escape.log").exists() and not (tmp_path / "bgl").exists()


def test_a_folder_fetch_did_not_make_is_not_replaced_without_force(mirror, tmp_path):
    files, url = mirror
    ds = spec("hdfs", "HDFS_v1.zip", HDFS_ZIP)
    put(files, ds, HDFS_ZIP)
    (tmp_path / "hdfs").mkdir()
    (tmp_path / "hdfs" / "mine.txt").write_text("a user's file")
    with pytest.raises(DatasetError, match="--force"):
        fetch(ds, tmp_path, mirror=url, progress=False)
    assert (tmp_path / "hdfs" / "mine.txt").exists() and files.ranges == []


def _refused_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/loghub"


def test_unreachable_host_is_one_error_line_exit_2_and_the_manual_steps(tmp_path):
    url = _refused_url()
    with pytest.raises(Offline):
        fetch(datasets.DATASETS["bgl"], tmp_path, mirror=url, wait_s=0.01, progress=False)
    run = subprocess.run([sys.executable, "-m", "logmesh.cli", "datasets", "fetch", "hdfs", "--dest", str(tmp_path),
                          "--mirror", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach 127.0.0.1" in errors[0] and "no network?" in errors[0]
    assert "download https://" not in run.stderr and f"download {url}/HDFS_v1.zip" in run.stderr
    assert "md5sum HDFS_v1.zip" in run.stderr and "76a24b4d9a6164d543fb275f89773260" in run.stderr
    assert not (tmp_path / "hdfs").exists()


def test_cli_mirror_serving_another_file_is_refused(mirror, tmp_path):
    files, url = mirror
    files.files["loghub/BGL.zip"] = make_zip({"BGL.log": b"not the real BGL\n"})
    run = subprocess.run([sys.executable, "-m", "logmesh.cli", "datasets", "fetch", "bgl", "--dest", str(tmp_path),
                          "--no-progress"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, datasets.MIRROR_ENV: url})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "is not Zenodo's file" in run.stderr and "4452953c470f2d95fcb32d5f6e733f7a" in run.stderr
    assert files.ranges == [None] and not (tmp_path / "bgl").exists()
    assert not any((tmp_path / "archives").iterdir())


def test_cli_fetch_then_list(mirror, tmp_path, monkeypatch, capsys):
    files, url = mirror
    ds = spec("bgl", "BGL.zip", make_zip({"BGL.log": b"- 1 x\n"}), needs=("BGL.log",))
    put(files, ds, make_zip({"BGL.log": b"- 1 x\n"}))
    # the catalog's real BGL entry (57 MB on Zenodo) stands aside for this small archive with its own md5
    monkeypatch.setitem(datasets.DATASETS, "bgl", ds)
    monkeypatch.setenv("LOGMESH_DATA", str(tmp_path))  # the default data root
    assert main(["datasets", "list", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)["datasets"]}
    assert listed["bgl"]["status"] == "absent" and listed["hdfs"]["status"] == "absent"
    assert listed["hdfs"]["url"] == "https://zenodo.org/records/8196385/files/HDFS_v1.zip?download=1"

    assert main(["datasets", "fetch", "bgl", "--mirror", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"bgl: {tmp_path / 'bgl'}" in out and hashlib.sha256(files.files["loghub/BGL.zip"]).hexdigest() in out
    assert main(["datasets", "fetch", "bgl", "--mirror", url]) == 0
    assert "already present" in capsys.readouterr().out and files.ranges == [None]

    assert main(["datasets", "list", "--dest", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^bgl: present \(unpacked \S+, sha256 [0-9a-f]{64}\)$", text, re.M)
    assert re.search(r"^hdfs: not here$", text, re.M)
