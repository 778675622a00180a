/* gatewise dashboard, the core: state in the URL, fetching panels, cards, tables,
 * the filter bar, tabs, the drill-down and auto-refresh. The panels' renderers are in
 * dashboard_views.js (GW.views). No framework and no external requests. */
'use strict';

const GW = (window.GW = window.GW || {});

const FILTERS = ['dataset', 'period', 'start', 'end', 'tier', 'region', 'route'];
const PAGE_KEYS = [...FILTERS, 'tab', 'by', 'policy', 'drill_route', 'drill_client'];
const TABS = ['traffic', 'performance', 'security', 'models', 'cohorts'];

let state = readState();
let meta = null;
let gen = 0; // bumps whenever the filters or the data change: older answers are dropped
let memo = new Map(); // panel URL -> promise, for the current generation
let tabGen = {}; // tab -> generation its cards were loaded for
let timer = null;
const cards = {}; // id -> card
const $ = (sel, root = document) => root.querySelector(sel);
const ISO = /^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?)?(Z|[+-]\d\d:?\d\d)?$/;

// ---------- state <-> URL ----------
function readState() {
  const q = new URLSearchParams(location.search);
  const s = {};
  for (const k of PAGE_KEYS) if (q.get(k)) s[k] = q.get(k);
  if (!TABS.includes(s.tab)) s.tab = 'traffic';
  return s;
}
function writeState(replace = false) {
  const q = new URLSearchParams();
  for (const k of PAGE_KEYS) if (state[k]) q.set(k, state[k]);
  const url = `${location.pathname}?${q}`;
  if (url === location.pathname + location.search) return;
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
}
const filterKey = (s) => FILTERS.map((k) => s[k] || '').join('|');

function filterQuery(extra = {}) {
  const q = new URLSearchParams();
  for (const k of FILTERS) if (state[k] && !(k === 'period' && state[k] === 'all')) q.set(k, state[k]);
  for (const [k, v] of Object.entries(extra)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  return q;
}
GW.panelUrl = (name, extra = {}, csv = false) => `/api/panel/${name}${csv ? '.csv' : ''}?${filterQuery(extra)}`;

async function fetchJson(url) {
  const r = await fetch(url);
  let body;
  try { body = await r.json(); } catch (e) { body = { error: `HTTP ${r.status}` }; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}
GW.panel = (name, extra = {}) => {
  const url = GW.panelUrl(name, extra);
  if (!memo.has(url)) memo.set(url, fetchJson(url));
  return memo.get(url);
};

// ---------- formatting ----------
const nf = new Intl.NumberFormat('en-US');
const PCT = /(^rate_|share|availability|latency_good|^from_|objective$|^day_\d+$|^retained|^p_|budget_consumed)/;
GW.records = (d) => d.rows.map((r) => Object.fromEntries(d.columns.map((c, i) => [c, r[i]])));
GW.pct = (v, digits = 2) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(digits)} %`);
GW.int = (v) => (v === null || v === undefined ? '–' : nf.format(Math.round(v)));
GW.ms = (v) => (v === null || v === undefined ? '–' : `${v.toFixed(v < 10 ? 1 : 0)} ms`);
GW.time = (v) => (typeof v === 'string' && /^\d{4}-\d\d-\d\dT/.test(v) ? v.slice(0, 16).replace('T', ' ') : v);
GW.num = (v) => {
  if (v === null || v === undefined) return '–';
  if (Number.isInteger(v)) return nf.format(v);
  const a = Math.abs(v);
  return a >= 1000 ? nf.format(Math.round(v)) : a >= 1 ? v.toFixed(2) : v.toPrecision(3);
};
GW.fmt = (col, v) => {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'string') return GW.time(v);
  if (typeof v !== 'number') return String(v);
  if (col.startsWith('p_value') || col === 'p_adjusted') return v < 1e-4 ? v.toExponential(1) : v.toFixed(4);
  if (PCT.test(col)) return GW.pct(v);
  if (/_ms$/.test(col)) return GW.ms(v);
  return GW.num(v);
};
GW.esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// ---------- tables ----------
/* opts: cols (subset, in order), labels {col: header}, link {col: 'route'|'client'},
 * rowClass(rec), limit */
GW.table = (el, data, opts = {}) => {
  const cols = (opts.cols || data.columns).filter((c) => data.columns.includes(c));
  const recs = GW.records(data).slice(0, opts.limit || 500);
  if (!recs.length) {
    el.innerHTML = `<p class="note">${GW.esc(opts.empty || 'No rows for these filters.')}</p>`;
    return;
  }
  const text = (c) => recs.some((r) => typeof r[c] === 'string' && !/^\d{4}-\d\d-\d\dT/.test(r[c]));
  const isText = Object.fromEntries(cols.map((c) => [c, text(c)]));
  const head = cols.map((c) => `<th class="${isText[c] ? 'text' : ''}">${GW.esc((opts.labels || {})[c] || c)}</th>`);
  const body = recs.map((r) => {
    const tds = cols.map((c) => {
      let cell = GW.esc(GW.fmt(c, r[c]));
      const kind = (opts.link || {})[c];
      if (kind && r[c] !== null) cell = `<a href="#" data-${kind}="${GW.esc(r[c])}">${cell}</a>`;
      return `<td class="${isText[c] ? 'text ' : ''}${c}">${cell}</td>`;
    });
    return `<tr class="${opts.rowClass ? opts.rowClass(r) : ''}">${tds.join('')}</tr>`;
  });
  el.innerHTML = `<table><thead><tr>${head.join('')}</tr></thead><tbody>${body.join('')}</tbody></table>`;
};

// ---------- charts ----------
const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ['sendDataToCloud'] };
GW.plot = (card, traces, layout = {}) => {
  const el = card.chart;
  el.classList.add('has-chart');
  card.png.classList.remove('hidden');
  const base = {
    margin: { l: 55, r: 15, t: 10, b: 45 },
    font: { size: 11 },
    legend: { orientation: 'h', y: -0.2 },
    hovermode: 'closest',
  };
  Plotly.react(el, traces, { ...base, ...layout }, PLOT_CONFIG);
};

// ---------- cards ----------
/* spec: {id, title, panel, params() -> extra query, render(data, card), wide, chart,
 *        controls(card) -> html, onControls(card)} */
GW.card = (parent, spec) => {
  const el = document.createElement('article');
  el.className = `card${spec.wide ? ' wide' : ''}`;
  el.id = `card-${spec.id}`;
  el.dataset.testid = `panel-${spec.id}`;
  el.dataset.state = 'idle';
  el.innerHTML = `<header><h3>${GW.esc(spec.title)}</h3><div class="tools">
      <a class="csv" data-testid="csv-${spec.id}" href="#" download>CSV</a>
      <button type="button" class="png hidden" data-testid="png-${spec.id}">PNG</button></div></header>
    <div class="controls"></div><div class="summary"></div>
    <div class="chart" id="chart-${spec.id}"></div><div class="table-wrap" id="table-${spec.id}"></div>
    <p class="error" role="alert"></p>`;
  parent.appendChild(el);
  const card = {
    spec, el, chart: $('.chart', el), table: $('.table-wrap', el), summary: $('.summary', el),
    controls: $('.controls', el), err: $('.error', el), csv: $('.csv', el), png: $('.png', el),
  };
  card.png.addEventListener('click', () => {
    Plotly.downloadImage(card.chart, { format: 'png', filename: `gatewise-${spec.id}`, width: 1200, height: 600 });
  });
  if (spec.controls) {
    card.controls.innerHTML = spec.controls(card);
    card.controls.addEventListener('change', () => { spec.onControls(card); writeState(); loadCard(card); });
  }
  cards[spec.id] = card;
  return card;
};

function loadCard(card) {
  card.done = fetchAndRender(card);
  return card.done;
}
async function fetchAndRender(card) {
  const g = gen;
  const extra = card.spec.params ? card.spec.params() : {};
  card.csv.href = GW.panelUrl(card.spec.panel, extra, true);
  card.el.dataset.state = 'loading';
  try {
    const data = await GW.panel(card.spec.panel, extra);
    if (g !== gen) return;
    card.err.textContent = '';
    card.spec.render(data, card);
    card.el.dataset.state = 'ready';
  } catch (e) {
    if (g !== gen) return;
    card.err.textContent = e.message;
    card.el.dataset.state = 'error';
  }
}
GW.loadCard = loadCard;

// ---------- meta, filter bar ----------
function options(select, values, current) {
  const keep = select.querySelector('option[value=""]');
  select.innerHTML = '';
  if (keep) select.appendChild(keep);
  const all = current && !values.includes(current) ? [...values, current] : values;
  for (const v of all) {
    const o = document.createElement('option');
    o.value = v; o.textContent = v;
    select.appendChild(o);
  }
  select.value = current || '';
}
function syncForm() {
  if (!meta) return;
  options($('#filter-dataset'), meta.datasets.map((d) => d.name), state.dataset || meta.dataset);
  options($('#filter-tier'), meta.tiers, state.tier);
  options($('#filter-region'), meta.regions, state.region);
  options($('#filter-route'), meta.routes, state.route);
  $('#filter-start').value = state.start || '';
  $('#filter-end').value = state.end || '';
  const period = state.start || state.end ? null : state.period || 'all';
  document.querySelectorAll('[data-period]').forEach((b) => b.classList.toggle('active', b.dataset.period === period));
  const span = meta.first ? `${GW.time(meta.first)} – ${GW.time(meta.last)} UTC` : 'no telemetry yet';
  $('#span-info').textContent = `${meta.dataset}: ${GW.int(meta.events)} events, ${span}`;
}
async function loadMeta() {
  const q = state.dataset ? `?dataset=${encodeURIComponent(state.dataset)}` : '';
  meta = await fetchJson(`/api/meta${q}`);
  syncForm();
}

function readForm() {
  const ds = $('#filter-dataset').value;
  for (const k of ['tier', 'region', 'route']) state[k] = $(`#filter-${k}`).value || undefined;
  state.start = $('#filter-start').value.trim() || undefined;
  state.end = $('#filter-end').value.trim() || undefined;
  if (state.start || state.end) delete state.period;
  const changed = ds !== (state.dataset || meta.dataset);
  state.dataset = ds === meta.default_dataset ? undefined : ds;
  return changed;
}

async function apply(datasetChanged) {
  $('#filter-error').textContent = '';
  writeState();
  try {
    if (datasetChanged) await loadMeta(); else syncForm();
  } catch (e) {
    $('#filter-error').textContent = e.message;
    return;
  }
  reloadAll();
}

// ---------- tabs, drill-down ----------
function showTab(tab) {
  state.tab = tab;
  document.querySelectorAll('[data-tab]').forEach((a) => a.classList.toggle('active', a.dataset.tab === tab));
  document.querySelectorAll('[data-section]').forEach((s) => s.classList.toggle('hidden', s.dataset.section !== tab));
  if (tabGen[tab] !== gen) {
    tabGen[tab] = gen;
    (GW.sectionCards[tab] || []).forEach(loadCard);
  }
}
function renderDrill() {
  const box = $('#drill');
  const route = state.drill_route;
  const client = state.drill_client;
  box.classList.toggle('hidden', !route && !client);
  const crumbs = ['<a data-crumb="close" title="close the drill-down">✕ all</a>'];
  if (route) crumbs.push(`<a data-crumb="route">consumers of ${GW.esc(route)}</a>`);
  if (client) crumbs.push(`<span>requests of ${GW.esc(client)}</span>`);
  $('#drill-breadcrumb').innerHTML = crumbs.join('<span class="sep">›</span>');
  const rc = cards['route-consumers'];
  const cr = cards['consumer-requests'];
  rc.el.classList.toggle('hidden', !route || !!client);
  cr.el.classList.toggle('hidden', !client);
  if (client) loadCard(cr);
  else if (route) loadCard(rc);
}
GW.openRoute = (route) => {
  state.drill_route = route;
  delete state.drill_client;
  writeState();
  renderDrill();
  $('#drill').scrollIntoView({ block: 'nearest' });
};
GW.openClient = (client) => {
  state.drill_client = client;
  writeState();
  renderDrill();
  $('#drill').scrollIntoView({ block: 'nearest' });
};

// ---------- loading, auto-refresh ----------
function stampNow() {
  $('#updated').textContent = `updated ${new Date().toLocaleTimeString('en-GB', { hour12: false })}`;
}
function reloadAll() {
  gen += 1;
  memo = new Map();
  tabGen = {};
  const done = [GW.loadTop(), ...GW.topCards.map(loadCard)];
  renderDrill();
  showTab(state.tab);
  done.push(...(GW.sectionCards[state.tab] || []).map((c) => c.done));
  Promise.allSettled(done).then(stampNow);
}
GW.reloadAll = reloadAll;

async function poll() {
  try {
    const q = state.dataset ? `?dataset=${encodeURIComponent(state.dataset)}` : '';
    const m = await fetchJson(`/api/meta${q}`);
    const fresh = m.stamp !== meta.stamp;
    meta = m;
    if (fresh) { syncForm(); reloadAll(); } else stampNow();
  } catch (e) {
    $('#updated').textContent = `refresh failed: ${e.message}`;
  }
}
function schedule() {
  if (timer) clearInterval(timer);
  timer = null;
  if ($('#auto-refresh').checked && meta) timer = setInterval(poll, Math.max(1, meta.refresh_s) * 1000);
}

// ---------- wiring ----------
function wire() {
  $('#filters').addEventListener('submit', (e) => {
    e.preventDefault();
    // a typo is caught here, not by a 400 from the server
    for (const k of ['start', 'end']) {
      const v = $(`#filter-${k}`).value.trim();
      if (v && !ISO.test(v)) {
        $('#filter-error').textContent = `${k}: ${v} is not a date or time like 2026-01-05 or 2026-01-05T10:00`;
        return;
      }
    }
    apply(readForm());
  });
  document.querySelectorAll('[data-period]').forEach((b) => b.addEventListener('click', () => {
    const changed = readForm();
    state.period = b.dataset.period;
    delete state.start;
    delete state.end;
    apply(changed);
  }));
  $('#tabs').addEventListener('click', (e) => {
    const a = e.target.closest('[data-tab]');
    if (!a) return;
    e.preventDefault();
    showTab(a.dataset.tab);
    writeState();
  });
  document.addEventListener('click', (e) => {
    const t = e.target.closest('[data-route], [data-client], [data-crumb]');
    if (!t) return;
    e.preventDefault();
    if (t.dataset.crumb === 'close') { delete state.drill_route; delete state.drill_client; writeState(); renderDrill(); }
    else if (t.dataset.crumb === 'route') { delete state.drill_client; writeState(); renderDrill(); }
    else if (t.dataset.client !== undefined) GW.openClient(t.dataset.client);
    else GW.openRoute(t.dataset.route);
  });
  $('#auto-refresh').addEventListener('change', schedule);
  window.addEventListener('popstate', async () => {
    const before = filterKey(state);
    state = readState();
    if (filterKey(state) !== before) {
      try { await loadMeta(); } catch (e) { $('#filter-error').textContent = e.message; return; }
      reloadAll();
    } else {
      syncForm();
      GW.syncControls();
      renderDrill();
      showTab(state.tab);
    }
  });
}

GW.state = () => state;
GW.gen = () => gen;
GW.setState = (k, v) => { if (v) state[k] = v; else delete state[k]; };
GW.meta = () => meta;

document.addEventListener('DOMContentLoaded', async () => {
  GW.build();
  wire();
  try {
    await loadMeta();
  } catch (e) {
    $('#filter-error').textContent = e.message;
    $('#updated').textContent = '';
    return;
  }
  GW.syncControls();
  reloadAll();
  schedule();
});
