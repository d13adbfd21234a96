"""`logmesh datasets list|fetch`: the full loghub datasets (HDFS_v1, BGL) from Zenodo, downloaded with a progress
bar, resumed after a cut connection, checked against Zenodo's md5 and unpacked (ingest/datasets.py)."""
from __future__ import annotations

import argparse
import json

from logmesh.cli.common import POSITIVE, POSITIVE_SECONDS, UserError

_STATUS = {"present": "present", "archive": "archive downloaded and verified, not unpacked: `fetch` unpacks it",
           "partial": "partial download: `fetch` resumes it", "absent": "not here",
           "foreign": "a folder not made by `fetch` is in the way"}


def cmd_list(args: argparse.Namespace) -> int:
    from logmesh.ingest.datasets import DATASETS, default_dest, default_mirror, state
    dest = args.dest or default_dest()
    mirror = args.mirror or default_mirror()
    rows = []
    for ds in DATASETS.values():
        now = state(ds, dest)
        rows.append({"name": ds.name, "status": now.status, "folder": str(now.folder), "archive": ds.archive,
                     "size": ds.size, "md5": ds.md5, "url": ds.url(mirror), "about": ds.about,
                     "partial_bytes": now.partial_bytes, "sha256": now.info.get("sha256"),
                     "unpacked_at": now.info.get("unpacked_at")})
    if args.json:
        print(json.dumps({"dest": str(dest), "datasets": rows}, indent=2))
        return 0
    print(f"data root: {dest}  (--dest, LOGMESH_DATA)")
    for r in rows:
        status = _STATUS[r["status"]]
        if r["status"] == "partial":
            status += f" ({r['partial_bytes']:,} of {r['size']:,} bytes)"
        elif r["status"] == "present":
            status += f" (unpacked {r['unpacked_at']}, sha256 {r['sha256']})"
        print(f"\n{r['name']}: {status}\n  {r['about']}\n  folder  {r['folder']}\n"
              f"  file    {r['archive']}, {r['size']:,} bytes, Zenodo md5 {r['md5']}\n  url     {r['url']}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from logmesh.ingest.datasets import DATASETS, DatasetError, default_dest, default_mirror, fetch
    dest = args.dest or default_dest()
    ds = DATASETS[args.name]
    try:
        done = fetch(ds, dest, mirror=args.mirror or default_mirror(), force=args.force, keep_archive=not args.delete_archive,
                     attempts=args.attempts, timeout_s=args.timeout, progress=not args.no_progress)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    except PermissionError as exc:
        raise UserError(f"cannot write under {dest} ({exc.strerror}): give a writable --dest") from None
    if done.was_present:
        print(f"{ds.name}: already present in {done.folder} (--force fetches and unpacks it again)")
        return 0
    where = f"; archive {done.archive} with its sha256 beside it" if done.archive else ""
    print(f"{ds.name}: {done.folder} ({', '.join(ds.needs)}); sha256 {done.sha256}{where}; {done.seconds:.0f} s")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=_path, default=None,
                   help="data root that holds archives/ and one folder per dataset (default: LOGMESH_DATA, else "
                        "~/.cache/logmesh/data)")
    p.add_argument("--mirror", default=None,
                   help="base URL of a mirror that serves Zenodo's files under their names, e.g. "
                        "http://mirror.local/loghub (default: LOGMESH_DATASETS_MIRROR, else Zenodo); the same md5 "
                        "checks apply")


def _path(text: str):  # type: ignore[no-untyped-def]
    from pathlib import Path
    return Path(text).expanduser()


def setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="datasets_command", required=True, metavar="{list,fetch}",
                           help="list: what is known and what is here; fetch: download, verify and unpack one")
    ls = sub.add_parser("list", help="what is known and what is already here",
                        description="The datasets `fetch` knows (Zenodo file, size, md5, URL) and what of each is "
                                    "in the data root: present, a verified archive, a partial download, or nothing.")
    _common(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of text")
    ls.set_defaults(func=cmd_list)
    fe = sub.add_parser(
        "fetch", help="download, verify and unpack hdfs or bgl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download loghub's full HDFS_v1.zip or BGL.zip from Zenodo (record 10.5281/zenodo.8196385) "
                    "into DEST/archives/,\nwith a progress bar, resuming a partial download (HTTP Range) and "
                    "retrying a cut connection;\ncheck its size and md5 against the ones Zenodo publishes (Zenodo "
                    "publishes md5 only; logmesh\npins them), write its sha256 beside it (NAME.sha256, for "
                    "`sha256sum -c`) and unpack it into DEST/NAME/.\nA file that does not match is removed and "
                    "nothing is unpacked. Without network: one error line,\nexit 2, and the steps to download it by "
                    "hand (an archive copied to DEST/archives/ is verified\nand unpacked without the network). "
                    "Exit 0 when the dataset is in place, 2 when it is not.",
        epilog="Then: logmesh train --data DEST/hdfs --out models   (docs/datasets.md)")
    fe.add_argument("name", choices=["hdfs", "bgl"], help="which dataset")
    _common(fe)
    fe.add_argument("--force", action="store_true",
                    help="fetch and unpack again even when present; replace a folder `fetch` did not make")
    fe.add_argument("--delete-archive", action="store_true",
                    help="remove the archive once unpacked (a later --force downloads it again)")
    fe.add_argument("--attempts", type=POSITIVE, default=5,
                    help="tries per download, each resuming where the last ended (default %(default)s)")
    fe.add_argument("--timeout", type=POSITIVE_SECONDS, default=60.0,
                    help="seconds without data before a try gives up (default %(default)s)")
    fe.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    fe.set_defaults(func=cmd_fetch)

