// heatcache console: renders the server's snapshot (Server-Sent Events) into the page.
// Everything from the network is inserted as text (textContent), never as HTML: URLs and
// hosts come from campus traffic.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
let chart = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}
const pct = (r) => (r == null ? "–" : `${(100 * r).toFixed(1)} %`);
const secs = (s) => (s == null ? "–" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);
const clock = (ts) => (ts ? new Date(ts * 1000).toLocaleTimeString() : "–");
const badge = (text, cls) => el("span", { class: `badge ${cls}` }, text);
const urlCell = (url) => el("td", { class: "url", title: url }, url);

function render(s) {
  document.getElementById("updated").textContent = `updated ${clock(s.ts)}`;
  const st = s.steering, dl = s.downloads, sv = s.savings, c = s.cache;
  const pf = document.getElementById("prefetch-state");
  pf.textContent = dl.prefetch_paused ? "prefetch paused" : "prefetch running";
  pf.className = `badge ${dl.prefetch_paused ? "warn" : "ok"}`;
  const ss = document.getElementById("steering-state");
  ss.textContent = st.steering_stopped ? "steering stopped" : "steering on";
  ss.className = `badge ${st.steering_stopped ? "warn" : "ok"}`;

  // savings
  const hour = sv.windows["1h"];
  document.getElementById("hits-total").textContent = sv.total_hits;
  const saved = document.getElementById("bytes-saved-total");
  saved.textContent = bytes(sv.total_bytes_saved);
  saved.dataset.bytes = sv.total_bytes_saved;
  document.getElementById("hit-ratio").textContent = pct(hour.request_hit_ratio);
  document.getElementById("byte-hit-ratio").textContent = pct(hour.byte_hit_ratio);
  fill("windows", Object.entries(sv.windows).map(([label, w]) => el("tr", { "data-window": label },
    el("td", {}, label), el("td", {}, w.hits), el("td", {}, w.misses), el("td", {}, pct(w.request_hit_ratio)),
    el("td", {}, bytes(w.bytes_saved)), el("td", {}, bytes(w.prefetched_bytes)), el("td", {}, pct(w.byte_hit_ratio)),
    el("td", {}, bytes(w.net_saved_bytes)))));
  fill("savings-hosts", hour.hosts.map((h) => el("tr", {}, el("td", {}, h.host), el("td", {}, h.hits), el("td", {}, bytes(h.bytes_saved)))));
  fill("savings-networks", hour.networks.map((n) => el("tr", { "data-network": n.network, "data-bytes": n.bytes_saved },
    el("td", {}, n.network), el("td", {}, bytes(n.bytes_saved)))));
  drawChart(sv.chart);

  // stages
  fill("stages", s.stages.map((r) => el("tr", { "data-stage": r.stage },
    el("td", {}, r.stage), el("td", {}, badge(r.status, r.status)), el("td", {}, r.age_s == null ? "never" : `${secs(r.age_s)} ago`),
    el("td", {}, r.lag == null ? "–" : r.lag), el("td", { class: "url", title: r.last_error }, r.last_error))));

  // steering
  const eh = document.getElementById("edge-health");
  eh.textContent = st.edge_healthy ? "healthy" : "not answering";
  eh.className = `badge ${st.edge_healthy ? "ok" : "off"}`;
  fill("steering", st.hosts.map((h) => el("tr", { "data-host": h.host }, el("td", {}, h.host), el("td", {}, h.objects),
    el("td", {}, h.steered ? badge("steered", "ok") : badge("no", "unknown")), el("td", {}, pct(h.bypass_ratio)), el("td", {}, h.pinned || "–"))));

  // downloads: running first, then queued, failed, done
  const rows = [];
  for (const d of dl.running) rows.push(el("tr", { "data-key": d.cache_key, "data-state": "running" }, urlCell(d.url),
    el("td", {}, "running"), el("td", {}, el("progress", { max: 100, value: d.percent }), ` ${d.percent.toFixed(0)} %`),
    el("td", {}, `${bytes(d.speed_bps)}/s`), el("td", {}, secs(d.eta_s)), el("td", {}, `${bytes(d.done_bytes)} of ${bytes(d.total_bytes)}`)));
  for (const d of dl.queued) rows.push(el("tr", { "data-key": d.cache_key, "data-state": "queued" }, urlCell(d.url),
    el("td", {}, "queued"), el("td", {}, el("progress", { max: 100, value: 0 })), el("td", {}, "–"), el("td", {}, "–"), el("td", {}, d.reason)));
  for (const d of dl.failed) rows.push(el("tr", { "data-key": d.cache_key, "data-state": "failed" }, urlCell(d.url),
    el("td", {}, badge("failed", "off")), el("td", {}, "–"), el("td", {}, "–"), el("td", {}, "–"), el("td", { class: "url", title: d.error }, d.error)));
  for (const d of dl.done) rows.push(el("tr", { "data-key": d.cache_key, "data-state": "done" }, urlCell(d.url),
    el("td", {}, "done"), el("td", {}, el("progress", { max: 100, value: 100 }), " 100 %"), el("td", {}, "–"), el("td", {}, "–"), el("td", {}, `${bytes(d.total_bytes)} at ${clock(d.ts)}`)));
  fill("downloads", rows);

  // heat
  fill("heat-urls", s.heat.urls.map((h) => el("tr", { "data-key": h.cache_key }, urlCell(h.url), el("td", {}, h.heat), el("td", {}, h.clients))));
  fill("heat-hosts", s.heat.hosts.map((h) => el("tr", {}, el("td", {}, h.host), el("td", {}, h.heat), el("td", {}, h.clients), el("td", {}, pct(h.https_share)))));

  // cache
  document.getElementById("cache-used").textContent = bytes(c.bytes_used);
  document.getElementById("cache-quota").textContent = c.quota_bytes ? ` of ${bytes(c.quota_bytes)} (${pct(c.used_share)})` : " (no quota set)";
  document.getElementById("cache-objects").textContent = c.objects;
  document.getElementById("cache-bar").value = c.used_share || 0;
  fill("cache-recent", c.recent.map((e) => el("tr", { "data-key": e.cache_key, "data-event": e.state }, el("td", {}, clock(e.ts)),
    el("td", {}, e.state + (e.source ? ` (${e.source})` : "")), urlCell(e.url || e.cache_key), el("td", {}, e.size ? bytes(e.size) : "–"))));
  fill("cache-largest", c.largest.map((o) => el("tr", {}, urlCell(o.url), el("td", {}, bytes(o.size)), el("td", {}, o.hits))));
  fill("cache-most-hit", c.most_hit.map((o) => el("tr", {}, urlCell(o.url), el("td", {}, o.hits), el("td", {}, bytes(o.size)))));
  fill("objects", c.objects_list.map((o) => el("tr", { "data-key": o.cache_key }, urlCell(o.url), el("td", {}, bytes(o.size)), el("td", {}, o.hits),
    el("td", {}, el("button", { class: "purge", "data-url": o.url, onclick: () => act("purge-url", o.url, "") }, "purge"), " ",
      el("button", { class: "pin", onclick: () => act("pin-url", o.cache_key, "always") }, "pin"), " ",
      el("button", { class: "never", onclick: () => act("pin-url", o.cache_key, "never") }, "never")))));
  fill("pins", st.control.pins.map((p) => el("tr", {}, el("td", {}, `${p.target} ${p.subject}`), el("td", {}, p.value), el("td", {}, p.by), el("td", {}, clock(p.ts)))));
}

function drawChart(series) {
  const data = [series.ts, series.bytes_saved.map((b) => b / 1048576), series.hits];
  const box = document.getElementById("chart");
  const width = Math.max(300, box.clientWidth || 800);
  if (chart === null) {
    chart = new uPlot({
      width, height: 180, title: "served from the cache, last hour",
      series: [{}, { label: "MiB served", stroke: "#2e8b57", fill: "#2e8b5733" }, { label: "hits", stroke: "#3366cc", scale: "hits" }],
      axes: [{}, { label: "MiB" }, { scale: "hits", side: 1, grid: { show: false } }],
    }, data, box);
  } else {
    chart.setData(data);
  }
}

async function act(action, subject, value) {
  const what = `${action} ${subject} ${value}`.trim();
  if (!window.confirm(`Really ${what}?`)) return;
  const out = document.getElementById("action-result");
  try {
    const resp = await fetch("/api/action", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Heatcache-CSRF": CSRF },
      body: JSON.stringify({ action, subject, value }),
    });
    const body = await resp.json();
    out.textContent = `${what}: ${resp.ok ? "done" : "refused"} ${JSON.stringify(body)}`;
    out.dataset.ok = resp.ok && body.ok ? "1" : "0";
  } catch (err) {
    out.textContent = `${what}: ${err}`;
    out.dataset.ok = "0";
  }
}

document.getElementById("action-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const kind = document.getElementById("action-kind").value;
  act(kind, document.getElementById("action-subject").value, kind.startsWith("pin") ? document.getElementById("action-value").value : "");
});
for (const b of document.querySelectorAll("button[data-action]")) {
  b.addEventListener("click", () => act(b.dataset.action, "", b.dataset.value));
}

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("/api/stream");
  source.onopen = () => { conn.textContent = "live"; conn.className = "badge ok"; };
  source.onmessage = (ev) => render(JSON.parse(ev.data));
  source.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "badge off"; };
}
connect();
