"""`logmesh train --feedback` on the real data: a real false alarm of the serving model, marked by an analyst in a
real compacted feedback topic, does not come back after the retrain, and the shadow comparison is in the
candidate's artifact; feedback that contradicts the data's labels is refused with the reason, and forced.

The site here trained without one real normal session: a block of sessions_normal.txt whose first write stored
2 of its 3 replicas and which was then re-replicated (labelled Normal: the re-replication repaired it). A model
that never saw it calls it a missing step (`E11 + 2*E16 = E26`, a relation its 17 normal re-replication mates
keep), as grouped validation does (docs/evaluation.md). (Until issue 14's text rule the site held out every
normal re-replication, which every model then flagged; a re-replication now names no fault and stays normal.)
DeepLog's session file carries no block ids, so the test gives the session one: the streaming job would have
stored the block with its events, and the test stores it the same way (a block point in a real qdrant-edge
store, the payload streaming/blocks.py writes)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.ingest.labels import read_block_labels
from logmesh.scorer import artifacts, feedback_source, feedback_training as fbt
from logmesh.scorer.train import REJECTED, train
from logmesh.streaming.vector_store import Point, open_store
from logmesh.v1 import feedback_pb2 as fpb

BOOTSTRAP = "127.0.0.1:9092"
# The label teaches that a re-replication with a replica's addStoredBlock missing can be normal, and failing
# sessions of the data break that relation too, so the shadow comparison can measure a real cost on the data's
# labels (the earlier site's label, re-replication is normal, cost 0.009 of F1 at 2.93%). What this test means is
# "a small, measured cost, promoted under the operator's tolerance": it trains with a tolerance of 0.03 and
# asserts the drop stays at least 0.01 under it.
TOLERANCE = 0.03
LOGMESH = str(Path(sys.executable).with_name("logmesh"))
# the held-out normal session (sessions_normal.txt, DeepLog's numbering), and the block id the test gives it
REPAIRED = "5 22 5 5 11 9 11 9 26 11 9 26 25 18 5 16 6 26 26"
REPAIRED_BLOCK = "blk_-7126599101113393906"


@pytest.fixture(scope="module")
def site(tmp_path_factory, data_dir):
    """The shared data without one normal session (REPAIRED); returns (dir, the block id given to it, its events,
    the normal re-replications the site keeps)."""
    out = tmp_path_factory.mktemp("site")
    for name in ("anomaly_label.csv", "sessions_anomalous.txt", *(p.name for p in data_dir.glob("*.log"))):
        shutil.copy(data_dir / name, out / name)
    lines = (data_dir / "sessions_normal.txt").read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.split() != REPAIRED.split()]
    assert len(kept) == len(lines) - 1  # the data says: normal, once
    (out / "sessions_normal.txt").write_text("".join(kept))
    assert REPAIRED_BLOCK not in read_block_labels(data_dir / "anomaly_label.csv")
    held = [["E" + t for t in line.split()] for line in kept if "16" in line.split()]
    return out, REPAIRED_BLOCK, ["E" + t for t in REPAIRED.split()], held


@pytest.fixture(scope="module")
def serving(tmp_path_factory, site, encoder):
    models = tmp_path_factory.mktemp("models")
    path = train(site[0], models, encoder.encode, validation="none")
    return models, path


def _ts(when: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(when * 1e9))
    return t


def test_a_false_alarm_the_analyst_marked_does_not_come_back_after_the_retrain(admin, site, serving, encoder, tmp_path):
    data, block, events, held = site
    models, serving_path = serving
    before = artifacts.load(models, serving_path.name).models["block"]
    [j] = before.judge([events], [True])
    assert j.anomalous, "the serving model raises the false alarm"

    # the job's block point: the block's mean line vector and its story
    store = open_store(path=str(tmp_path / "qdrant"))
    vector = encoder.encode([f"Receiving block {block} src: /10.0.0.1:50010 dest: /10.0.0.2:50010"])[0]
    store.upsert([Point(block, np.asarray(vector, np.float32), {
        "kind": "block", "block_id": block, "events": list(events), "closed": True, "verdict": "anomaly",
        "is_anomaly": True, "model_version": serving_path.name})])

    topic = f"t-feedback.{uuid.uuid4().hex[:8]}"
    for f in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                           config={"cleanup.policy": "compact"})]).values():
        f.result(30)
    now = time.time()
    labels = [
        fpb.Feedback(feedback_id="fb-1", session_key=block, label=fpb.FEEDBACK_LABEL_FALSE_ALARM,
                     scope=fpb.FEEDBACK_SCOPE_ITEM, action=fpb.FEEDBACK_ACTION_SUPPRESS_AND_LEARN, author="ana",
                     created_time=_ts(now - 60), comment="re-replication after a node came back: routine"),
        fpb.Feedback(feedback_id="fb-2", session_key=block, label=fpb.FEEDBACK_LABEL_FALSE_ALARM,
                     scope=fpb.FEEDBACK_SCOPE_ITEM, action=fpb.FEEDBACK_ACTION_SUPPRESS, created_time=_ts(now - 50)),
        fpb.Feedback(feedback_id="fb-3", session_key=block, label=fpb.FEEDBACK_LABEL_FALSE_ALARM,
                     scope=fpb.FEEDBACK_SCOPE_NODE, scope_value="10.251.43.21", action=fpb.FEEDBACK_ACTION_LEARN,
                     created_time=_ts(now - 40)),
        fpb.Feedback(feedback_id="fb-4", session_key=block, label=fpb.FEEDBACK_LABEL_TRUE_ALARM,
                     scope=fpb.FEEDBACK_SCOPE_ITEM, action=fpb.FEEDBACK_ACTION_LEARN, created_time=_ts(now - 30),
                     expire_time=_ts(now - 1)),
        # newer than fb-1 and the opposite label, but withdrawn (tombstone below): it must not count
        fpb.Feedback(feedback_id="fb-5", session_key=block, label=fpb.FEEDBACK_LABEL_TRUE_ALARM,
                     scope=fpb.FEEDBACK_SCOPE_ITEM, action=fpb.FEEDBACK_ACTION_LEARN, created_time=_ts(now - 20)),
    ]
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all"})
    for fb in labels:
        producer.produce(topic, key=fb.feedback_id.encode(), value=fb.SerializeToString())
    producer.produce(topic, key=b"fb-5", value=None)
    producer.produce(topic, key=b"fb-6", value=b"\xff\xff not a Feedback")
    assert producer.flush(30) == 0

    read = feedback_source.read_topic(BOOTSTRAP, topic)
    assert sorted(f.feedback_id for f in read.feedback) == ["fb-1", "fb-2", "fb-3", "fb-4"]
    assert len(read.unreadable) == 1 and "fb-6" in read.unreadable[0]
    fset = fbt.select(read.feedback, source=read.source)
    path = train(data, models, encoder.encode, validation="quick", feedback=fset, lookup=fbt.StoreLookup(store),
                 tolerance=TOLERANCE)
    store.close()

    meta = json.loads((path / "meta.json").read_text())
    assert path.parent == models and artifacts.newest(models) == path.name, meta["promotion"]
    after = artifacts.load(models, path.name).models["block"]
    [j] = after.judge([events], [True])
    assert not j.anomalous, (j.score, j.kind, j.reasons)

    fb = meta["feedback"]
    assert fb["training"] == 1 and fb["sessions_labelled"] == 1 and fb["weight"] == fbt.DEFAULT_WEIGHT
    assert {k: v["ids"] for k, v in fb["ignored"].items()} == {
        "action is suppress only": ["fb-2"], "expired": ["fb-4"],
        "node scope (suppression only: HDFS sessions carry no node to train on)": ["fb-3"]}
    shadow = meta["shadow"]
    assert shadow["serving"] == serving_path.name and meta["promotion"] == {
        "promoted": True, "forced": False, "reason": shadow["reason"]}
    assert shadow["tolerance"] == {"f1_at_prevalence_drop": TOLERANCE}
    f1 = {r: shadow["validation"][r]["worst"]["complete"]["f1_at_prevalence"] for r in ("serving_recipe", "candidate")}
    drop = f1["serving_recipe"] - f1["candidate"]
    print(f"shadow: candidate F1 {f1['candidate']:.4f} vs serving recipe {f1['serving_recipe']:.4f}, drop {drop:.4f}")
    assert drop <= TOLERANCE - 0.01, f"the label costs more than measured before (~0.009): {shadow['reason']}"
    for recipe in ("serving_recipe", "candidate"):
        worst = shadow["validation"][recipe]["worst"]["complete"]
        assert worst["sessions"] > 18_000 and 0 < worst["f1_at_prevalence"] <= 1
    assert shadow["feedback_set"]["serving"]["flags_analyst_normal"] == 1
    assert shadow["feedback_set"]["candidate"] == {"agrees": 1, "flags_analyst_normal": 0, "misses_analyst_anomalous": 0}
    # the normal re-replications the site kept stay normal in both (the label taught nothing else wrong)
    assert len(held) >= 10
    flagged_before = sum(x.anomalous for x in before.judge(held, [True] * len(held)))
    flagged_after = sum(x.anomalous for x in after.judge(held, [True] * len(held)))
    assert flagged_before == 0 and flagged_after == 0, (flagged_before, flagged_after)


def test_feedback_that_contradicts_the_data_is_refused_with_the_reason_and_can_be_forced(site, serving, tmp_path):
    """The refused run and the forced run train side by side, each in a model dir of its own holding the serving
    artifact alone (another test adds to the fixture's dir): the same candidate, refused in one, forced in the
    other."""
    data, *_ = site
    models, forced_models = tmp_path / "models", tmp_path / "forced"
    serving_version = serving[1].name
    for out in (models, forced_models):
        shutil.copytree(serving[1], out / serving_version)
    # an analyst calls the three most common failing sequences normal: the data's labels say otherwise
    failing = Counter(tuple(["E" + t for t in line.split()])
                      for line in (data / "sessions_anomalous.txt").read_text().splitlines() if line.strip())
    wrong = [fpb.Feedback(feedback_id=f"fb-{i}", session_key="blk_1", label=fpb.FEEDBACK_LABEL_NORMAL,
                          scope=fpb.FEEDBACK_SCOPE_SEQUENCE, scope_value=" ".join(seq), action=fpb.FEEDBACK_ACTION_LEARN)
             for i, (seq, _n) in enumerate(failing.most_common(3))]
    labels = tmp_path / "feedback.jsonl"
    feedback_source.write_file(labels, wrong)
    cmd = [LOGMESH, "train", "--data", str(data), "--feedback-file", str(labels),
           "--validation", "none", "--threads", "1", "--log-level", "warning"]

    def start(out: Path, *extra: str) -> subprocess.Popen:  # type: ignore[type-arg]
        with (tmp_path / f"{out.name}.out").open("w") as stdout, (tmp_path / f"{out.name}.err").open("w") as stderr:
            return subprocess.Popen(cmd + ["--out", str(out), *extra], stdout=stdout, stderr=stderr)

    def finish(process: subprocess.Popen, out: Path) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        try:
            process.wait(600)
        finally:
            process.kill()
        return subprocess.CompletedProcess(process.args, process.returncode, (tmp_path / f"{out.name}.out").read_text(),
                                           (tmp_path / f"{out.name}.err").read_text())

    runs = [start(models), start(forced_models, "--force-promote")]  # both train before either is waited for
    refused, forced = finish(runs[0], models), finish(runs[1], forced_models)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "NOT PROMOTED" in refused.stdout and "beyond the tolerance 0.01" in refused.stdout, refused.stdout
    assert "--force-promote" in refused.stdout
    assert artifacts.versions(models) == [serving_version]  # the scorer keeps serving what it served
    [rejected] = artifacts.versions(models / REJECTED)
    meta = json.loads((models / REJECTED / rejected / "meta.json").read_text())
    assert meta["promotion"]["promoted"] is False and "worse by" in meta["promotion"]["reason"]
    v = meta["shadow"]["validation"]
    assert v["candidate"]["worst"]["complete"]["recall"] < v["serving_recipe"]["worst"]["complete"]["recall"]

    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "PROMOTED (forced)" in forced.stdout
    newest = artifacts.newest(forced_models)
    assert newest != serving_version
    assert json.loads((forced_models / newest / "meta.json").read_text())["promotion"]["forced"]


def test_a_feedback_source_that_cannot_be_read_says_what_to_do(site, tmp_path, admin):
    data, *_ = site
    base = [LOGMESH, "train", "--data", str(data), "--out", str(tmp_path / "m")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sessionKey": "blk_1", "label": 7}\n{"nope": 1}\n')
    r = subprocess.run(base + ["--feedback-file", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "line 2: not a logmesh.v1.Feedback" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["--feedback", "--feedback-topic", f"t-missing.{uuid.uuid4().hex[:8]}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr, r.stderr
