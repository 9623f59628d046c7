// The status page: polls the admin API with the token kept in this tab's
// sessionStorage. Served as its own file so the page's Content-Security-
// Policy can forbid inline script; every value from the API goes into the
// page through textContent, never as markup.
"use strict";

const TOKEN_KEY = "mtguard-admin-token";
const POLL_MS = 2000;
// Refusal history kept in the page: ten minutes of polls.
const WINDOW_MS = 10 * 60 * 1000;
const COLOURS = ["#d92d20", "#f79009", "#7a5af8", "#2e90fa", "#12b76a", "#ee46bc", "#0e9384", "#667085"];

let history = []; // {t, rejected: {reason: total}}
let timer = null;
let busy = false;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class Unauthorized extends Error {}

async function api(method, path) {
  const reply = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + token() },
    cache: "no-store",
    credentials: "omit",
  });
  if (reply.status === 401) throw new Unauthorized("the token was refused");
  const text = await reply.text();
  const body = text ? JSON.parse(text) : null;
  if (!reply.ok) throw new Error(method + " " + path + ": " + reply.status + " " + ((body && body.error) || ""));
  return body;
}

function showLogin(message) {
  if (timer) { clearInterval(timer); timer = null; }
  $("status-view").hidden = true;
  $("logout").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("summary").textContent = "";
  $("token").focus();
}

function showStatus() {
  $("login-view").hidden = true;
  $("status-view").hidden = false;
  $("logout").hidden = false;
  history = [];
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "until lifted";
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(c instanceof Node ? c : el("td", c));
  return tr;
}

function num(v) { return el("td", v, "num"); }

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [status, blocks] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/blocks")]);
    $("error").textContent = "";
    render(status, blocks);
  } catch (e) {
    if (e instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("The token was refused: check the admin token file.");
    } else {
      $("error").textContent = "Cannot reach the admin API: " + e.message;
    }
  } finally {
    busy = false;
  }
}

function render(status, blocks) {
  $("summary").textContent = "level " + status.level + " (" + status.level_name + "), up " + duration(status.uptime_seconds);
  $("active-connections").textContent = status.active_connections;
  $("connection-capacity").textContent = "of " + status.connection_table_capacity + " slots";
  $("tracked-clients").textContent = status.tracked_clients;
  $("client-capacity").textContent = "of " + status.client_table_capacity + " tracked";
  $("blocked-clients").textContent = status.blocked_clients;
  $("blocks-total").textContent = status.stats.blocks + " blocks, " + status.stats.unblocks + " lifted since start";
  $("under-attack").textContent = status.under_attack ? "yes" : "no";
  $("attack-card").classList.toggle("alarm", status.under_attack);
  $("level").textContent = status.stats.attacks + " attack episodes since start";
  renderRefusals(status.stats.rejected);
  renderBlocks(blocks);
  renderFleet(status);
  renderJobs(status.jobs || {});
}

function renderRefusals(rejected) {
  const now = Date.now();
  history.push({ t: now, rejected });
  while (history.length > 2 && now - history[1].t > WINDOW_MS) history.shift();
  const reasons = Object.keys(rejected);
  const first = history[0];
  const minuteAgo = history.find((h) => now - h.t <= 60000) || first;
  const since = (h, r) => Math.max(0, rejected[r] - (h.rejected[r] || 0));
  const span = Math.round((now - first.t) / 1000);
  $("refusal-window").textContent = "(last " + duration(span) + ", polled every " + POLL_MS / 1000 + " s)";
  fill($("refusals").tBodies[0], reasons.map((r, i) => {
    const name = el("td");
    const swatch = el("span", null, "swatch");
    swatch.style.background = COLOURS[i % COLOURS.length];
    name.append(swatch, r);
    return row([name, num(since(minuteAgo, r)), num(since(first, r)), num(rejected[r])]);
  }));
  drawChart(reasons);
}

// Stacked bars, one per poll, of the refusals since the poll before.
function drawChart(reasons) {
  const W = 600, H = 140, top = 4, bottom = 1;
  const bars = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1].rejected, b = history[i].rejected;
    // A counter that went down means the guard restarted: count from zero.
    bars.push(reasons.map((r) => (b[r] >= (a[r] || 0) ? b[r] - (a[r] || 0) : b[r])));
  }
  const max = Math.max(1, ...bars.map((bar) => bar.reduce((x, y) => x + y, 0)));
  const slot = W / (WINDOW_MS / POLL_MS);
  const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img" });
  chart.append(svg("line", { x1: 0, y1: H - bottom, x2: W, y2: H - bottom, class: "axis" }));
  // Labels in HTML: the drawing stretches to the page's width, text must not.
  $("chart-max").textContent = "tallest bar: " + max + " in " + POLL_MS / 1000 + " s";
  bars.forEach((bar, i) => {
    const x = W - (bars.length - i) * slot;
    let y = H - bottom;
    bar.forEach((n, k) => {
      if (!n) return;
      const h = (n / max) * (H - bottom - top);
      y -= h;
      chart.append(svg("rect", { x, y, width: Math.max(1, slot - 0.5), height: h, fill: COLOURS[k % COLOURS.length] }));
    });
  });
  $("refusal-chart").replaceChildren(chart);
}

function renderBlocks(blocks) {
  fill($("blocks").tBodies[0], blocks.map((b) => {
    const button = el("button", "Unblock", "unblock");
    button.type = "button";
    button.dataset.client = b.client;
    button.addEventListener("click", () => unblock(b.client, button));
    const tr = row([el("td", b.client), el("td", b.cause), num(duration(b.remaining_seconds)), num(b.offences), button]);
    tr.dataset.client = b.client;
    return tr;
  }));
  $("no-blocks").hidden = blocks.length > 0;
  const offenders = blocks.filter((b) => b.offences > 0).sort((a, b) => b.offences - a.offences).slice(0, 10);
  fill($("offenders").tBodies[0], offenders.map((b) => row([el("td", b.client), num(b.offences), el("td", b.cause)])));
  $("no-offenders").hidden = offenders.length > 0;
}

async function unblock(client, button) {
  button.disabled = true;
  try {
    await api("DELETE", "/v1/blocks/" + encodeURIComponent(client));
    await refresh();
  } catch (e) {
    if (e instanceof Unauthorized) showLogin("The token was refused: check the admin token file.");
    else $("error").textContent = "Unblocking " + client + " failed: " + e.message;
    button.disabled = false;
  }
}

function state(ok, yes, no) { return el("td", ok ? yes : no, ok ? "ok" : "bad"); }

function renderFleet(status) {
  const rows = [];
  const cs = status.crowdsec;
  if (cs) {
    rows.push(row([el("th", "CrowdSec LAPI"), state(cs.lapi_up, "up", "down"),
      el("td", [cs.bouncer ? "bouncer" : null, cs.watcher ? "watcher" : null].filter(Boolean).join(" + "))]));
    rows.push(row([el("th", "decisions"), num(cs.decisions), el("td", cs.decisions_applied + " applied, " + cs.decisions_removed + " removed, " + cs.decisions_ignored + " ignored")]));
    rows.push(row([el("th", "pulls"), num(cs.pulls), el("td", cs.pull_failures + " failed" + (cs.last_pull_unix ? ", last " + new Date(cs.last_pull_unix * 1000).toISOString() : ""))]));
    rows.push(row([el("th", "alerts"), num(cs.alerts_sent), el("td", cs.alerts_failed + " failed")]));
    if (cs.last_error) rows.push(row([el("th", "last error"), el("td", cs.last_error, "bad"), el("td")]));
  } else {
    rows.push(row([el("th", "CrowdSec"), el("td", "not configured", "muted"), el("td")]));
  }
  const k = status.kernel;
  if (k) {
    rows.push(row([el("th", "nftables set"), state(!k.last_error, "in sync", "error"), el("td", k.elements + " elements, " + k.updates + " updates, " + k.errors + " errors")]));
    if (k.last_error) rows.push(row([el("th", "last error"), el("td", k.last_error, "bad"), el("td")]));
  } else {
    rows.push(row([el("th", "nftables"), el("td", "not configured", "muted"), el("td")]));
  }
  rows.push(row([el("th", "certificate pins"), num(status.pins), el("td", "of " + status.pin_capacity + (status.stats.pin_failures ? ", " + status.stats.pin_failures + " mismatches" : ""))]));
  fill($("fleet").tBodies[0], rows);
}

function renderJobs(jobs) {
  const names = Object.keys(jobs);
  fill($("jobs").tBodies[0], names.length ? names.map((name) => {
    const j = jobs[name];
    const ok = j.running && !j.consecutive_failures;
    const label = name === "token_monitor" ? "token_monitor (HSM token)" : name;
    // A job that never ran is one this configuration does not use.
    const idle = !j.running && !j.consecutive_failures && !j.last_error;
    const word = idle ? "not running" : j.running ? (ok ? "running" : "failing") : "stopped";
    return row([el("td", label), el("td", word, idle ? "muted" : ok ? "ok" : "bad"),
      num(j.consecutive_failures), el("td", j.last_error || "", "muted")]);
  }) : [row([el("td", "none", "muted")])]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    showStatus();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  if (token()) showStatus(); else showLogin("");
});
