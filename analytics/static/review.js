// The review queue, worked from the keyboard: j/k move, a/l answer, s skips.
"use strict";

const state = { items: [], cur: 0, doc: null };
const $ = (id) => document.getElementById(id);

function esc(s) {
  return String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function pct(x, d = 3) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(d) + " %";
}

async function load(build = false) {
  $("status").textContent = build ? "building the queue…" : "loading…";
  const r = await fetch("/api/review/queue" + (build ? "?build=1" : ""));
  const doc = await r.json();
  state.doc = doc;
  state.items = doc.items || [];
  state.cur = Math.max(0, state.items.findIndex((i) => !i.answered));
  const h = doc.harm;
  $("harm").textContent = h
    ? `harm bound ${pct(h.bound)} (budget ${pct(h.budget, 2)}): ${h.cleared ? "cleared" : "in shadow"}`
    : "";
  functions(doc.weak);
  $("status").textContent = doc.note || `${state.items.length} client(s) from ${(doc.since || "").slice(0, 16)} to ${(doc.until || "").slice(0, 16)}`;
  render();
}

function functions(w) {
  const t = $("functions-table");
  if (!w) { t.innerHTML = '<tr><td class="muted">no label-model run yet: `gatewise labels weak`</td></tr>'; return; }
  $("weak-info").textContent = `${w.windows.toLocaleString()} windows, ${(w.since || "").slice(0, 16)} to ${(w.until || "").slice(0, 16)}; modelled jointly: ${(w.merges || []).map((m) => m[0] + " + " + m[1]).join(", ") || "none"}`;
  const num = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
  t.innerHTML = "<tr><th>function</th><th>votes</th><th>coverage</th><th>overlaps</th><th>conflicts</th><th>est. accuracy</th></tr>" +
    w.functions.map((f) => `<tr><td title="${esc(f.where || f.description)}">${esc(f.name)}</td><td>${esc(f.vote)}</td><td>${num(f.coverage, 4)}</td><td>${num(f.overlaps, 2)}</td><td>${num(f.conflicts, 2)}</td><td>${num(f.estimated_accuracy, 2)}</td></tr>`).join("");
}

function render() {
  const ol = $("queue");
  ol.innerHTML = "";
  state.items.forEach((it, i) => {
    const li = document.createElement("li");
    li.dataset.testid = "item";
    li.dataset.client = it.client_id;
    li.className = [i === state.cur ? "current" : "", it.answered ? "answered-" + it.answered : "", it.skipped ? "skipped" : ""].filter(Boolean).join(" ");
    li.innerHTML = `<b>${esc(it.client_id)}</b> · ${it.requests.toLocaleString()} req` +
      (it.answered ? ` · <span class="answer">${esc(it.answered)}</span>` : "") +
      `<div class="why">${esc(it.reason)}</div>`;
    li.addEventListener("click", () => { state.cur = i; render(); });
    ol.appendChild(li);
  });
  const cur = ol.children[state.cur];
  if (cur) cur.scrollIntoView({ block: "nearest" });
  evidence(state.items[state.cur]);
}

function evidence(it) {
  const box = $("evidence");
  if (!it) { box.innerHTML = '<p class="muted">Nothing to review.</p>'; return; }
  const fns = Object.entries(it.functions || {}).map(([k, v]) => `${esc(k)} ×${v}`).join(", ") || "none";
  const near = (it.nearest || []).map((n) => `${esc(n.client_id)} (${esc(n.label)}, ${n.distance})`).join(", ") || "no one labelled yet";
  box.innerHTML = `
    <h2 data-testid="evidence-client">${esc(it.client_id)} <small class="muted">${esc(it.tier)}</small></h2>
    <p>${esc(it.reason)}${it.answered ? ` — answered: <span class="answer">${esc(it.answered)}</span>` : ""}</p>
    <table>
      <tr><th>requests</th><td>${it.requests.toLocaleString()} in ${it.windows} windows · 4xx ${pct(it.rate_4xx, 1)}</td></tr>
      <tr><th>addresses / networks (24 h)</th><td>${it.addresses} / ${it.networks}</td></tr>
      <tr><th>top routes</th><td>${(it.top_routes || []).map(esc).join("<br>")}</td></tr>
      <tr><th>functions that fired</th><td data-testid="functions">${fns}${it.conflicts ? ` · <b>${it.conflicts} window(s) in conflict</b>` : ""}</td></tr>
      <tr><th>label model</th><td>P(abusive) up to ${it.p_abusive.toFixed(2)}</td></tr>
      <tr><th>model score</th><td>${it.model_score === null ? "–" : it.model_score.toFixed(3)}</td></tr>
      <tr><th>the policy would stop</th><td>${it.would_stop === null ? "–" : it.would_stop.toLocaleString() + " request(s) beyond the static limits"}</td></tr>
      <tr><th>nearest labelled</th><td>${near}</td></tr>
    </table>
    <div id="timeline" style="height:220px"></div>`;
  const t = it.timeline || [];
  if (t.length && window.Plotly) {
    Plotly.newPlot("timeline", [
      { x: t.map((r) => r[0]), y: t.map((r) => r[1]), name: "requests", type: "bar" },
      { x: t.map((r) => r[0]), y: t.map((r) => r[2]), name: "4xx", type: "bar" },
    ], { barmode: "overlay", margin: { t: 10, r: 10, b: 30, l: 40 }, showlegend: true }, { displayModeBar: false, responsive: true });
  }
}

async function answer(label) {
  const it = state.items[state.cur];
  if (!it) return;
  const reviewer = $("reviewer").value.trim();
  if (!reviewer) { $("status").textContent = "enter your name first: every answer keeps its reviewer"; $("reviewer").focus(); return; }
  localStorage.setItem("gatewise.reviewer", reviewer);
  $("status").textContent = `saving ${it.client_id}…`;
  const r = await fetch("/api/review/answer", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ client_id: it.client_id, label, reviewer }),
  });
  const body = await r.json();
  if (!r.ok) { $("status").textContent = "error: " + (body.error || r.status); return; }
  it.answered = label;
  $("status").textContent = `${it.client_id}: ${label} (${body.windows} window(s) labelled by ${reviewer})`;
  move(1);
}

function move(d) {
  if (!state.items.length) return;
  state.cur = Math.min(state.items.length - 1, Math.max(0, state.cur + d));
  render();
}

document.addEventListener("keydown", (e) => {
  if (e.target && e.target.tagName === "INPUT") {
    if (e.key === "Enter" || e.key === "Escape") e.target.blur();
    return;
  }
  if (e.key === "j" || e.key === "ArrowDown") { move(1); e.preventDefault(); }
  else if (e.key === "k" || e.key === "ArrowUp") { move(-1); e.preventDefault(); }
  else if (e.key === "a") answer("abusive");
  else if (e.key === "l") answer("legitimate");
  else if (e.key === "s") { const it = state.items[state.cur]; if (it) it.skipped = true; move(1); }
});

$("build").addEventListener("click", () => load(true));
$("reviewer").value = localStorage.getItem("gatewise.reviewer") || "";
load();
