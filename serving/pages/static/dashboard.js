// The operator dashboard: polls /dashboard/data and draws its figures, with sparklines as
// hand-written inline SVG (no chart library, nothing fetched from outside the app).
"use strict";
(function () {
  const cfg = window.DASHBOARD;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  const num = (v, digits) => (v == null ? "-" : Number(v).toLocaleString(undefined, { maximumFractionDigits: digits == null ? 1 : digits }));

  // A sparkline of `values` (nulls are gaps) with the newest value's maximum as its label.
  function sparkline(svg, values, unit) {
    const w = Number(svg.getAttribute("width")), h = Number(svg.getAttribute("height"));
    const real = values.filter((v) => v != null);
    svg.replaceChildren();
    const axis = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({ x1: 0, y1: h - 1, x2: w, y2: h - 1, stroke: "#d9dee7" })) axis.setAttribute(k, v);
    svg.append(axis);
    if (real.length < 2) return;
    const top = Math.max(...real) || 1;
    const step = w / Math.max(1, values.length - 1);
    let path = "", pen = false;
    values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      const x = (i * step).toFixed(1), y = (h - 3 - (v / top) * (h - 14)).toFixed(1);
      path += `${pen ? "L" : "M"}${x},${y} `;
      pen = true;
    });
    const line = document.createElementNS(SVG, "path");
    for (const [k, v] of Object.entries({ d: path, fill: "none", stroke: "#2458c6", "stroke-width": 1.5 })) line.setAttribute(k, v);
    const label = document.createElementNS(SVG, "text");
    for (const [k, v] of Object.entries({ x: w - 2, y: 10, "text-anchor": "end", "font-size": 10, fill: "#5b6576" })) label.setAttribute(k, v);
    label.textContent = `max ${num(top)}${unit}`;
    svg.append(line, label);
  }

  function note(id, section) {
    $(id).replaceChildren(el("div", { class: "note" }, section.note));
  }

  function events(d) {
    const e = d.events;
    if (!e.ok) { $("events-rate").textContent = "-"; $("events-sub").textContent = e.note; $("lag").textContent = "-"; $("dead-letters").textContent = "-"; return; }
    $("events-rate").textContent = e.per_s == null ? "measuring" : `${num(e.per_s)}/s`;
    $("events-sub").textContent = `${num(e.events_offset, 0)} produced in all`;
    $("lag").textContent = num(e.lag, 0);
    $("dead-letters").textContent = num(e.dead_letters, 0);
    $("dead-letters").className = e.dead_letters > 0 ? "value warn" : "value";
  }

  function freshness(d) {
    const f = d.freshness;
    if (!f.ok) { $("freshness").textContent = "-"; $("fresh-sub").textContent = f.note; return; }
    if (f.fresh_ms_p50 == null) {
      $("freshness").textContent = "no live events yet";
      $("fresh-sub").textContent = `pusher lag ${num(f.lag, 0)}, heartbeat ${f.heartbeat_age_s} s ago`;
      return;
    }
    $("freshness").textContent = `${num(f.fresh_ms_p50)} / ${num(f.fresh_ms_p99)} ms`;
    $("fresh-sub").textContent = `event time to online store, last ${num(f.fresh_ms_n, 0)} live session rows; pusher lag ${num(f.lag, 0)}, ${num(f.dead_letters, 0)} dead-lettered`;
  }

  function serving(d) {
    const s = d.serving;
    const where = s.window_s == null ? "since this worker started" : `over the last ${num(s.window_s, 0)} s`;
    if (!s.requests) {
      $("latency").textContent = "no requests yet";
      $("degraded").textContent = "-";
    } else {
      $("latency").textContent = `${num(s.p50_ms, 2)} / ${num(s.p99_ms, 2)} ms`;
      $("degraded").textContent = `${num(s.degraded_rate * 100, 2)}%`;
      $("degraded").className = s.degraded_rate > 0.01 ? "value warn" : "value";
    }
    $("latency-sub").textContent = `${num(s.requests, 0)} requests ${where}`;
    $("degraded-sub").textContent = `of /recommend answers ${where}`;
  }

  function champion(d) {
    const c = d.champion, s = d.serving;
    if (!c) return;
    const variants = s.variants.map((v) => `${v.name} (${v.policy})`).join(", ");
    const model = s.model_version == null ? "no model yet (popular and count-based sources only)" : `two_tower v${s.model_version}`;
    const served = el("p", {}, "Serving answers with ", el("b", { id: "serving-model" }, model), `; A/B variants ${variants}.`);
    if (!c.ok) { $("champion").replaceChildren(served, el("div", { class: "note" }, c.note)); return; }
    if (c.version == null) { $("champion").replaceChildren(served, el("p", { class: "muted" }, "No champion registered yet (the retraining DAG promotes the first).")); return; }
    const rows = Object.entries(c.metrics).slice(0, 24).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, num(v, 4))));
    $("champion").replaceChildren(served,
      el("p", {}, `Champion (MLflow): ${c.model} version `, el("b", { id: "champion-version" }, c.version), `, run ${c.run_id}. Offline metrics:`),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "metric"), el("th", {}, "value"))), el("tbody", {}, ...rows)));
  }

  function dags(d) {
    const a = d.dags;
    if (!a) return;
    if (!a.ok) { note("dags", a); return; }
    const rows = [];
    for (const dag of a.dags) {
      const runs = dag.runs.length ? dag.runs : [null];
      runs.forEach((r, i) => rows.push(el("tr", {},
        el("td", {}, i === 0 ? `${dag.dag_id}${dag.paused ? " (paused)" : ""}` : ""),
        el("td", { class: r ? `state-${r.state}` : "muted" }, r ? r.state : "no run yet"),
        el("td", {}, r ? r.run_type : ""), el("td", {}, r ? (r.logical_date || "") : ""),
        el("td", {}, r ? (r.start_date || "") : ""), el("td", {}, r ? (r.end_date || "") : ""))));
    }
    $("dags").replaceChildren(el("p", { class: "muted" }, `From ${a.url}`),
      el("table", {}, el("thead", {}, el("tr", {}, ...["DAG", "state", "type", "logical date", "started", "ended"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  }

  async function refresh() {
    const headers = {};
    if (cfg.keysRequired) {
      const key = $("api-key").value || sessionStorage.getItem("lambdarec.dashboard-key") || "";
      if (key) headers["X-API-Key"] = key;
    }
    try {
      const response = await fetch(cfg.data, { headers: headers });
      const body = await response.json().catch(() => null);
      if (!response.ok) throw new Error(body && body.error ? body.error.message : response.statusText);
      $("message").hidden = true;
      $("updated").textContent = body.at;
      events(body); freshness(body); serving(body); champion(body); dags(body);
      const h = body.history;
      sparkline($("chart-events"), h.events_per_s, "/s");
      sparkline($("chart-lag"), h.lag, "");
      sparkline($("chart-fresh"), h.fresh_p99_ms, " ms");
      sparkline($("chart-latency"), h.p99_ms, " ms");
      document.body.dataset.loaded = "1";
    } catch (e) {
      $("message").hidden = false;
      $("message").className = "note error";
      $("message").textContent = `/dashboard/data: ${e.message}`;
    }
  }

  if (cfg.keysRequired) {
    const input = $("api-key");
    input.value = sessionStorage.getItem("lambdarec.dashboard-key") || "";
    input.addEventListener("change", () => { sessionStorage.setItem("lambdarec.dashboard-key", input.value); refresh(); });
  }
  refresh();
  setInterval(refresh, cfg.refreshMs);
})();
