"""The full public log datasets (loghub's Zenodo record 10.5281/zenodo.8196385): what is known about each, where
it lives on this machine, and fetching one: download (resumable, ingest/download.py), md5 check against the
checksum Zenodo publishes, a sha256 written beside the archive, unpacking into DEST/<name>/.

DEST (the data root) holds `archives/` (the verified archives, each with NAME.sha256 beside it) and one folder per
dataset (`hdfs/`, `bgl/`) with a `.logmesh-dataset.json` that says what it was unpacked from. A folder appears only
once its archive is verified and fully unpacked: a failed run leaves at most the `.part` download, which the next
run resumes."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

from logmesh.ingest.download import DownloadError, HostUnreachable, digests, download

RECORD = "https://zenodo.org/records/8196385"  # Loghub (LogPAI), CC BY 4.0; DOI 10.5281/zenodo.8196385
ZENODO_FILES = f"{RECORD}/files"
MIRROR_ENV = "LOGMESH_DATASETS_MIRROR"
MARKER = ".logmesh-dataset.json"


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    archive: str          # the file name on Zenodo (and on a mirror)
    size: int             # bytes, as Zenodo lists them
    md5: str              # the checksum Zenodo publishes for the file (Zenodo publishes md5 only)
    unpacked: int         # bytes once unpacked, roughly (for the free-space check)
    needs: tuple[str, ...]  # files that must be in the folder once unpacked; found anywhere below it, linked to its top
    about: str

    def url(self, mirror: str | None = None) -> str:
        """The file's URL on Zenodo, or on a mirror that serves Zenodo's files under their names."""
        if mirror:
            return f"{mirror.rstrip('/')}/{self.archive}"
        return f"{ZENODO_FILES}/{self.archive}?download=1"


# sizes and md5s as Zenodo's record lists them (quoted alike by several public projects that verify their
# downloads; this machine cannot reach Zenodo to re-read them)
DATASETS: dict[str, Dataset] = {
    "hdfs": Dataset("hdfs", "HDFS_v1.zip", 186_645_559, "76a24b4d9a6164d543fb275f89773260", 1_600_000_000,
                    ("HDFS.log", "anomaly_label.csv"),
                    "HDFS_v1: 11,175,629 lines from a 203-node Hadoop cluster, 575,061 blocks labelled "
                    "(anomaly_label.csv)"),
    "bgl": Dataset("bgl", "BGL.zip", 57_489_019, "4452953c470f2d95fcb32d5f6e733f7a", 745_000_000, ("BGL.log",),
                   "BGL: 4,747,963 lines from the BlueGene/L supercomputer, labelled per line (first column)"),
}


class DatasetError(Exception):
    """A fetch that did not complete; the message says what happened and what to do. Nothing unverified is left
    where a dataset or an archive belongs."""


class Offline(DatasetError):
    """The host could not be reached at all."""


def default_dest() -> Path:
    """LOGMESH_DATA when set, else ~/.cache/logmesh/data."""
    return Path(os.environ.get("LOGMESH_DATA") or Path.home() / ".cache" / "logmesh" / "data").expanduser()


def default_mirror() -> str | None:
    return os.environ.get(MIRROR_ENV) or None


def manual_steps(ds: Dataset, dest: Path, mirror: str | None = None) -> str:
    archive = dest / "archives" / ds.archive
    return (f"to fetch it by hand, on a machine with network:\n"
            f"  1. download {ds.url(mirror)}  ({ds.size:,} bytes; record {RECORD})\n"
            f"  2. check it: md5sum {ds.archive}  (Zenodo's md5: {ds.md5})\n"
            f"  3. copy it to {archive} and run `logmesh datasets fetch {ds.name} --dest {dest}`: it verifies and "
            f"unpacks it without the network")


@dataclasses.dataclass
class State:
    """What of a dataset is on this machine."""
    name: str
    status: str             # present | archive | partial | absent | foreign
    folder: Path
    archive: Path
    partial_bytes: int = 0
    info: dict = dataclasses.field(default_factory=dict)  # the marker of a present dataset


def state(ds: Dataset, dest: Path) -> State:
    folder, archive = dest / ds.name, dest / "archives" / ds.archive
    part = archive.with_name(archive.name + ".part")
    marker = folder / MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("md5") == ds.md5 and all((folder / n).exists() for n in ds.needs):
            return State(ds.name, "present", folder, archive, info=info)
    if archive.is_file():
        return State(ds.name, "archive", folder, archive)
    if part.is_file():
        return State(ds.name, "partial", folder, archive, partial_bytes=part.stat().st_size)
    if folder.exists() and not marker.exists():
        return State(ds.name, "foreign", folder, archive)
    return State(ds.name, "absent", folder, archive)


@dataclasses.dataclass
class Fetched:
    folder: Path
    archive: Path | None      # None when it was removed after unpacking
    sha256: str
    downloaded: bool          # False: a verified archive or folder was already there
    seconds: float
    was_present: bool = False  # the folder was already in place; nothing was done


def _verify(ds: Dataset, path: Path, dest: Path, url: str) -> str:
    """The sha256 of `path` when its size and md5 are Zenodo's; otherwise removes it and says what to do."""
    size = path.stat().st_size
    md5, sha256 = digests(path)
    if size == ds.size and md5 == ds.md5:
        return sha256
    path.unlink()
    raise DatasetError(f"{ds.archive} from {url} is not Zenodo's file ({size:,} bytes, md5 {md5}; expected "
                       f"{ds.size:,} bytes, md5 {ds.md5}): it was removed and nothing was unpacked. Run the fetch "
                       f"again; if it fails the same way, the source (--mirror) serves another file.\n"
                       f"{manual_steps(ds, dest)}")


def _extract(archive: Path, into: Path) -> None:
    """Unpacks a zip or a tar(.gz); members that would land outside `into` are refused."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            root = into.resolve()
            for member in z.infolist():
                target = (into / member.filename).resolve()
                if root != target and root not in target.parents:
                    raise DatasetError(f"{archive}: member {member.filename!r} would land outside {into}; "
                                       "refusing to unpack it")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            try:
                t.extractall(into, filter="data")
            except tarfile.FilterError as exc:
                raise DatasetError(f"{archive}: {exc}; refusing to unpack it") from None
    else:
        raise DatasetError(f"{archive} is neither a zip nor a tar archive")


def _unpack(ds: Dataset, archive: Path, folder: Path, record: dict) -> None:
    """Unpacks into a hidden sibling, brings the needed files to its top, then puts it in place of `folder`."""
    work = folder.with_name(f".{folder.name}.unpacking")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _extract(archive, work)
        entries = [p for p in work.iterdir() if not p.name.startswith("__MACOSX")]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else work  # an archive of one folder
        for name in ds.needs:
            if (root / name).exists():
                continue
            found = sorted(root.rglob(name))
            if not found:
                raise DatasetError(f"{archive} holds no {name}: it is not loghub's {ds.archive}; remove it and "
                                   "fetch again")
            try:  # e.g. HDFS_v1's preprocessed/anomaly_label.csv: `logmesh train` reads it beside the log
                os.link(found[0], root / name)
            except OSError:
                shutil.copy2(found[0], root / name)
        (root / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        root.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_space(dest: Path, need: int) -> None:
    probe = dest
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise DatasetError(f"{free / 2**30:.1f} GiB free under {probe}, {need / 2**30:.1f} GiB needed: free some "
                           "space or give another --dest")


def fetch(ds: Dataset, dest: Path, *, mirror: str | None = None, force: bool = False, keep_archive: bool = True,
          attempts: int = 5, timeout_s: float = 60.0, wait_s: float = 1.0, progress: bool = True) -> Fetched:
    """Makes DEST/<name> hold the dataset: downloads (or resumes) the archive unless a verified one is there,
    checks its size and md5 against Zenodo's, writes its sha256 beside it, unpacks it."""
    start = time.monotonic()
    now = state(ds, dest)
    if now.status == "present" and not force:
        archive = now.archive if now.archive.is_file() else None
        return Fetched(now.folder, archive, now.info.get("sha256", ""), False, time.monotonic() - start, True)
    if now.folder.exists() and not (now.folder / MARKER).exists() and not force:
        raise DatasetError(f"{now.folder} exists and was not made by `logmesh datasets fetch`: move it away, give "
                           "another --dest, or --force to replace it")
    archive, url = now.archive, ds.url(mirror)
    part = archive.with_name(archive.name + ".part")
    sidecar = archive.with_name(archive.name + ".sha256")
    downloaded = False
    if archive.is_file():  # from an earlier run, or copied there by hand
        sha256 = _verify(ds, archive, dest, f"the file at {archive}")
    else:
        held = part.stat().st_size if part.is_file() else 0
        _check_space(dest, ds.size - held + ds.unpacked)
        try:
            download(url, part, expected_size=ds.size, attempts=attempts, timeout_s=timeout_s, wait_s=wait_s,
                     progress=progress)
        except HostUnreachable as exc:
            raise Offline(f"{exc}: no network? {ds.name} was not fetched.\n{manual_steps(ds, dest, mirror)}") from None
        except DownloadError as exc:
            raise DatasetError(f"{exc}.\n{manual_steps(ds, dest, mirror)}") from None
        sha256 = _verify(ds, part, dest, url)
        part.rename(archive)
        downloaded = True
    sidecar.write_text(f"{sha256}  {ds.archive}\n")  # sha256sum's format: `sha256sum -c` checks it
    record = {"name": ds.name, "archive": ds.archive, "source": url if downloaded else str(archive),
              "record": RECORD, "size": ds.size, "md5": ds.md5, "sha256": sha256,
              "unpacked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _check_space(dest, ds.unpacked)
    _unpack(ds, archive, dest / ds.name, record)
    if not keep_archive:
        archive.unlink()
        sidecar.unlink()
    return Fetched(dest / ds.name, archive if keep_archive else None, sha256, downloaded, time.monotonic() - start)
