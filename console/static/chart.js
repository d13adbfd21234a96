// The two rate charts, drawn as SVG polylines from /api/series every few seconds (numbers only).
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 160, PAD = 24;

  function draw(svg, points, t0, t1, unit) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const top = Math.max(1e-9, ...points.map((p) => p[1]));
    const x = (t) => PAD + (W - 2 * PAD) * (t - t0) / Math.max(1, t1 - t0);
    const y = (v) => H - PAD - (H - 2 * PAD) * v / top;
    const axis = document.createElementNS(NS, "polyline");
    axis.setAttribute("class", "axis");
    axis.setAttribute("points", `${PAD},${PAD} ${PAD},${H - PAD} ${W - PAD},${H - PAD}`);
    svg.appendChild(axis);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("class", "series");
    line.setAttribute("points", points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
    svg.appendChild(line);
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", String(PAD + 4));
    label.setAttribute("y", String(PAD - 6));
    label.textContent = `max ${top.toFixed(top < 10 ? 2 : 0)} ${unit}`;
    svg.appendChild(label);
  }

  async function refresh() {
    const status = document.getElementById("pulse-status");
    try {
      const response = await fetch("/api/series", {cache: "no-store"});
      const s = await response.json();
      const t1 = s.now, t0 = s.now - s.window_seconds;
      draw(document.getElementById("anomaly-chart"), s.anomalies_per_minute, t0, t1, "anomalies/min");
      draw(document.getElementById("lines-chart"), s.lines_per_second, t0, t1, "lines/s");
      status.textContent = s.stats_error ? "scorer stats: " + s.stats_error : s.feed_status;
    } catch (err) {
      status.textContent = "cannot reach the console: " + err;
    }
  }
  refresh();
  setInterval(refresh, 5000);
})();
