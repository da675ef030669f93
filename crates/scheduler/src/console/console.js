// The Damselfly console: reads the scheduler's JSON API and follows its server-sent events.
// Tables are keyed by ID and updated cell by cell, so a refresh with 1,000 hosts touches
// only what changed. The token for changes is asked for, kept in this tab only, and sent as
// a bearer header; it is never part of the page.
"use strict";

const API = "/api/v1";
const SVG_NS = "http://www.w3.org/2000/svg";
// Refresh at most this often however many changes arrive.
const REFRESH_MS = 500;
// `?live=0`: a snapshot without the event stream, for headless browsers that wait for the
// network to settle before they dump or capture the page.
const LIVE = new URLSearchParams(location.search).get("live") !== "0";

const view = {
  selected: decodeURIComponent((location.hash.match(/task=([^&]+)/) || [])[1] || ""),
  writable: false,
  dirty: { lists: true, flow: true },
  timer: null,
  lastRefresh: 0,
  rates: new Map(), // host id -> {at, in, out}
};

function $(id) { return document.getElementById(id); }

function human(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return (unit === 0 ? value.toFixed(0) : value.toFixed(2)) + " " + units[unit];
}

function token() { return sessionStorage.getItem("damselfly-token"); }

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (opts.method && opts.method !== "GET" && token()) {
    opts.headers.Authorization = "Bearer " + token();
  }
  const response = await fetch(API + path, opts);
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) sessionStorage.removeItem("damselfly-token");
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// Sets a cell's text (and data-bytes for byte counts) only when it changed.
function setCell(td, text, bytes) {
  const value = text === null || text === undefined ? "" : String(text);
  if (td.textContent !== value) td.textContent = value;
  if (bytes !== undefined && td.dataset.bytes !== String(bytes)) td.dataset.bytes = String(bytes);
}

// Makes `tbody` hold one row per item, keyed by `key(item)`; `fill(tr, item, fresh)` writes
// the cells. Rows of items that are gone are removed; others are kept and updated in place.
function syncRows(tbody, items, key, columns, fill) {
  const rows = new Map();
  for (const tr of tbody.rows) rows.set(tr.dataset.key, tr);
  for (const item of items) {
    const k = key(item);
    let tr = rows.get(k);
    const fresh = !tr;
    if (fresh) {
      tr = document.createElement("tr");
      tr.dataset.key = k;
      for (const cls of columns) {
        const td = document.createElement("td");
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    rows.delete(k);
    fill(tr, item, fresh);
  }
  for (const tr of rows.values()) tr.remove();
}

function renderHosts(hosts) {
  const now = Date.now();
  const columns = ["id", "", "", "num", "num", "num", "num", "num", "num", "num", "num"];
  syncRows($("hosts").tBodies[0], hosts, (h) => h.id, columns, (tr, h) => {
    const c = tr.cells;
    tr.dataset.id = h.id;
    tr.dataset.type = h.type;
    const inBytes = h.bytes_in_from_peers + h.bytes_in_from_origin;
    const last = view.rates.get(h.id);
    let inRate = "", outRate = "";
    if (last && now > last.at) {
      const secs = (now - last.at) / 1000;
      inRate = human(Math.max(0, inBytes - last.in) / secs) + "/s";
      outRate = human(Math.max(0, h.bytes_out_to_peers - last.out) / secs) + "/s";
    }
    view.rates.set(h.id, { at: now, in: inBytes, out: h.bytes_out_to_peers });
    setCell(c[0], h.hostname || h.id);
    setCell(c[1], h.type);
    setCell(c[2], h.ip + ":" + h.port);
    setCell(c[3], h.cpu_percent === null ? "" : h.cpu_percent.toFixed(0) + "%");
    setCell(c[4], human(h.bytes_in_from_peers), h.bytes_in_from_peers);
    setCell(c[5], human(h.bytes_in_from_origin), h.bytes_in_from_origin);
    setCell(c[6], human(h.bytes_out_to_peers), h.bytes_out_to_peers);
    setCell(c[7], inRate);
    setCell(c[8], outRate);
    setCell(c[9], h.disk_total ? human(h.disk_used) + " / " + human(h.disk_total) : "");
    setCell(c[10], h.peers);
  });
  const present = new Set(hosts.map((h) => h.id));
  for (const id of view.rates.keys()) {
    if (!present.has(id)) view.rates.delete(id);
  }
}

function renderTasks(tasks) {
  const columns = ["id", "wrap", "num", "", "num", "num", ""];
  syncRows($("tasks").tBodies[0], tasks, (t) => t.id, columns, (tr, t, fresh) => {
    const c = tr.cells;
    tr.dataset.id = t.id;
    tr.classList.toggle("selected", t.id === view.selected);
    setCell(c[0], t.id.slice(0, 12));
    setCell(c[1], t.url);
    setCell(c[2], human(t.content_length), t.content_length);
    setCell(c[3], t.state);
    setCell(c[4], t.peers.length);
    setCell(c[5], human(t.origin_bytes_saved), t.origin_bytes_saved);
    if (fresh) {
      tr.addEventListener("click", () => select(t.id));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.className = "remove";
      remove.hidden = !(view.writable && token());
      remove.addEventListener("click", (event) => { event.stopPropagation(); removeTask(t.id); });
      c[6].appendChild(remove);
    }
  });
  if (!view.selected && tasks.length) {
    // The task that moved the most bytes is the interesting one.
    const busiest = tasks.reduce((a, b) => (bytesOf(b) > bytesOf(a) ? b : a));
    select(busiest.id);
  }
}

function bytesOf(t) { return t.bytes_from_origin + t.bytes_from_seeds + t.bytes_from_peers; }

function select(id) {
  view.selected = id;
  history.replaceState(null, "", location.search + "#task=" + encodeURIComponent(id));
  for (const tr of $("tasks").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  view.dirty.flow = true;
  schedule();
}

function hostLabel(end) { return end.hostname || end.ip || end.peer_id; }

function renderFlow(task) {
  $("flow-title").textContent = task.id;
  $("flow-url").textContent = task.url;
  const parts = [
    ["bytes-origin", task.bytes_from_origin],
    ["bytes-seeds", task.bytes_from_seeds],
    ["bytes-peers", task.bytes_from_peers],
    ["bytes-saved", task.origin_bytes_saved],
  ];
  for (const [id, bytes] of parts) setCell($(id), human(bytes), bytes);
  const total = Math.max(1, bytesOf(task));
  const bar = $("source-bar").children;
  bar[0].style.width = (100 * task.bytes_from_origin / total) + "%";
  bar[1].style.width = (100 * task.bytes_from_seeds / total) + "%";
  bar[2].style.width = (100 * task.bytes_from_peers / total) + "%";
  const edgeKey = (e) => e.parent.peer_id + ">" + e.child.peer_id;
  syncRows($("edges").tBodies[0], task.edges, edgeKey, ["", "", "num"], (tr, e) => {
    tr.className = "edge";
    tr.dataset.parentHost = e.parent.host_id || "";
    tr.dataset.childHost = e.child.host_id || "";
    tr.dataset.parentType = e.parent.type;
    setCell(tr.cells[0], hostLabel(e.parent) + (e.parent.type === "seed" ? " (seed)" : ""));
    setCell(tr.cells[1], hostLabel(e.child));
    setCell(tr.cells[2], human(e.bytes), e.bytes);
  });
  const columns = ["", "", "", "num", "num", "reason"];
  syncRows($("peers").tBodies[0], task.peers, (p) => p.id, columns, (tr, p) => {
    tr.dataset.host = p.host_id;
    tr.dataset.reason = p.origin_reason ? p.origin_reason.code : "";
    setCell(tr.cells[0], p.hostname || p.ip || p.host_id);
    setCell(tr.cells[1], p.host_type);
    setCell(tr.cells[2], p.state);
    setCell(tr.cells[3], p.finished_pieces);
    setCell(tr.cells[4], human(p.bytes_from_origin), p.bytes_from_origin);
    setCell(tr.cells[5], p.origin_reason ? p.origin_reason.text : "");
  });
  drawGraph(task);
}

// Peers on a ring (seeds on an inner one), the origin in the middle; line width by bytes.
// Only the selected task is drawn, and at most MAX_NODES peers of it.
const MAX_NODES = 300;
function drawGraph(task) {
  const svg = $("graph");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const peers = task.peers.slice(0, MAX_NODES);
  const seeds = peers.filter((p) => p.host_type === "seed");
  const normal = peers.filter((p) => p.host_type !== "seed");
  const at = new Map();
  const place = (list, radius) => list.forEach((p, i) => {
    const angle = (2 * Math.PI * i) / Math.max(1, list.length) - Math.PI / 2;
    at.set(p.id, [radius * Math.cos(angle), radius * Math.sin(angle)]);
  });
  place(seeds, 90);
  place(normal, 180);
  const heaviest = Math.max(1, ...task.edges.map((e) => e.bytes), ...peers.map((p) => p.bytes_from_origin));
  const width = (bytes) => 1 + 6 * Math.sqrt(bytes / heaviest);
  const line = (from, to, bytes, cls) => {
    const l = document.createElementNS(SVG_NS, "line");
    l.setAttribute("x1", from[0]); l.setAttribute("y1", from[1]);
    l.setAttribute("x2", to[0]); l.setAttribute("y2", to[1]);
    l.setAttribute("stroke-width", width(bytes));
    l.setAttribute("class", cls);
    svg.appendChild(l);
  };
  for (const p of peers) if (p.bytes_from_origin > 0) line([0, 0], at.get(p.id), p.bytes_from_origin, "origin");
  for (const e of task.edges) {
    const from = at.get(e.parent.peer_id), to = at.get(e.child.peer_id);
    if (from && to) line(from, to, e.bytes, e.parent.type === "seed" ? "seed" : "peer");
  }
  const node = (xy, r, cls, label) => {
    const c = document.createElementNS(SVG_NS, "circle");
    c.setAttribute("cx", xy[0]); c.setAttribute("cy", xy[1]); c.setAttribute("r", r);
    c.setAttribute("class", cls);
    svg.appendChild(c);
    if (label) {
      const t = document.createElementNS(SVG_NS, "text");
      t.setAttribute("x", xy[0] + r + 2); t.setAttribute("y", xy[1] + 3);
      t.textContent = label;
      svg.appendChild(t);
    }
  };
  node([0, 0], 10, "origin", "origin");
  const labels = peers.length <= 40;
  for (const p of peers) node(at.get(p.id), 5, p.host_type === "seed" ? "seed" : "peer", labels ? (p.hostname || p.ip) : "");
}

function clearFlow() {
  $("flow-title").textContent = "none selected";
  $("flow-url").textContent = "";
  for (const id of ["edges", "peers"]) $(id).tBodies[0].replaceChildren();
  $("graph").replaceChildren();
}

async function refresh() {
  view.timer = null;
  view.lastRefresh = Date.now();
  const dirty = view.dirty;
  view.dirty = { lists: false, flow: false };
  try {
    if (dirty.lists) {
      const [hosts, tasks] = await Promise.all([api("/hosts"), api("/tasks")]);
      renderHosts(hosts);
      renderTasks(tasks);
      $("summary").textContent = hosts.length + " hosts, " + tasks.length + " tasks";
    }
    if (dirty.flow && view.selected) {
      try {
        renderFlow(await api("/tasks/" + encodeURIComponent(view.selected)));
      } catch (e) {
        clearFlow();
      }
    }
    document.body.dataset.loaded = "1";
  } catch (e) {
    $("summary").textContent = "cannot read the API: " + e.message;
  }
}

function schedule() {
  if (view.timer) return;
  const wait = Math.max(0, REFRESH_MS - (Date.now() - view.lastRefresh));
  view.timer = setTimeout(refresh, wait);
}

function follow() {
  const events = new EventSource(API + "/events");
  const live = $("live");
  events.onopen = () => { live.textContent = "live"; live.classList.remove("off"); };
  events.onerror = () => { live.textContent = "reconnecting"; live.classList.add("off"); };
  events.addEventListener("change", (event) => {
    const changes = JSON.parse(event.data);
    view.dirty.lists = true;
    if (changes.some((c) => c.kind === "all" || (c.kind === "task" && c.id === view.selected))) {
      view.dirty.flow = true;
    }
    schedule();
  });
  events.addEventListener("resync", () => {
    view.dirty = { lists: true, flow: true };
    schedule();
  });
}

function showChanges() {
  $("preheat").hidden = !token();
  for (const b of document.querySelectorAll("button.remove")) b.hidden = !token();
  $("unlock").textContent = token() ? "Changes allowed" : "Allow changes…";
}

async function removeTask(id) {
  if (!confirm("Forget task " + id + " in the scheduler?")) return;
  try {
    await api("/tasks/" + encodeURIComponent(id), { method: "DELETE" });
  } catch (e) {
    alert("Remove failed: " + e.message);
    showChanges();
  }
}

async function preheat(event) {
  event.preventDefault();
  const url = $("preheat-url").value;
  const result = $("preheat-result");
  try {
    const job = await api("/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ type: "preheat", args: { type: "file", url: url } }),
    });
    result.textContent = "job " + job.id + " " + job.state;
  } catch (e) {
    result.textContent = "failed: " + e.message;
    showChanges();
  }
}

async function start() {
  try {
    view.writable = (await api("/console")).writable;
  } catch (e) {
    view.writable = false;
  }
  const unlock = $("unlock");
  unlock.hidden = !view.writable;
  unlock.addEventListener("click", () => {
    const given = prompt("Scheduler API token (server.http.token)");
    if (given) sessionStorage.setItem("damselfly-token", given);
    showChanges();
  });
  $("preheat").addEventListener("submit", preheat);
  if (view.writable) showChanges();
  await refresh();
  if (LIVE) {
    follow();
  } else {
    $("live").textContent = "snapshot";
  }
}

start();
