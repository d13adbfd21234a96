"""A recreated anomalies topic (deleted and created again under its name: its offsets restart at 0), on the real
broker with a real scorer whose history reads it and whose incident book (leased: a book of one, its cursor
committed with every round) groups it. The book's cursor per partition is the old topic's, so without the
rewind every entry of the new topic would count as grouped: it must say so in the log, group the new topic
from its start, and after a restart on the same state dir (a takeover: the cursor read back) group nothing
twice and nothing of the old topic again. The cursor the broker holds for the book carries the topic id of the
topic it counts in: the old topic's before the recreation, the new one's after."""
from __future__ import annotations

import logging
import uuid

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import NewTopic

from anomaly_topic import AnomalyWriter, fed_scorer, fresh_topic, line
from logmesh.client import IncidentClient
from test_incidents import fresh_compacted
from waiting import wait_for


def _blocks(n: int) -> list[str]:
    return [f"blk_{uuid.uuid4().int % 10**12}" for _ in range(n)]


def _topic_id(admin, topic: str) -> str:  # type: ignore[no-untyped-def]
    return str(admin.describe_topics(TopicCollection([topic]))[topic].result(30).topic_id)


def _recreate(admin, topic: str) -> None:  # type: ignore[no-untyped-def]
    admin.delete_topics([topic])[topic].result(30)

    def created() -> bool:
        try:
            admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
            return True
        except KafkaException:  # TOPIC_ALREADY_EXISTS while the deletion is still under way
            return False
    wait_for(created, 30, "the topic to be created again")


class Scorer:
    def __init__(self, models, embedder: str, topic: str, incidents: str, state) -> None:  # type: ignore[no-untyped-def]
        self.server = fed_scorer(models, embedder, topic, state, incidents_topic=incidents, incident_window_s=300.0)
        self.client = IncidentClient(self.server.address)
        self.book = self.server.servicers["IncidentService"].book
        assert self.book.ready.wait(30), "the book did not read its incidents back"

    def incidents(self) -> list:
        found, _ = self.client.list(10_000, include_suppressed=True)
        return found

    def sessions(self) -> set[str]:
        return {s for i in self.incidents() for s in i.session_keys}

    def stop(self) -> None:
        self.client.close()
        self.server.stop(1)


def test_a_recreated_topic_is_grouped_from_its_start_and_nothing_twice(admin, trained_models, embedder_server,
                                                                         tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="logmesh.scorer.incidents")
    topic, incidents, state = fresh_topic(admin, "t-recreated"), fresh_compacted(admin), tmp_path / "state"
    written: dict[str, list[str]] = {}

    def write(blocks: list[str]) -> None:
        AnomalyWriter(topic).write([line(f"{b}-1", block_id=b) for b in blocks])
        written.update({b: [f"rec-{b}-1"] for b in blocks})

    scorer = Scorer(trained_models, embedder_server.address, topic, incidents, state)
    try:
        old = _blocks(3)
        write(old)
        wait_for(lambda: scorer.sessions() >= set(old), 30, "the book to group the old topic's alerts")
        old_id, where = _topic_id(admin, topic), f"{topic}/0"
        assert scorer.book.wait_idle(30)
        assert scorer.book.store.cursor_topic_ids() == {where: old_id}
        _recreate(admin, topic)
        new_id = _topic_id(admin, topic)
        assert new_id != old_id
        new = _blocks(2)  # at offsets 0 and 1, below the book's cursor (3)
        write(new)
        wait_for(lambda: scorer.sessions() >= set(new), 60, "the book to group the new topic's alerts")
        said = [r.getMessage() for r in caplog.records if "recreated" in r.getMessage()]
        assert said, "the book did not say the topic was recreated"
        assert scorer.book.wait_idle(30)
        assert scorer.book.store.cursor_topic_ids() == {where: new_id}

        scorer.stop()  # the same state dir: the book takes itself over, its cursor read back from the broker
        scorer = Scorer(trained_models, embedder_server.address, topic, incidents, state)
        later = _blocks(1)
        write(later)
        wait_for(lambda: scorer.sessions() >= set(later), 60, "the restarted book to group the next alert")
        assert scorer.book.wait_idle(30)
        after = scorer.incidents()
        assert len(after) == len(written) == 6
        for incident in after:
            assert len(incident.session_keys) == 1, incident.session_keys
            cited = sorted(e.record_id for e in incident.evidence)
            assert cited == written[incident.session_keys[0]], f"{incident.session_keys[0]}: grouped {cited}"
            assert len(incident.anomaly_ids) == 1
        assert scorer.book.store.cursor_topic_ids() == {where: new_id}
        print("said:", said)
    finally:
        scorer.stop()
