/* gatewise dashboard, the views: which panels each section shows and how each is drawn
 * (Plotly charts, tables, the KPIs and the three answers). Core in dashboard.js. */
'use strict';

(() => {
  const GW = window.GW;
  const $ = (sel, root = document) => root.querySelector(sel);
  const recs = GW.records;
  const COLORS = ['#2f6fde', '#e4572e', '#29a36a', '#b26a00', '#8e44ad', '#17becf', '#7f7f7f', '#bcbd22', '#d62728', '#1f77b4'];
  const BY = ['route', 'consumer', 'service', 'tier', 'region', 'device', 'method', 'status', 'decision', 'policy'];
  const ROUTE_COLS = ['key', 'requests', 'share', 'consumers', 'rate_4xx', 'rate_5xx', 'refused_share', 'p50_ms', 'p95_ms', 'p99_ms', 'rps'];
  const CONSUMER_COLS = ['client_id', 'tier', 'region', 'device_type', 'requests', 'share', 'routes', 'rate_4xx', 'rate_5xx', 'refused_share', 'p95_ms', 'last'];

  function empty(card, msg) {
    if (card.chart.classList.contains('has-chart')) Plotly.purge(card.chart);
    card.chart.classList.remove('has-chart');
    card.png.classList.add('hidden');
    card.summary.innerHTML = `<p class="note">${GW.esc(msg)}</p>`;
  }
  const col = (rows, c) => rows.map((r) => r[c]);

  // ---------- Traffic ----------
  function trafficChart(d, card) {
    const r = recs(d);
    if (!r.length) return empty(card, 'No requests for these filters.');
    card.summary.innerHTML = `<p class="note">per ${GW.esc(d.meta.granularity)}</p>`;
    const x = col(r, 'bucket');
    GW.plot(card, [
      { x, y: col(r, 'requests'), name: 'requests', type: 'scatter', mode: 'lines' },
      { x, y: col(r, 'errors_5xx'), name: '5xx', type: 'scatter', mode: 'lines', yaxis: 'y2' },
      { x, y: col(r, 'refused'), name: 'refused', type: 'scatter', mode: 'lines', yaxis: 'y2' },
    ], { margin: { l: 55, r: 60, t: 10, b: 45 }, yaxis: { title: 'requests' }, yaxis2: { title: '5xx / refused', overlaying: 'y', side: 'right', rangemode: 'tozero' } });
  }
  function byKeyChart(d, card, metric = 'requests') {
    const r = recs(d);
    if (!r.length) return empty(card, 'No requests for these filters.');
    const keys = [...new Set(col(r, 'key'))];
    GW.plot(card, keys.map((k) => {
      const g = r.filter((x) => x.key === k);
      return { x: col(g, 'bucket'), y: col(g, metric), name: k, type: 'scatter', mode: 'lines', stackgroup: 'one' };
    }), { yaxis: { title: metric } });
  }
  function routes(d, card) {
    const r = recs(d);
    if (!r.length) { empty(card, 'No requests for these filters.'); card.table.innerHTML = ''; return; }
    card.summary.innerHTML = '<p class="note">Click a route (bar or row) for its consumers.</p>';
    const top = r.slice(0, 15).reverse();
    GW.plot(card, [{ type: 'bar', orientation: 'h', x: col(top, 'requests'), y: col(top, 'key'), customdata: col(top, 'key'),
      hovertemplate: '%{y}: %{x} requests<extra></extra>' }], { margin: { l: 190, r: 15, t: 10, b: 35 } });
    card.chart.removeAllListeners?.('plotly_click');
    card.chart.on('plotly_click', (ev) => GW.openRoute(ev.points[0].customdata));
    GW.table(card.table, d, { cols: ROUTE_COLS, labels: { key: 'route' }, link: { key: 'route' } });
  }
  function breakdown(d, card) {
    const link = d.meta.by === 'route' ? { key: 'route' } : d.meta.by === 'consumer' ? { key: 'client' } : {};
    GW.table(card.table, d, { cols: ROUTE_COLS, labels: { key: d.meta.by }, link });
  }
  const consumersTable = (d, card) => GW.table(card.table, d, { cols: CONSUMER_COLS, link: { client_id: 'client' } });
  function forecast(d, card) {
    const r = recs(d);
    if (!r.length) { empty(card, 'No history to forecast from.'); card.table.innerHTML = ''; return; }
    const hs = d.meta.horizons;
    GW.plot(card, hs.map((h, i) => ({
      type: 'bar', name: `next ${h} days`, x: col(r, 'key'), y: col(r, `forecast_${h}d`), marker: { color: COLORS[i] },
      error_y: { type: 'data', symmetric: false, array: r.map((x) => x[`upper_${h}d`] - x[`forecast_${h}d`]),
        arrayminus: r.map((x) => x[`forecast_${h}d`] - x[`lower_${h}d`]) },
    })), { barmode: 'group', yaxis: { title: 'requests (80 % band)' }, margin: { l: 60, r: 15, t: 10, b: 110 } });
    GW.table(card.table, d, { cols: ['key', 'history_days', 'last_7d', 'weekly_growth', ...hs.map((h) => `forecast_${h}d`), 'peak_day', 'enough_history'] });
  }

  // ---------- Performance & SLOs ----------
  const sloClass = (r) => `status-${String(r.status).replace(' ', '-')}`;
  function slo(d, card) {
    const b = d.meta.breaching || [];
    card.summary.innerHTML = b.length
      ? `<p><b>${b.length}</b> route(s) breaking their SLO; ${(d.meta.at_risk || []).length} at risk.</p>`
      : '<p>No route breaks its SLO in this range.</p>';
    GW.table(card.table, d, {
      cols: ['route', 'status', 'requests', 'availability', 'availability_objective', 'latency_good', 'latency_objective', 'latency_ms', 'p95_ms', 'budget_consumed', 'burn_rate', 'burn_rate_6h', 'burn_rate_1h'],
      link: { route: 'route' }, rowClass: sloClass,
    });
  }
  function burn(d, card) {
    const r = recs(d);
    if (!r.length) return empty(card, 'No requests for these filters.');
    const y = col(r, 'route');
    GW.plot(card, [['burn_rate', 'whole range'], ['burn_rate_6h', 'last 6 h'], ['burn_rate_1h', 'last 1 h']].map(([c, n], i) => ({
      type: 'bar', orientation: 'h', name: n, y, x: col(r, c), marker: { color: COLORS[i] },
    })), { barmode: 'group', xaxis: { title: 'error-budget burn rate (1 = spending exactly the budget)' },
      yaxis: { autorange: 'reversed' }, margin: { l: 170, r: 15, t: 10, b: 45 },
      shapes: [{ type: 'line', yref: 'paper', y0: 0, y1: 1, x0: 1, x1: 1, line: { dash: 'dot', color: '#c62828' } }] });
  }
  function latency(d, card) {
    const r = recs(d);
    if (!r.length) return empty(card, 'No requests for these filters.');
    const x = col(r, 'bucket');
    card.summary.innerHTML = '';
    GW.plot(card, ['p50_ms', 'p95_ms', 'p99_ms'].map((c) => ({ x, y: col(r, c), name: c.replace('_ms', ''), type: 'scatter', mode: 'lines' })),
      { yaxis: { title: 'latency (ms)' } });
  }
  function errorRates(d, card) {
    const r = recs(d);
    if (!r.length) return empty(card, 'No requests for these filters.');
    const x = col(r, 'bucket');
    const rate = (c) => r.map((v) => (v.requests ? v[c] / v.requests : null));
    GW.plot(card, [{ x, y: rate('errors_4xx'), name: '4xx', mode: 'lines' }, { x, y: rate('errors_5xx'), name: '5xx', mode: 'lines' },
      { x, y: rate('refused'), name: 'refused', mode: 'lines' }], { yaxis: { title: 'share of requests', tickformat: '.1%' } });
  }

  // ---------- Security ----------
  function decisions(d, card) {
    const r = recs(d).filter((x) => x.decision !== 'allow');
    const totals = { columns: ['policy_version', 'decision', 'requests'], rows: (d.meta.totals || []).map((t) => [t.policy_version, t.decision, t.requests]) };
    GW.table(card.table, totals, {});
    if (!r.length) return empty(card, 'No refused requests (throttle, block, challenge) in this range.');
    card.summary.innerHTML = `<p class="note">Refused requests per ${GW.esc(d.meta.granularity)} by policy version · decision (allowed ones in the table).</p>`;
    const keys = [...new Set(r.map((x) => `${x.policy_version} · ${x.decision}`))];
    GW.plot(card, keys.map((k) => {
      const g = r.filter((x) => `${x.policy_version} · ${x.decision}` === k);
      return { type: 'bar', name: k, x: col(g, 'bucket'), y: col(g, 'requests') };
    }), { barmode: 'stack', yaxis: { title: 'requests' } });
  }
  function modelsFlagged(d, card) {
    const clients = d.meta.clients;
    card.summary.innerHTML = d.rows.length ? '' : '<p class="note">No request in this range carries a model score.</p>';
    const t = card.table;
    t.innerHTML = '<div class="by-version"></div><h4>Most-flagged clients (score ≥ ' + d.meta.threshold + ')</h4><div class="clients"></div>';
    GW.table($('.by-version', t), d, { cols: ['model_version', 'clients', 'flagged_clients', 'flagged_client_share', 'scored_requests', 'flagged_requests', 'mean_score', 'last'] });
    GW.table($('.clients', t), clients, { link: { client_id: 'client' }, empty: 'No flagged clients.' });
  }
  function refused(d, card) {
    const r = recs(d);
    if (!r.length) { empty(card, 'No requests for these filters.'); card.table.innerHTML = ''; return; }
    const tiers = [...new Set(col(r, 'tier'))].sort();
    const regions = [...new Set(col(r, 'region'))].sort();
    const z = tiers.map((t) => regions.map((g) => { const x = r.find((v) => v.tier === t && v.region === g); return x ? x.refused_share : null; }));
    GW.plot(card, [{ type: 'heatmap', x: regions, y: tiers, z, colorscale: 'Reds', hovertemplate: '%{y} / %{x}: %{z:.2%} refused<extra></extra>' }],
      { margin: { l: 80, r: 15, t: 10, b: 60 } });
    GW.table(card.table, d, { cols: ['tier', 'region', 'requests', 'refused', 'refused_share', 'throttled', 'blocked', 'challenged', 'refused_clients'] });
  }

  // ---------- Models & policies ----------
  function policyEffect(d, card) {
    const m = d.meta;
    const sel = $('select', card.controls);
    if (sel && sel.options.length <= 1) {
      for (const v of GW.meta().policy_versions || []) sel.add(new Option(v, v));
      sel.value = GW.state().policy || '';
    }
    if (m.error) { empty(card, m.error); card.table.innerHTML = ''; return; }
    card.summary.innerHTML = `<p><b>${GW.esc(m.sentence)}</b></p>${m.warning ? `<p class="error">${GW.esc(m.warning)}</p>` : ''}
      <p class="note">Propensity-matched (1:1, caliper ${GW.num(m.caliper)} logit) consumers active before ${GW.esc(m.policy)}:
      ${m.n_treated} throttled, ${m.n_control} not; ${m.n_matched} matched; retained ${GW.pct(m.retained_treated, 1)} vs
      ${GW.pct(m.retained_matched_controls, 1)}; McNemar p = ${GW.fmt('p_value', m.p_value)}; largest |SMD| after matching ${GW.num(m.max_abs_smd_after)}.
      Uses every consumer of the dataset (the filters do not apply).</p>`;
    const r = recs(d);
    GW.plot(card, [
      { type: 'scatter', mode: 'markers', name: 'before matching', x: col(r, 'smd_before'), y: col(r, 'covariate'), marker: { symbol: 'circle-open', size: 9 } },
      { type: 'scatter', mode: 'markers', name: 'after matching', x: col(r, 'smd_after'), y: col(r, 'covariate'), marker: { size: 8 } },
    ], { xaxis: { title: 'standardised mean difference', zeroline: true }, margin: { l: 170, r: 15, t: 10, b: 60 },
      shapes: [-0.1, 0.1].map((v) => ({ type: 'line', x0: v, x1: v, yref: 'paper', y0: 0, y1: 1, line: { dash: 'dot', color: '#999' } })) });
    GW.table(card.table, d, {});
  }
  function policies(d, card) {
    card.summary.innerHTML = d.meta.note ? `<p class="note">${GW.esc(d.meta.note)}</p>` : '';
    card.table.innerHTML = '<div class="history"></div><h4>Versions seen in the telemetry</h4><div class="observed"></div>';
    GW.table($('.history', card.table), d, { cols: ['version', 'created_at', 'author', 'reason', 'tiers', 'routes', 'overrides', 'targets'] });
    GW.table($('.observed', card.table), d.meta.observed, { empty: 'No policy version in the telemetry.' });
  }
  function models(d, card) {
    const reg = d.meta.registry || {};
    let html;
    if (reg.status !== 'ok') html = `<p><b>no registry</b> <span class="note">${GW.esc(reg.note || '')}</span></p>`;
    else {
      html = '<ul>' + Object.entries(reg.targets).map(([t, v]) => {
        if (v.error) return `<li>${GW.esc(t)}: <span class="error">${GW.esc(v.error)}</span></li>`;
        const ver = (a) => (v[a] ? `v${GW.esc(v[a].version)}` : 'none');
        return `<li><b>${GW.esc(t)}</b> (${GW.esc(v.model)}): champion ${ver('champion')}, challenger ${ver('challenger')}</li>`;
      }).join('') + '</ul>';
    }
    if (d.meta.note) html += `<p class="note">${GW.esc(d.meta.note)}</p>`;
    card.summary.innerHTML = html;
    GW.table(card.table, d, { cols: ['checked_at', 'kind', 'feature', 'group', 'method', 'value', 'threshold', 'flagged', 'n', 'share'], empty: 'No drift or bias findings.',
      rowClass: (r) => (r.flagged ? 'status-breaching' : '') });
  }

  function scanVerdicts(d, card) {
    card.summary.innerHTML = d.meta.note ? `<p class="note">${GW.esc(d.meta.note)}</p>` : '';
    const t = card.table;
    t.innerHTML = '<div class="verdicts"></div><h4>Clients sending attacks</h4><div class="clients"></div>';
    GW.table($('.verdicts', t), d, { empty: 'No scanned requests.',
      rowClass: (r) => (r.label !== 'benign' && r.label !== 'unavailable' ? 'status-breaching' : '') });
    GW.table($('.clients', t), d.meta.clients, { link: { client_id: 'client' }, empty: 'No attack verdicts.' });
  }

  // ---------- Cohorts ----------
  function lost(d, card) {
    const m = d.meta;
    card.summary.innerHTML = m.consumers
      ? `<p><b>${GW.int(m.churned)}</b> of ${GW.int(m.consumers)} consumers first seen in the range have churned (${GW.pct(m.churn_share, 1)};
         silent ${m.churn_after_days}+ days before the data's end); they made ${GW.int(m.lost_requests)} requests.</p>`
      : '<p class="note">No consumers first seen in this range.</p>';
    GW.table(card.table, d, { link: { client_id: 'client' }, empty: 'No churned consumers.' });
  }
  function retention(d, card) {
    const r = recs(d);
    if (!r.length) return empty(card, 'No cohorts in this range.');
    const weeks = d.columns.filter((c) => /^\d+$/.test(c));
    const z = r.map((x) => weeks.map((w) => x[w]));
    const ms = Object.entries(d.meta.milestones || {}).filter(([, v]) => v.all !== null && v.all !== undefined);
    card.summary.innerHTML = ms.length ? `<p class="note">Retained, all cohorts: ${ms.map(([k, v]) => `${k} ${GW.pct(v.all, 1)}`).join(' · ')}</p>` : '';
    GW.plot(card, [{ type: 'heatmap', x: weeks.map(Number), y: r.map((x) => `${x.cohort} (${x.size})`), z, zmin: 0, zmax: 1,
      colorscale: 'Blues', reversescale: true, texttemplate: '%{z:.0%}', hovertemplate: '%{y}, week %{x}: %{z:.1%}<extra></extra>' }],
    { yaxis: { autorange: 'reversed', type: 'category' }, xaxis: { title: 'weeks since first seen', dtick: 1 }, margin: { l: 150, r: 15, t: 10, b: 45 } });
  }
  function survival(d, card) {
    const curves = d.meta.curves || {};
    if (d.meta.error || !Object.keys(curves).length) return empty(card, d.meta.error || 'No consumers in this range.');
    const lr = d.meta.logrank;
    card.summary.innerHTML = lr ? `<p class="note">log-rank across ${GW.esc(d.meta.by)}: p = ${GW.fmt('p_value', lr.p_value)}</p>` : '';
    const traces = [];
    Object.entries(curves).forEach(([g, c], i) => {
      const color = COLORS[i % COLORS.length];
      traces.push({ x: c.timeline, y: c.upper, mode: 'lines', line: { width: 0, shape: 'hv' }, showlegend: false, hoverinfo: 'skip', legendgroup: g });
      traces.push({ x: c.timeline, y: c.lower, mode: 'lines', line: { width: 0, shape: 'hv' }, fill: 'tonexty', fillcolor: `${color}33`, showlegend: false, hoverinfo: 'skip', legendgroup: g });
      traces.push({ x: c.timeline, y: c.survival, mode: 'lines', name: g, line: { color, shape: 'hv' }, legendgroup: g });
    });
    GW.plot(card, traces, { xaxis: { title: 'days since first seen' }, yaxis: { title: 'still active', range: [0, 1.02], tickformat: '.0%' } });
    GW.table(card.table, d, {});
  }
  function funnel(d, card) {
    const r = recs(d);
    if (!r.length) return empty(card, 'No consumers entered the funnel in this range.');
    GW.plot(card, [{ type: 'funnel', y: col(r, 'name'), x: col(r, 'consumers'), textinfo: 'value+percent initial+percent previous' }],
      { margin: { l: 200, r: 15, t: 10, b: 30 } });
    GW.table(card.table, d, {});
  }
  function tableWithNote(d, card) {
    card.summary.innerHTML = d.meta.error ? `<p class="note">${GW.esc(d.meta.error)}</p>`
      : d.meta.concordance !== undefined ? `<p class="note">concordance ${GW.num(d.meta.concordance)}; ${d.meta.n} consumers, ${d.meta.events} churned</p>` : '';
    GW.table(card.table, d, {});
  }

  // ---------- what each section shows ----------
  const traffic = { id: 'traffic', panel: 'traffic', title: 'Requests over time', render: trafficChart, wide: true };
  const routeSpec = { id: 'routes', panel: 'breakdown', params: () => ({ by: 'route' }), title: 'Routes', render: routes, wide: true };
  const sloSpec = { id: 'slo', panel: 'slo', title: 'SLO compliance and error budget', render: slo, wide: true };
  const SECTIONS = {
    traffic: [
      traffic,
      routeSpec,
      { id: 'traffic-by-route', panel: 'traffic', params: () => ({ by: 'route' }), title: 'Traffic by route', render: (d, c) => byKeyChart(d, c) },
      { id: 'breakdown', panel: 'breakdown', title: 'Breakdown', render: breakdown, params: () => ({ by: GW.state().by || 'consumer' }),
        controls: () => `<label>by <select id="breakdown-by">${BY.map((b) => `<option>${b}</option>`).join('')}</select></label>`,
        onControls: (c) => GW.setState('by', $('select', c.controls).value) },
      { id: 'top-consumers', panel: 'top_consumers', title: 'Top consumers', render: consumersTable },
      { id: 'adoption', panel: 'adoption', title: 'Route adoption', render: (d, c) => GW.table(c.table, d, { link: { route: 'route' } }) },
      { id: 'forecast', panel: 'forecast', title: 'Forecast (capacity)', render: forecast, wide: true },
      { id: 'anomalies', panel: 'anomalies', title: 'Anomalies (hourly requests)', render: (d, c) => { c.summary.innerHTML = `<p class="note">|robust z| > ${d.meta.threshold} against the ${GW.esc(d.meta.seasonality || '')} baseline</p>`; GW.table(c.table, d, { link: { key: 'route' }, empty: 'No anomalies.' }); } },
      { id: 'revenue', panel: 'revenue', title: 'Revenue and cost by tier', render: (d, c) => { c.summary.innerHTML = d.meta.priced_tiers.length ? '' : '<p class="note">No tier prices in gatewise.yaml (analytics.tiers): revenue is 0.</p>'; GW.table(c.table, d, {}); } },
    ],
    performance: [
      sloSpec,
      { id: 'burn', panel: 'slo', title: 'Error-budget burn rate by route', render: burn },
      { id: 'latency', panel: 'traffic', title: 'Latency percentiles over time', render: latency },
      { id: 'error-rates', panel: 'traffic', title: 'Error and refusal rates over time', render: errorRates },
      { id: 'route-latency', panel: 'breakdown', params: () => ({ by: 'route' }), title: 'Latency and errors by route',
        render: (d, c) => GW.table(c.table, d, { cols: ['key', 'requests', 'p50_ms', 'p95_ms', 'p99_ms', 'rate_5xx', 'rate_4xx'], labels: { key: 'route' }, link: { key: 'route' } }) },
    ],
    security: [
      { id: 'decisions', panel: 'security_decisions', title: 'Rate-limit decisions by policy version', render: decisions, wide: true },
      { id: 'refused', panel: 'security_refused', title: 'Refused requests by tier and region', render: refused },
      { id: 'flagged', panel: 'security_models', title: 'Model-flagged clients', render: modelsFlagged },
      { id: 'scanner', panel: 'security_scan', title: 'Payload scanner verdicts', render: scanVerdicts },
    ],
    models: [
      { id: 'policy-effect', panel: 'policy_effect', title: 'Was it our policy? (propensity-matched effect on retention)', render: policyEffect, wide: true,
        params: () => ({ policy: GW.state().policy }),
        controls: () => '<label>policy version <select id="policy-select"><option value="">newest that can be judged</option></select></label>',
        onControls: (c) => GW.setState('policy', $('select', c.controls).value) },
      { id: 'policies', panel: 'policies', title: 'Policy history', render: policies },
      { id: 'models', panel: 'models', title: 'Models: champions, drift and bias', render: models },
    ],
    cohorts: [
      { id: 'lost', panel: 'lost_consumers', title: 'Consumers lost (biggest first)', render: lost, wide: true },
      { id: 'retention', panel: 'retention', title: 'Retention by first week', render: retention, wide: true },
      { id: 'survival', panel: 'survival', title: 'Survival (Kaplan–Meier) by first tier', render: survival },
      { id: 'funnel', panel: 'funnel', title: 'Conversion funnel', render: funnel },
      { id: 'cox', panel: 'cox', title: 'Churn hazard ratios (Cox)', render: tableWithNote },
      { id: 'compare', panel: 'compare', title: 'First tiers compared', render: tableWithNote },
    ],
  };

  GW.build = () => {
    GW.sectionCards = {};
    for (const [tab, specs] of Object.entries(SECTIONS)) {
      const parent = $(`#section-${tab}`);
      GW.sectionCards[tab] = specs.map((s) => GW.card(parent, s));
    }
    const drill = $('#drill-cards');
    GW.card(drill, { id: 'route-consumers', panel: 'route_consumers', title: 'Consumers of the route', wide: true,
      params: () => ({ route: GW.state().drill_route }), render: consumersTable });
    GW.card(drill, { id: 'consumer-requests', panel: 'consumer_requests', title: 'Latest requests of the consumer', wide: true,
      params: () => ({ client: GW.state().drill_client }),
      render: (d, c) => GW.table(c.table, d, { cols: ['timestamp', 'method', 'url_path', 'route', 'status', 'duration_ms', 'response_bytes', 'ratelimit_decision', 'policy_version', 'model_score', 'request_id'], link: { route: 'route' } }) });
    GW.topCards = [];
  };
  GW.syncControls = () => {
    const by = $('#breakdown-by');
    if (by) by.value = GW.state().by || 'consumer';
    const pol = $('#policy-select');
    if (pol) pol.value = GW.state().policy || '';
  };

  // ---------- KPIs and the three answers ----------
  function kpi(id, value, text) {
    const el = $(`#kpi-${id}`);
    el.dataset.value = value === null || value === undefined ? '' : String(value);
    $('.value', el).textContent = text;
  }
  async function top(name, extra, draw, el) {
    const g = GW.gen();
    try {
      const d = await GW.panel(name, extra);
      if (g === GW.gen()) draw(d);
    } catch (e) {
      if (g === GW.gen() && el) $('.body', el).innerHTML = `<span class="error">${GW.esc(e.message)}</span>`;
    }
  }
  GW.loadTop = () => {
    $('#kpis').dataset.state = 'loading';
    return Promise.allSettled([
      top('overview', {}, (d) => {
        const o = recs(d)[0] || {};
        kpi('requests', o.requests, GW.int(o.requests));
        kpi('consumers', o.consumers, GW.int(o.consumers));
        kpi('5xx', o.rate_5xx, GW.pct(o.rate_5xx));
        kpi('p95', o.p95_ms, GW.ms(o.p95_ms));
        kpi('4xx', o.rate_4xx, GW.pct(o.rate_4xx));
        kpi('refused', o.refused_share, GW.pct(o.refused_share));
        $('#kpis').dataset.state = 'ready';
      }),
      top('slo', {}, (d) => {
        const el = $('#answer-slo');
        const b = d.meta.breaching || [];
        el.className = `answer ${b.length ? 'bad' : 'ok'}`;
        $('.body', el).innerHTML = b.length
          ? `<span class="big">${b.length}</span> breaking<ul>${b.map((r) => `<li><a href="#" data-route="${GW.esc(r)}">${GW.esc(r)}</a></li>`).join('')}</ul>`
          : `<span class="big">none</span> <span class="note">${(d.meta.at_risk || []).length} at risk</span>`;
        el.dataset.state = 'ready';
      }, $('#answer-slo')),
      top('lost_consumers', { n: 5 }, (d) => {
        const el = $('#answer-lost');
        const m = d.meta;
        const items = recs(d).map((r) => `<li><a href="#" data-client="${GW.esc(r.client_id)}">${GW.esc(r.client_id)}</a> ${GW.esc(r.first_tier)}, ${GW.int(r.requests)} req.</li>`);
        el.className = `answer ${m.churned ? 'bad' : 'ok'}`;
        $('.body', el).innerHTML = m.consumers
          ? `<span class="big" data-testid="lost-count">${GW.int(m.churned)}</span> of ${GW.int(m.consumers)} churned (${GW.pct(m.churn_share, 1)})<ul>${items.join('')}</ul>`
          : '<span class="note">No consumers first seen in this range.</span>';
        el.dataset.state = 'ready';
      }, $('#answer-lost')),
      top('policy_effect', {}, (d) => {
        const el = $('#answer-policy');
        const m = d.meta;
        $('.body', el).innerHTML = m.error ? `<span class="note">${GW.esc(m.error)}</span>` : `${GW.esc(m.sentence)}${m.warning ? ` <span class="error">(${GW.esc(m.warning)})</span>` : ''}`;
        el.dataset.state = 'ready';
      }, $('#answer-policy')),
    ]);
  };
})();
