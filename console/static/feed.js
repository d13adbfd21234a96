// The live feed: an EventSource on /events; each anomaly becomes a row built with textContent only (log lines
// are attacker-controlled text: never innerHTML with data). The browser reconnects by itself and sends
// Last-Event-ID, so the console resumes the scorer's watch after the last row shown.
"use strict";
(function () {
  const table = document.getElementById("feed");
  const rows = document.getElementById("rows");
  const status = document.getElementById("feed-status");
  const shown = new Set(Array.from(rows.querySelectorAll("tr")).map((tr) => tr.dataset.id));
  const params = new URLSearchParams({after_id: table.dataset.afterId, min_score: table.dataset.minScore,
                                      block_id: table.dataset.blockId, blocks_only: table.dataset.blocksOnly});
  const MAX_ROWS = 500;

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.className = cls;
    td.textContent = text == null ? "" : String(text);
    tr.appendChild(td);
    return td;
  }

  function row(a) {
    const tr = document.createElement("tr");
    tr.className = a.kind === "block" ? "block" : "line";
    tr.dataset.id = String(a.id);
    const link = document.createElement("a");
    link.href = "/anomaly/" + encodeURIComponent(String(Number(a.id)));
    link.textContent = "#" + a.id;
    cell(tr, "", "id").appendChild(link);
    cell(tr, a.recorded_time, "time");
    cell(tr, a.kind === "block" ? "block " + a.verdict_kind : "line", "kind");
    cell(tr, Number(a.score).toFixed(2), "score");
    cell(tr, a.kind === "block" ? a.block_id : (a.template_id + " " + a.component), "subject");
    cell(tr, a.text, "text");
    tr.classList.add("new");
    return tr;
  }

  const source = new EventSource("/events?" + params.toString());
  source.addEventListener("anomaly", (event) => {
    const a = JSON.parse(event.data);
    if (shown.has(String(a.id))) return;
    shown.add(String(a.id));
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
    rows.insertBefore(row(a), rows.firstChild);
    while (rows.rows.length > MAX_ROWS) rows.deleteRow(rows.rows.length - 1);
  });
  source.addEventListener("status", (event) => {
    const s = JSON.parse(event.data);
    status.textContent = s.detail;
    status.dataset.state = s.state;
  });
  source.onerror = () => {
    status.textContent = source.readyState === EventSource.CLOSED
      ? "the live feed closed; reload the page" : "lost the console; reconnecting ...";
    status.dataset.state = "lost";
  };
})();
