"""The console's incident pages over a real scorer whose history reads a fresh anomalies topic (written as the job
writes it) and whose incident book keeps a fresh compacted incidents topic, with its similar incidents from the
qdrant-edge store in its state dir: the list, the page (summary, evidence lines with counts against normal, the
timeline, similar incidents), the JSON twins, bad requests, and every log string (and summary) escaped, checked
in plain HTTP and in Debian's Chromium."""
from __future__ import annotations

import re
import uuid

import httpx
import pytest
from confluent_kafka.admin import NewTopic
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.v1 import incident_pb2, score_pb2
from waiting import wait_for

from anomaly_topic import AnomalyWriter, fed_scorer as fed_scorer_of, fresh_topic
from test_console import Console, browser  # noqa: F401  (the console in a thread; the Chromium fixture)

ANOMALY = score_pb2.VERDICT_ANOMALY
T0 = 1_226_262_851  # 2008-11-09 21:34:11 UTC
HOSTILE = '<script>window.pwned=1</script>"><img src=x onerror="window.pwned=2">'


def _ts(s: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(s * 1e9))
    return t


def mirror(tag: str, block_id: str, node: str, at: float, extra: str = "",
           to: str = "10.251.74.79") -> score_pb2.Anomaly:
    return score_pb2.Anomaly(line=score_pb2.ScoreResult(
        record_id=f"rec-{tag}", verdict=ANOMALY, score=0.93, component="dfs.DataNode$DataXceiver",
        message=f"{node}:50010:Exception writing block {block_id} to mirror {to}:50010{extra}",
        block_ids=[block_id], template_id="E12", event_time=_ts(at), model_version="test", anomaly_votes=5,
        reason="5 of 5 members: lines like this carry failure evidence"))


@pytest.fixture(scope="module")
def scene(admin, trained_models, embedder_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    anomalies = fresh_topic(admin, "t-console-incidents")
    incidents = f"t-console-incidents.{uuid.uuid4().hex[:8]}.incidents"
    for future in admin.create_topics([NewTopic(incidents, 1, 1, config={"cleanup.policy": "compact"})]).values():
        future.result(30)
    server = fed_scorer_of(trained_models, embedder_server.address, anomalies,
                           tmp_path_factory.mktemp("console-incidents") / "state", incidents_topic=incidents)
    book = server.servicers["IncidentService"].book
    a, b, c = (f"blk_{uuid.uuid4().int % 10**12}" for _ in range(3))
    writer = AnomalyWriter(anomalies)
    writer.write([mirror("a", a, "10.251.122.65", T0), mirror("xss", a, "10.251.122.65", T0 + 1, " " + HOSTILE),
                  mirror("b", b, "10.251.122.65", T0 + 120)])
    writer.write([mirror("c", c, "10.250.5.10", T0 + 60, to="10.250.5.11")])  # other nodes: another incident
    history = server.servicers["ScorerService"].history
    wait_for(lambda: history.last_id >= 4 and book.wait_idle(1), 60, "the book to group four alerts")
    found = {tuple(i.session_keys): i for i in book.page(50, None)[0]}
    one, other = found[(a, b)], found[(c,)]
    # the scorer's Summarizer writes a fallback summary first (no LLM here); this one, for the same version, replaces it
    if server.servicers["ScorerService"].summarizer is not None:
        wait_for(lambda: book.get(one.incident_id).summary.incident_version == one.version, 30, "the fallback summary")
    book.attach_summary(one.incident_id, incident_pb2.IncidentSummary(
        title=f"Writes failed {HOSTILE}", severity=incident_pb2.SEVERITY_HIGH, what_happened="Two blocks failed.",
        cited_record_ids=["rec-a"], next_steps=["check 10.251.74.79"], source=incident_pb2.SUMMARY_SOURCE_FALLBACK,
        incident_version=one.version, fallback_reason="no --llm-url"))
    assert book.wait_idle(10)
    console = Console(server.address)
    yield {"console": console, "one": book.get(one.incident_id), "other": book.get(other.incident_id), "book": book}
    console.stop()
    server.stop(1)


def test_list_page_and_json(scene) -> None:
    url, one, other = scene["console"].url, scene["one"], scene["other"]
    page = httpx.get(f"{url}/incidents", timeout=30)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert one.incident_id in page.text and other.incident_id in page.text
    assert "<script>window.pwned" not in page.text and "&lt;script&gt;window.pwned" in page.text  # the summary title
    listed = httpx.get(f"{url}/api/incidents", timeout=30).json()
    rows = {r["incident_id"]: r for r in listed["incidents"]}
    assert rows[one.incident_id]["alerts"] == 3 and rows[one.incident_id]["nodes"][0] == "10.251.122.65"
    assert rows[one.incident_id]["title"].startswith("Writes failed <script>")  # data, unescaped, in JSON
    assert httpx.get(f"{url}/incidents?state=closed", timeout=30).text.count("/incident/inc-") == 0


def test_incident_page_shows_summary_evidence_timeline_and_similar_escaped(scene) -> None:
    url, one, other = scene["console"].url, scene["one"], scene["other"]
    page = httpx.get(f"{url}/incident/{one.incident_id}", timeout=30)
    assert page.status_code == 200
    text = page.text
    for record_id in ("rec-a", "rec-xss", "rec-b"):
        assert record_id in text
    assert "<script>" not in text.split("</head>", 1)[1].replace('<script src="/static/', "")
    assert "&lt;img src=x onerror=" in text and "Two blocks failed." in text and "no --llm-url" in text
    assert 'id="timeline"' in text and "check 10.251.74.79" in text
    detail = httpx.get(f"{url}/api/incidents/{one.incident_id}", timeout=30).json()
    assert [e["record_id"] for e in detail["timeline"]] == ["rec-a", "rec-xss", "rec-b"]  # event-time order
    assert {e["count_in_incident"] for e in detail["evidence"]} == {3}
    assert detail["summary"]["severity"] == "high" and detail["summary"]["source"] == "fallback"
    # the other incident failed the same way on other nodes: each is the other's similar past incident
    assert other.similar and other.similar[0].incident_id == one.incident_id
    other_page = httpx.get(f"{url}/incident/{other.incident_id}", timeout=30).text
    assert f'href="/incident/{one.incident_id}"' in other_page


def test_bad_requests_get_a_reason(scene) -> None:
    url = scene["console"].url
    missing = httpx.get(f"{url}/incident/inc-424242", timeout=30)
    assert missing.status_code == 404 and "inc-424242" in missing.text
    assert httpx.get(f"{url}/api/incidents/inc-424242", timeout=30).json()["error"]
    bad = httpx.get(f"{url}/api/incidents?page_token=nope", timeout=30)
    assert bad.status_code == 400 and "page_token" in bad.json()["error"]
    assert httpx.get(f"{url}/incidents?state=sideways", timeout=30).status_code == 400


def test_browser_renders_hostile_lines_as_text(scene, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    one = scene["one"]
    browser.get(f"{scene['console'].url}/incident/{one.incident_id}")
    evidence = browser.find_element(By.ID, "evidence").text
    assert HOSTILE in evidence  # shown as the text it is
    assert browser.find_element(By.ID, "summary-title").text == f"Writes failed {HOSTILE}"
    assert browser.execute_script("return window.pwned === undefined")
    browser.get(f"{scene['console'].url}/incidents")
    assert one.incident_id in browser.find_element(By.ID, "incidents").text
    assert browser.execute_script("return window.pwned === undefined")


def test_incident_page_has_the_feedback_buttons_and_says_when_the_scorer_serves_no_feedback(scene) -> None:
    url, one, other = scene["console"].url, scene["one"], scene["other"]
    page = httpx.get(f"{url}/incident/{one.incident_id}", timeout=30).text
    form = re.search(r'<form method="post" action="/feedback" id="feedback-form">(.*?)</form>', page, re.S)[1]
    assert f'name="incident_id" value="{one.incident_id}"' in form and 'value="false_alarm"' in form
    # the scorer takes a NODE label only on an incident of one node: the button is there only then
    assert ('value="suppress_node"' in form) == (len(one.nodes) == 1)
    token = re.search(r'name="token" value="([^"]+)"', form)[1]
    sent = httpx.post(f"{url}/feedback", data={"incident_id": one.incident_id, "back": f"/incident/{one.incident_id}",
                                               "token": token, "choice": "false_alarm"}, timeout=30)
    assert sent.status_code == 303  # this scorer runs without --feedback-topic: the page says so
    assert "serves no feedback" in httpx.get(url + sent.headers["location"], timeout=30).text
