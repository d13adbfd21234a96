"""The analyst console (`logmesh serve console`) over a real scorer and embedder whose anomaly history reads a
fresh anomalies topic on the real broker, fed with real logmesh.v1.Anomaly messages in Kafka transactions as
the streaming job writes them. Plain HTTP for the JSON, SSE and escaping; Debian's Chromium (headless, driven
by Selenium) for the live feed and a log line that tries to run a script; the CLI for its errors and TLS."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from logmesh.client import ScorerClient
from logmesh.security import ChannelSecurity
from logmesh.v1 import score_pb2
from waiting import wait_for

from anomaly_topic import AnomalyWriter, fed_scorer as fed_scorer_of, fresh_topic

REPO = Path(__file__).resolve().parents[2]
LOGMESH = str(Path(sys.executable).with_name("logmesh"))
ARTIFACTS = Path(os.environ.get("LOGMESH_ARTIFACTS", REPO / "var" / "test-artifacts"))
ANOMALY = score_pb2.VERDICT_ANOMALY
ALERT = score_pb2.BLOCK_VERDICT_KIND_ALERT
XSS = ('writeBlock blk_-77 received exception <script>window.pwned=1</script> '
       '"><img src=x onerror="window.pwned=2"> java.io.IOException')
TOKEN = "console-test-token"
NORMAL_LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
               "blk_3587508140051953248 of size 67108864 from /10.251.42.84")


# --- the streaming job's side: anomalies written transactionally (tests/anomaly_topic.py) ---

def line(tag: str, message: str, block_id: str = "blk_-77", template: str = "E7") -> score_pb2.Anomaly:
    return score_pb2.Anomaly(line=score_pb2.ScoreResult(
        record_id=f"rec-{tag}", verdict=ANOMALY, score=0.91, confidence=0.8, message=message,
        component="dfs.DataNode$DataXceiver", block_ids=[block_id], template_id=template, model_version="test",
        anomaly_votes=4, normal_votes=1, reason="4 of 5 members: lines like this carry failure evidence",
        votes=[score_pb2.ModelVote(model="random_forest", verdict=ANOMALY, score=0.97),
               score_pb2.ModelVote(model="tfidf_sgd", verdict=score_pb2.VERDICT_NORMAL, score=0.31)]))


def block(block_id: str, events: list[str], flagged: list[str]) -> score_pb2.Anomaly:
    return score_pb2.Anomaly(block=score_pb2.BlockVerdict(
        block_id=block_id, verdict=ANOMALY, score=0.88, events=events, kind=ALERT, model_version="test",
        anomalous_record_ids=flagged, evidence_kind="evidence_event",
        reasons=["event E7 never seen in a normal session"],
        similar=[score_pb2.SimilarLine(id="blk_past", similarity=0.93, text="<b>past</b> block",
                                       verdict=ANOMALY)]))


@pytest.fixture(scope="module")
def topic(admin) -> str:
    return fresh_topic(admin, "t-console")


@pytest.fixture(scope="module")
def writer(topic) -> AnomalyWriter:
    return AnomalyWriter(topic)


@pytest.fixture(scope="module")
def feedback_topic(admin) -> str:
    from confluent_kafka.admin import NewTopic
    name = f"t-console.{uuid.uuid4().hex[:8]}.feedback"
    for future in admin.create_topics([NewTopic(name, 1, 1, config={"cleanup.policy": "compact"})]).values():
        future.result(30)
    return name


@pytest.fixture(scope="module")
def fed_scorer(topic, feedback_topic, trained_models, embedder_server):
    server = fed_scorer_of(trained_models, embedder_server.address, topic, feedback_topic=feedback_topic)
    assert server.servicers["ScorerService"].feedback.wait_loaded(30), "the feedback topic to load"
    yield server
    server.stop(1)


@pytest.fixture(scope="module")
def history(fed_scorer):
    client = ScorerClient(fed_scorer.address)
    yield client
    client.close()


def newest(client: ScorerClient) -> int:
    page = client.anomalies(page_size=1)
    return page.anomalies[0].id if page.anomalies else 0


def held(client: ScorerClient, last_id: int) -> int:
    """Waits until the history has read up to id `last_id` and returns it."""
    return wait_for(lambda: newest(client) >= last_id and last_id, 30, f"the history to hold #{last_id}")


class Console:
    """The console app served by uvicorn in a thread, on a free loopback port."""

    def __init__(self, scorer: str, **kwargs) -> None:
        import uvicorn
        from logmesh.console import create_app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(scorer, ChannelSecurity(), stats_interval=0.5, **kwargs),
                                log_config=None, access_log=False, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 20, "uvicorn to start", every=0.1)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture(scope="module")
def console(fed_scorer):
    served = Console(fed_scorer.address, max_feeds=4)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def story(history, writer):
    """A block alert with two flagged lines (one of them hostile) and a line of another block: their ids."""
    base = newest(history)
    blk = f"blk_{uuid.uuid4().int % 10**12}"
    writer.write([line("a", f"writeBlock {blk} received exception java.io.IOException: Could not read", blk),
                  line("xss", XSS.replace("blk_-77", blk), blk),
                  block(blk, ["E5", "E22", "E5", "E7", "E11"], ["rec-a", "rec-xss"]),
                  line("other", "PacketResponder 1 for block blk_9 Interrupted.", "blk_9", "E8")])
    held(history, base + 4)
    return {"block_id": blk, "a": base + 1, "xss": base + 2, "block": base + 3, "other": base + 4}


# --- plain HTTP: pages, JSON, SSE, escaping ---

def test_feed_page_lists_the_history_escaped_with_a_strict_csp(console, story):
    page = httpx.get(console.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = page.text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    assert "<script>window.pwned" not in html and "<img src=x" not in html
    assert f'href="/anomaly/{story["xss"]}"' in html and story["block_id"] in html
    # the live feed resumes after the newest entry the page was rendered with
    assert re.search(rf'data-after-id="{story["other"]}"', html)


def test_json_endpoints_return_the_entries_as_data(console, story):
    rows = httpx.get(console.url + "/api/anomalies", params={"limit": 10}, timeout=10).json()["anomalies"]
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids, reverse=True) and {story["a"], story["xss"], story["block"], story["other"]} <= set(ids)
    hostile = next(r for r in rows if r["id"] == story["xss"])
    assert hostile["text"] == XSS.replace("blk_-77", story["block_id"])  # JSON carries it as it is: data
    blocks = httpx.get(console.url + "/api/anomalies", params={"blocks_only": "1"}, timeout=10).json()["anomalies"]
    assert blocks and all(r["kind"] == "block" for r in blocks)
    one = httpx.get(console.url + f"/api/anomalies/{story['block']}", timeout=10).json()
    assert one["block_id"] == story["block_id"] and one["timeline"] == ["E5", "E22", "E5", "E7", "E11"]
    assert one["evidence_kind"] == "evidence_event" and one["verdict_kind"] == "alert"
    assert one["similar"][0]["text"] == "<b>past</b> block"
    line_entry = httpx.get(console.url + f"/api/anomalies/{story['other']}", timeout=10).json()
    assert line_entry["template_id"] == "E8" and line_entry["anomaly_votes"] == 4
    assert [v["model"] for v in line_entry["votes"]] == ["random_forest", "tfidf_sgd"]
    stats = wait_for(lambda: (s := httpx.get(console.url + "/api/stats", timeout=10).json())["history_status"] == "live"
                     and s, 20, "the history to be live")  # it reads the topic to its end now and then
    assert stats["history_entries"] >= 4 and stats["model_version"]


def test_bad_requests_get_a_reason(console, story):
    missing = httpx.get(console.url + "/anomaly/99999999", timeout=10)
    assert missing.status_code == 404 and "holds no anomaly #99999999" in missing.text
    assert httpx.get(console.url + "/api/anomalies/abc", timeout=10).status_code == 400
    bad = httpx.get(console.url + "/api/anomalies", params={"min_score": "2"}, timeout=10)
    assert bad.status_code == 400 and "min_score" in bad.json()["error"]
    assert httpx.get(console.url + "/events", headers={"last-event-id": "x1"}, timeout=10).status_code == 400


def test_the_first_entry_is_found_too(console, story, history):
    oldest, _ = history.list_anomalies(100_000)
    first = oldest[-1].id
    assert httpx.get(console.url + f"/api/anomalies/{first}", timeout=10).json()["id"] == first


def test_block_page_shows_verdict_reasons_events_lines_and_similar_escaped(console, story):
    page = httpx.get(console.url + f"/anomaly/{story['block']}", timeout=10)
    assert page.status_code == 200
    html = page.text
    assert story["block_id"] in html and "event E7 never seen in a normal session" in html
    assert "evidence_event" in html
    timeline = re.search(r'<ol id="timeline"[^>]*>(.*?)</ol>', html, re.S)[1]
    assert re.findall(r"<li>(E\d+)</li>", timeline) == ["E5", "E22", "E5", "E7", "E11"]
    lines = re.search(r'<table id="lines">(.*?)</table>', html, re.S)[1]
    assert f"/anomaly/{story['a']}" in lines and f"/anomaly/{story['xss']}" in lines
    assert f"/anomaly/{story['other']}" not in lines  # another block's line
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in lines and "<script>" not in lines
    assert "&lt;b&gt;past&lt;/b&gt; block" in html  # a similar case's text is escaped too


def test_line_page_shows_verdict_votes_template_and_reason(console, story):
    html = httpx.get(console.url + f"/anomaly/{story['other']}", timeout=10).text
    assert "Line: anomaly" in html and '<dd id="template">E8</dd>' in html
    assert "4 of 5 members: lines like this carry failure evidence" in html
    assert "random_forest" in html and "4 anomaly, 1 normal" in html


def _sse(url: str, headers: dict[str, str] | None = None, want: int = 1, seconds: float = 20.0) -> list[dict]:
    """The anomaly events of one SSE connection, until `want` arrived: [{"id", "event", "data"}]."""
    out: list[dict] = []
    event: dict = {}
    with httpx.stream("GET", url, headers=headers, timeout=seconds) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for raw in response.iter_lines():
            if not raw:
                if event.get("event") == "anomaly":
                    out.append(event)
                    if len(out) >= want:
                        return out
                event = {}
                continue
            field, _, value = raw.partition(":")
            event[field] = value.lstrip(" ")
    return out


def test_sse_resumes_after_the_last_event_id(console, story, history, writer):
    after = story["a"]
    got = _sse(console.url + f"/events?after_id={after}", want=3)
    assert [int(e["id"]) for e in got] == [story["xss"], story["block"], story["other"]]
    assert json.loads(got[0]["data"])["text"] == XSS.replace("blk_-77", story["block_id"])
    # a browser that reconnects sends Last-Event-ID, which wins over the page's after_id
    writer.write([line("later", "Receiving empty packet for block blk_5", "blk_5", "E13")])
    later = held(history, story["other"] + 1)
    resumed = _sse(console.url + f"/events?after_id={after}", headers={"last-event-id": str(story["other"])})
    assert [int(e["id"]) for e in resumed] == [later]


def test_sse_says_when_the_scorer_goes_away(topic, trained_models, embedder_server):
    scorer = fed_scorer_of(trained_models, embedder_server.address, topic)
    served = Console(scorer.address)
    states: list[str] = []
    try:
        with httpx.stream("GET", served.url + "/events", timeout=30) as response:
            event: dict = {}
            for raw in response.iter_lines():
                if raw:
                    field, _, value = raw.partition(":")
                    event[field] = value.lstrip(" ")
                    continue
                if event.get("event") == "status":
                    states.append(json.loads(event["data"])["state"])
                    if states == ["live"]:
                        scorer.stop(0)
                    assert event.get("retry") == "3000"  # the browser reconnects after 3 s
                event = {}
        assert states == ["live", "lost"]  # then the stream ends: the browser's reconnect is the retry
    finally:
        served.stop()
        scorer.stop(0)


def test_series_and_template_counts(console, story, history):
    scored = list(history.score_lines([NORMAL_LINE] * 30))  # the scorer's lines per second move
    assert len(scored) == 30 and all(item.HasField("result") for item in scored)
    series = wait_for(lambda: (s := httpx.get(console.url + "/api/series", timeout=10).json())["lines_per_second"]
                      and max(v for _, v in s["lines_per_second"]) > 0 and s["anomalies_in_window"] >= 4 and s,
                      30, "the pulse to sample a scoring scorer")
    assert sum(v for _, v in series["anomalies_per_minute"]) > 0
    counts = httpx.get(console.url + "/api/templates", timeout=10).json()
    lines = {row["template"]: row["count"] for row in counts["lines"]}
    assert lines.get("E7", 0) >= 2 and lines.get("E8", 0) >= 1
    assert {row["template"] for row in counts["blocks"]} >= {"E5", "E7", "E11", "E22"}
    page = httpx.get(console.url + "/stats", timeout=10)
    assert page.status_code == 200 and '<svg id="anomaly-chart"' in page.text and "E7" in page.text


# --- a real browser ---

@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("Debian's chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(30)
    yield session
    session.quit()


def test_browser_sees_a_new_anomaly_live_and_its_hostile_line_as_text(console, story, writer, history, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(browser, 30)
    browser.get(console.url + "/")
    wait.until(lambda b: b.find_element(By.ID, "feed-status").get_attribute("data-state") == "live")
    browser.execute_script("window.notReloaded = true;")
    blk = f"blk_{uuid.uuid4().int % 10**12}"
    hostile = XSS.replace("blk_-77", blk)
    before = newest(history)
    writer.write([line("live-xss", hostile, blk)])
    new_id = held(history, before + 1)
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'#rows tr[data-id="{new_id}"]')))
    assert browser.execute_script("return window.notReloaded === true")  # it came live, no reload
    assert row.find_element(By.CSS_SELECTOR, "td.text").text == hostile
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    assert browser.find_elements(By.TAG_NAME, "img") == [] and not browser.find_elements(By.CSS_SELECTOR, "#rows script")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "console-feed.png"))

    row.find_element(By.CSS_SELECTOR, "td.id a").click()
    message = wait.until(ec.visibility_of_element_located((By.ID, "message")))
    assert browser.current_url == f"{console.url}/anomaly/{new_id}"
    assert message.text == hostile and "<script>window.pwned=1</script>" in message.text
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_element(By.ID, "template").text == "E7"
    browser.save_screenshot(str(ARTIFACTS / "console-anomaly.png"))

    browser.get(console.url + f"/anomaly/{story['block']}")
    assert browser.find_element(By.ID, "evidence-kind").text == "evidence_event"
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#timeline li")] == ["E5", "E22", "E5", "E7", "E11"]
    assert browser.execute_script("return typeof window.pwned") == "undefined"

    browser.get(console.url + "/stats")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#anomaly-chart polyline.series"))
    browser.save_screenshot(str(ARTIFACTS / "console-stats.png"))


def test_false_alarm_button_stores_the_label_and_marks_the_anomaly_suppressed(console, writer, history, browser,
                                                                              tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from logmesh.v1 import feedback_pb2 as fpb, feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc
    tag = f"fb-{uuid.uuid4().hex[:8]}"
    before = newest(history)
    writer.write([line(tag, f"writeBlock blk_{tag} received exception java.io.IOException", f"blk_{tag}")])
    anomaly_id = held(history, before + 1)
    browser.get(console.url + f"/anomaly/{anomaly_id}")
    assert not browser.find_elements(By.ID, "suppressed")
    browser.find_element(By.ID, "fb-false-alarm").click()
    stored = WebDriverWait(browser, 30).until(ec.visibility_of_element_located((By.ID, "feedback-id"))).text
    assert re.fullmatch(r"fb-\d+", stored) and browser.current_url.startswith(f"{console.url}/anomaly/{anomaly_id}?")
    # the page it came back to already shows the mark: the suppression applies at once
    assert stored in browser.find_element(By.ID, "suppressed").text
    browser.save_screenshot(str(tmp_path / "console-feedback.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "console-feedback.png"))

    labels = fsgrpc.FeedbackServiceStub(history.channel).ListFeedback(fspb.ListFeedbackRequest(), timeout=30).feedback
    got = next(fb for fb in labels if fb.feedback_id == stored)
    assert got.WhichOneof("subject") == "record_id" and got.record_id == f"rec-{tag}"
    assert (got.label, got.scope, got.action) == (fpb.FEEDBACK_LABEL_FALSE_ALARM, fpb.FEEDBACK_SCOPE_ITEM,
                                                   fpb.FEEDBACK_ACTION_SUPPRESS_AND_LEARN)
    assert got.author == "console"
    marked = {e.id: e.suppressed_by_feedback_id for e in history.list_anomalies(100_000)[0]}
    assert marked[anomaly_id] == stored and marked.get(anomaly_id - 1) != stored

    # a double submit of one button of one render (the same token) stores one label
    form = {"record_id": f"rec-{tag}", "back": f"/anomaly/{anomaly_id}", "token": f"twice-{tag}",
            "choice": "true_alarm"}
    first, second = (httpx.post(console.url + "/feedback", data=form, timeout=30) for _ in range(2))
    assert first.status_code == second.status_code == 303 and "duplicate" not in first.headers["location"]
    assert second.headers["location"] == first.headers["location"] + "&duplicate=1"


def test_feedback_post_refuses_other_origins_and_shows_the_scorers_reason_escaped(console, writer, history):
    tag = f"fb-{uuid.uuid4().hex[:8]}"
    before = newest(history)
    writer.write([line(tag, "a line of no template <b>x</b>", f"blk_{tag}", template="")])
    anomaly_id = held(history, before + 1)
    form = {"record_id": f"rec-{tag}", "back": f"/anomaly/{anomaly_id}", "token": "t0ken-for-a-test",
            "choice": "suppress_template"}
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"},
                    {"referer": "http://evil.example/anomaly/1"}):
        refused = httpx.post(console.url + "/feedback", data=form, headers=headers, timeout=30)
        assert refused.status_code == 403 and "another site" in refused.text
    assert not any(fb.record_id == f"rec-{tag}" for fb in _labels(history))  # nothing was stored
    # from the console's own origin: the scorer's INVALID_ARGUMENT reason is shown on the page, escaped
    sent = httpx.post(console.url + "/feedback", data=form, headers={"origin": console.url}, timeout=30)
    assert sent.status_code == 303 and sent.headers["location"].startswith(f"/anomaly/{anomaly_id}?feedback_error=")
    shown = httpx.get(console.url + sent.headers["location"], timeout=30).text
    assert 'id="feedback-error"' in shown and "no template id" in shown
    crafted = httpx.get(console.url + f"/anomaly/{anomaly_id}", params={"feedback_error": "<script>x</script>"},
                        timeout=30).text
    assert "<script>x</script>" not in crafted and "&lt;script&gt;x&lt;/script&gt;" in crafted
    bad = httpx.post(console.url + "/feedback", data=form | {"back": "https://evil.example/"}, timeout=30)
    assert bad.status_code == 400 and "back must be" in bad.text


def _labels(history: ScorerClient) -> list:
    from logmesh.v1 import feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc
    stub = fsgrpc.FeedbackServiceStub(history.channel)
    return list(stub.ListFeedback(fspb.ListFeedbackRequest(page_size=500, include_expired=True), timeout=30).feedback)


# --- the command ---

def _console_cmd(*args: str) -> list[str]:
    return [LOGMESH, "serve", "console", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_names_every_option_and_loads_no_web_stack():
    listed = subprocess.run([LOGMESH, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "console" in listed.stdout
    probe = ("import sys; from logmesh.cli import main\ntry: main(['serve', 'console', '--help'])\n"
             "except SystemExit: pass\nprint(sorted(m for m in ('starlette', 'uvicorn', 'jinja2', 'sse_starlette') "
             "if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr
    for option in ("--port", "--host", "--scorer", "--tls-ca", "--token", "--stats-interval", "--chart-minutes",
                   "--max-feeds", "--allow-plaintext", "--author", "--access-log", "--log-level"):
        assert option in out.stdout
    remote = subprocess.run(_console_cmd("--host", "0.0.0.0"), capture_output=True, text=True, timeout=60)
    assert remote.returncode == 2 and remote.stderr.startswith("error: --host 0.0.0.0 is not loopback")


def test_a_taken_port_and_an_unreachable_scorer_are_one_line_each(fed_scorer):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run(_console_cmd("--port", str(port), "--scorer", fed_scorer.address),
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: cannot listen on 127.0.0.1:") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run(_console_cmd("--port", "0", "--scorer", f"127.0.0.1:{_free_port()}"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the scorer" in errors[0]


def _served(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Starts the command and returns it with the URL it logged."""
    proc = subprocess.Popen(_console_cmd(*args), stderr=subprocess.PIPE, text=True, env=env)
    url = ""
    deadline = time.monotonic() + 60
    while not url and time.monotonic() < deadline:
        text = proc.stderr.readline()
        if not text:
            break
        url = json.loads(text).get("url", "") if text.startswith("{") else ""
    assert url, f"the console did not start (exit {proc.poll()})"
    return proc, url


@pytest.fixture(scope="module")
def tls_scorer(tmp_path_factory, trained_models, embedder_server):
    """The real scorer with TLS and a token (history off): what the console reaches with the CLI's options."""
    from logmesh.runtime.security import ServerSecurity
    from logmesh.scorer.service import serve
    certs = tmp_path_factory.mktemp("console-tls")
    subprocess.run([str(REPO / "deploy/tls/make-certs.sh"), str(certs)], check=True, capture_output=True)
    server = serve(0, trained_models, embedder_server.address, reload_interval=60, security=ServerSecurity(
        tls_cert=str(certs / "server.pem"), tls_key=str(certs / "server.key"), tokens=frozenset({TOKEN})))
    ScorerClient(server.address, security=ChannelSecurity(tls=True, ca=str(certs / "ca.pem"))).wait_until_serving(30)
    yield server, certs
    server.stop(0)


def test_the_command_serves_over_tls_with_a_token_and_stops_on_sigterm(tls_scorer):
    server, certs = tls_scorer
    tls = ["--scorer", server.address, "--tls-ca", str(certs / "ca.pem")]
    refused = subprocess.run(_console_cmd("--port", "0", *tls), capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "LOGMESH_TOKEN"})
    assert refused.returncode == 2 and "refused the token" in refused.stderr and "Traceback" not in refused.stderr
    env = {**os.environ, "LOGMESH_TOKEN": TOKEN}  # the token as the CLI takes it, from the environment
    proc, url = _served(["--port", "0", *tls], env)
    try:
        stats = httpx.get(url + "api/stats", timeout=10)
        assert stats.status_code == 200 and stats.json()["model_version"]
        assert httpx.get(url + "healthz", timeout=10).json()["status"] == "SERVING"
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
