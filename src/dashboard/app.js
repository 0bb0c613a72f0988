'use strict';
// The dashboard: reads the API with fetch (the token, when the service has one, is sent as
// `Authorization: Bearer` and kept in sessionStorage only), and follows /v1/events with a fetch
// stream (EventSource cannot send that header), reconnecting with Last-Event-ID.
// Everything is rendered with textContent: nothing from the API becomes markup.

const TOKEN_KEY = 'egress-engine.token';
const FINAL = ['complete', 'failed', 'aborted', 'limit_reached'];
const RANK = { starting: 0, active: 1, ending: 2 };
const KNOWN = new Set(['egress_id', 'node_id', 'type', 'status', 'created_at', 'started_at', 'ended_at',
  'end_reason', 'error', 'request', 'files', 'handler_pid', 'cpu_cost', 'placement']);
const COLORS = ['#1f5fbf', '#0a7d38', '#b25e00', '#8e44ad', '#b42318', '#0e7c86'];
const HISTORY = 300;

const st = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  nodeId: null,
  node: null,
  history: [],
  egresses: new Map(),
  nextPage: null,
  fleet: null,
  lastEventId: null,
  retryMs: 2000,
  stream: null,
  started: false,
};

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

function headers(extra) {
  const h = Object.assign({}, extra);
  if (st.token) h.Authorization = 'Bearer ' + st.token;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(), cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = null; }
  if (r.status === 401) { needToken('The token was refused.'); }
  if (!r.ok) {
    const e = v && v.error ? v.error : {};
    throw new ApiError(r.status, e.code || 'http_' + r.status, e.message || text || r.statusText);
  }
  return v;
}

// ---- token ----

function needToken(why) {
  if (st.stream) st.stream.abort();
  st.started = false;
  $('#main').hidden = true;
  $('#token-panel').hidden = false;
  $('#token-error').textContent = st.token ? why : '';
  $('#token-input').focus();
}

$('#token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  st.token = $('#token-input').value.trim();
  sessionStorage.setItem(TOKEN_KEY, st.token);
  $('#token-input').value = '';
  boot();
});

// ---- formatting ----

function bytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n, i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i ? v.toFixed(1) : v) + ' ' + units[i];
}

function duration(ms) {
  if (ms < 0 || !isFinite(ms)) ms = 0;
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (x) => String(x).padStart(2, '0');
  return (h ? h + ':' + two(m) : m) + ':' + two(r);
}

function elapsed(e) {
  const from = e.started_at || e.created_at;
  const to = e.ended_at || Date.now();
  return duration(to - from);
}

function pct(x) { return (100 * x).toFixed(0) + '%'; }

// ---- node ----

function setNode(n) {
  st.node = n;
  st.nodeId = n.node_id;
  $('#node-id').textContent = n.node_id;
  const f = $('#node-figures');
  f.replaceChildren(
    el('div', {}, el('b', {}, pct(n.load)), 'load'),
    el('div', {}, el('b', {}, n.capacity_cores.toFixed(1)), 'capacity (cores)'),
    el('div', {}, el('b', {}, n.available_cpu.toFixed(2)), 'free to admit (cores)'),
    el('div', {}, el('b', { class: 'badge ' + (n.draining ? 'off' : 'on') }, n.draining ? 'draining' : 'taking work'), 'state'),
  );
  const rows = Object.entries(n.types || {}).map(([t, v]) => el('tr', {},
    el('td', {}, t), el('td', { 'data-type-active': t }, String(v.active)), el('td', {}, v.limit ? String(v.limit) : '–'),
    el('td', {}, String(v.cost)), el('td', {}, String(v.pending_claims))));
  $('#types tbody').replaceChildren(...rows);
  sample();
}

function sample() {
  if (!st.node) return;
  const counts = {};
  for (const [t, v] of Object.entries(st.node.types || {})) counts[t] = v.active;
  st.history.push({ t: Date.now(), load: st.node.load, counts });
  while (st.history.length > HISTORY) st.history.shift();
  drawChart();
}

function drawChart() {
  const c = $('#chart');
  const w = c.clientWidth || c.width, h = c.clientHeight || c.height;
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
  const g = c.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const hs = st.history;
  if (hs.length === 0) return;
  const types = Object.keys(hs[hs.length - 1].counts);
  const maxCount = Math.max(1, ...hs.flatMap((p) => Object.values(p.counts)));
  const maxLoad = Math.max(1, ...hs.map((p) => p.load));
  const t1 = hs[hs.length - 1].t, t0 = Math.min(hs[0].t, t1 - 60000);
  const x = (t) => 30 + (w - 60) * (t - t0) / Math.max(1, t1 - t0);
  const pad = 10;
  const yLoad = (v) => h - pad - (h - 2 * pad) * v / maxLoad;
  const yCount = (v) => h - pad - (h - 2 * pad) * v / maxCount;
  g.strokeStyle = '#d9dee7'; g.lineWidth = 1;
  for (const v of [0, 0.5, 1]) { g.beginPath(); g.moveTo(30, yLoad(v)); g.lineTo(w - 30, yLoad(v)); g.stroke(); }
  g.fillStyle = '#667085'; g.font = '10px sans-serif';
  g.fillText(pct(maxLoad), 0, yLoad(maxLoad) + 4); g.fillText('0%', 4, yLoad(0));
  g.fillText(String(maxCount), w - 24, yCount(maxCount) + 4); g.fillText('0', w - 24, yCount(0));
  const line = (color, ys, width) => {
    g.strokeStyle = color; g.lineWidth = width; g.beginPath();
    hs.forEach((p, i) => { const X = x(p.t), Y = ys(p); if (i) g.lineTo(X, Y); else g.moveTo(X, Y); });
    g.stroke();
  };
  line('#16202e', (p) => yLoad(p.load), 2);
  types.forEach((t, i) => line(COLORS[i % COLORS.length], (p) => yCount(p.counts[t] || 0), 1.5));
  const legend = [el('span', {}, swatch('#16202e'), 'load (left)')]
    .concat(types.map((t, i) => el('span', {}, swatch(COLORS[i % COLORS.length]), t + ' running (right)')));
  $('#chart-legend').replaceChildren(...legend);
}

function swatch(color) {
  const i = el('i', {});
  i.style.background = color;
  return i;
}

// ---- fleet ----

async function loadFleet() {
  try {
    const v = await api('GET', '/v1/fleet/nodes');
    st.fleet = new Map(v.nodes.map((n) => [n.node_id, n]));
    $('#fleet-note').textContent = v.partial || '';
    $('#fleet-panel').hidden = false;
    renderFleet();
  } catch (e) {
    // 404: this node runs alone.
    if (e.status === 404) { st.fleet = null; $('#fleet-panel').hidden = true; }
  }
}

function renderFleet() {
  if (!st.fleet) return;
  const rows = [...st.fleet.values()].sort((a, b) => a.node_id.localeCompare(b.node_id)).map((n) => {
    const running = Object.values(n.types || {}).reduce((s, t) => s + (t.active || 0), 0);
    return el('tr', { 'data-node-id': n.node_id },
      el('td', { 'data-label': 'node', class: 'id' }, n.node_id + (n.node_id === st.nodeId ? ' (this node)' : ''),
        el('div', { class: 'muted detail' }, n.url || '')),
      el('td', { 'data-label': 'load' }, pct(n.load)),
      el('td', { 'data-label': 'free CPU' }, n.available_cpu.toFixed(2) + ' / ' + n.capacity_cores.toFixed(1)),
      el('td', { 'data-label': 'running' }, String(running)),
      el('td', { 'data-label': 'state' }, el('span', { class: 'badge ' + (n.draining ? 'off' : 'on') }, n.draining ? 'draining' : 'ok')));
  });
  $('#fleet tbody').replaceChildren(...rows);
}

// ---- egresses ----

function rank(e) { return FINAL.includes(e.status) ? 3 : (RANK[e.status] || 0); }

function upsert(e) {
  const old = st.egresses.get(e.egress_id);
  // A list read and the stream may cross: never go back to an earlier status.
  if (old && rank(old) > rank(e)) return;
  st.egresses.set(e.egress_id, e);
}

function fileLine(f) {
  const dur = typeof f.duration_s === 'number' ? ', ' + f.duration_s.toFixed(1) + ' s' : '';
  return el('div', { class: 'file', 'data-size-bytes': String(f.size_bytes) },
    el('span', { class: 'id' }, f.filename), ' ', el('span', { class: 'size' }, bytes(f.size_bytes)),
    el('span', { class: 'muted' }, ' (' + f.size_bytes + ' bytes' + dur + ')'),
    el('div', { class: 'muted detail' }, f.location || ''));
}

function field(a, b) {
  if (typeof b === 'number' && a.endsWith('bytes')) return a + '=' + bytes(b);
  return a + '=' + (b !== null && typeof b === 'object' ? JSON.stringify(b) : b);
}

// Output kinds this page does not know (segments, streams, images, ...) are shown as they come:
// a list of items, or an object of such lists ({"files": [...], "segments": [...]}).
function walk(kind, v, out) {
  if (v === null || typeof v !== 'object') return;
  if (Array.isArray(v)) { for (const item of v) out.push(item1(kind, item)); return; }
  const vals = Object.values(v);
  if (vals.length && vals.every((x) => x !== null && typeof x === 'object')) {
    for (const [k, x] of Object.entries(v)) walk(k, x, out);
    return;
  }
  out.push(item1(kind, v));
}

function item1(kind, item) {
  if (item && typeof item === 'object' && 'filename' in item && 'size_bytes' in item) return fileLine(item);
  const text = item && typeof item === 'object'
    ? Object.entries(item).map(([a, b]) => field(a, b)).join(', ')
    : String(item);
  return el('div', { class: 'other', 'data-kind': kind }, el('b', {}, kind + ': '), text);
}

function outputs(e) {
  const out = [];
  walk('files', e.files || [], out);
  for (const [k, v] of Object.entries(e)) if (!KNOWN.has(k)) walk(k, v, out);
  return out;
}

// ---- thumbnails: each running egress's latest picture (fetched with the token, shown as a
// blob: URL, since an <img> cannot send a header) ----

const thumbs = new Map(); // egress id -> blob: URL of its latest picture

function thumb(e) {
  const url = thumbs.get(e.egress_id);
  if (FINAL.includes(e.status) && !url) return null;
  const img = el('img', { class: 'thumb', alt: 'latest picture', 'data-thumb': e.egress_id });
  img.hidden = !url;
  if (url) img.src = url;
  return img;
}

async function refreshThumbs() {
  for (const e of [...st.egresses.values()]) {
    if (e.status !== 'active' && e.status !== 'ending') continue;
    if (st.nodeId && e.node_id !== st.nodeId) continue;
    try {
      const r = await fetch('/v1/egress/' + e.egress_id + '/thumbnail.jpg', { headers: headers(), cache: 'no-store' });
      if (!r.ok) continue;
      const url = URL.createObjectURL(await r.blob());
      const old = thumbs.get(e.egress_id);
      thumbs.set(e.egress_id, url);
      for (const img of document.querySelectorAll('img[data-thumb="' + e.egress_id + '"]')) {
        img.src = url;
        img.hidden = false;
      }
      if (old) URL.revokeObjectURL(old);
    } catch (_) { /* the next round tries again */ }
  }
}

function row(e) {
  const running = !FINAL.includes(e.status);
  const actions = el('div', { class: 'actions' });
  if (running) {
    actions.append(
      el('button', { class: 'secondary stop', type: 'button', onclick: () => end(e.egress_id, 'stop') }, 'Stop'),
      el('button', { class: 'danger kill', type: 'button', onclick: () => end(e.egress_id, 'kill') }, 'Kill'));
  }
  const why = [e.end_reason, e.error].filter(Boolean).join(': ');
  return el('tr', { 'data-egress-id': e.egress_id },
    el('td', { 'data-label': 'egress' }, thumb(e), el('span', { class: 'id' }, e.egress_id),
      el('div', { class: 'muted detail' }, e.type + ' on ' + e.node_id)),
    el('td', { 'data-label': 'status' }, el('span', { class: 'badge status s-' + e.status }, e.status),
      why ? el('div', { class: 'muted detail reason' }, why) : null),
    el('td', { 'data-label': 'elapsed', class: 'elapsed' }, elapsed(e)),
    el('td', { 'data-label': 'outputs', class: 'outputs' }, ...outputs(e)),
    el('td', {}, actions));
}

function renderEgresses() {
  const list = [...st.egresses.values()].sort((a, b) => b.created_at - a.created_at || a.egress_id.localeCompare(b.egress_id));
  $('#egresses tbody').replaceChildren(...list.map(row));
  const running = list.filter((e) => !FINAL.includes(e.status)).length;
  $('#egress-count').textContent = list.length + ' (' + running + ' running)';
}

function tickElapsed() {
  for (const tr of document.querySelectorAll('#egresses tbody tr')) {
    const e = st.egresses.get(tr.getAttribute('data-egress-id'));
    const cell = tr.querySelector('.elapsed');
    if (e && cell && !FINAL.includes(e.status)) cell.textContent = elapsed(e);
  }
}

async function end(id, action) {
  try {
    upsert(await api('POST', '/v1/egress/' + encodeURIComponent(id) + '/' + action));
    renderEgresses();
  } catch (e) {
    $('#start-result').textContent = action + ' ' + id + ': ' + e.message;
  }
}

$('#start-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const sources = $('#sources').value.split('\n').map((s) => s.trim()).filter(Boolean).map((uri) => ({ uri }));
  const type = $('#type').value;
  const output = { file: { filename: $('#filename').value.trim() } };
  // A web egress records a page: its URL instead of sources.
  const body = type === 'web'
    ? { type, url: (sources[0] || {}).uri || '', output }
    : { type, sources, output };
  const cpu = $('#estimated-cpu').value.trim();
  if (cpu !== '') body.estimated_cpu = Number(cpu);
  const btn = $('#start-btn');
  btn.disabled = true;
  try {
    const extra = $('#extra').value.trim();
    if (extra) {
      let v;
      try { v = JSON.parse(extra); } catch (e) { throw new ApiError(0, 'bad_form', 'other request fields: ' + e.message); }
      if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ApiError(0, 'bad_form', 'other request fields must be a JSON object');
      Object.assign(body, v);
    }
    const e = await api('POST', '/v1/egress', body);
    upsert(e);
    renderEgresses();
    $('#start-result').className = 'muted';
    $('#start-result').textContent = 'Started ' + e.egress_id + ' on ' + e.node_id;
  } catch (e) {
    $('#start-result').className = 'error';
    $('#start-result').textContent = e.code + ': ' + e.message;
  } finally {
    btn.disabled = false;
  }
});

// ---- live events ----

// The list comes a page at a time (a node may keep 200,000 records): the newest first, older
// ones on demand; events keep what is shown up to date.
const PAGE = 50;

function showMore(list) {
  st.nextPage = list.next_page_token || null;
  $('#egress-more').hidden = !st.nextPage;
}

async function loadAll() {
  const [node, list] = await Promise.all([api('GET', '/v1/node'), api('GET', '/v1/egress?limit=' + PAGE)]);
  setNode(node);
  st.egresses.clear();
  for (const e of list.egresses) upsert(e);
  showMore(list);
  renderEgresses();
}

$('#egress-more').addEventListener('click', async () => {
  if (!st.nextPage) return;
  const btn = $('#egress-more');
  btn.disabled = true;
  try {
    const list = await api('GET', '/v1/egress?limit=' + PAGE + '&page_token=' + encodeURIComponent(st.nextPage));
    for (const e of list.egresses) upsert(e);
    showMore(list);
    renderEgresses();
  } finally {
    btn.disabled = false;
  }
});

function onEvent(kind, data) {
  if (kind === 'events_lost') {
    loadAll().catch(() => {});
    return;
  }
  if (kind === 'node_updated') {
    if (data.node_id === st.nodeId) setNode(data);
    if (st.fleet) {
      const n = st.fleet.get(data.node_id) || { node_id: data.node_id, url: '' };
      Object.assign(n, { load: data.load, capacity_cores: data.capacity_cores, available_cpu: data.available_cpu,
        draining: data.draining, types: data.types });
      st.fleet.set(data.node_id, n);
      renderFleet();
    }
    return;
  }
  if (kind.startsWith('egress_')) {
    upsert(data);
    renderEgresses();
  }
}

function onBlock(block, connected) {
  let id = null, kind = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) { if (line === ': connected') connected(); continue; }
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? '' : line.slice(c + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') id = value;
    else if (field === 'event') kind = value;
    else if (field === 'data') data.push(value);
    else if (field === 'retry' && Number(value) > 0) st.retryMs = Number(value);
  }
  if (id !== null) st.lastEventId = id;
  if (data.length) {
    try { onEvent(kind, JSON.parse(data.join('\n'))); } catch (_) { /* not ours */ }
  }
}

function setLive(on) {
  const b = $('#live');
  b.className = 'badge ' + (on ? 'on' : 'off');
  b.textContent = on ? 'live' : 'reconnecting';
}

async function follow() {
  const ctl = new AbortController();
  st.stream = ctl;
  while (!ctl.signal.aborted) {
    try {
      const h = headers({ Accept: 'text/event-stream' });
      if (st.lastEventId) h['Last-Event-ID'] = st.lastEventId;
      const r = await fetch('/v1/events', { headers: h, signal: ctl.signal, cache: 'no-store' });
      if (r.status === 401) { needToken('The token was refused.'); return; }
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      const connected = () => {
        setLive(true);
        // A first connection reads the state once the stream is subscribed, so nothing falls
        // between the two; a reconnection gets what it missed from the replay instead.
        if (!st.lastEventId) loadAll().catch(() => {});
        loadFleet();
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          onBlock(buf.slice(0, i), connected);
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((res) => setTimeout(res, st.retryMs));
  }
}

async function boot() {
  $('#token-panel').hidden = true;
  try {
    await loadAll();
  } catch (e) {
    if (e.status === 401) return; // needToken has shown the form
    $('#main').hidden = false;
    $('#start-result').textContent = 'Cannot read the node: ' + e.message;
    return;
  }
  $('#main').hidden = false;
  if (!st.started) {
    st.started = true;
    st.lastEventId = null;
    follow();
  }
}

setInterval(tickElapsed, 1000);
setInterval(refreshThumbs, 2000);
// The chart moves on even when nothing changes (node_updated is sent on change only).
setInterval(() => { if (st.node && Date.now() - (st.history.at(-1) || { t: 0 }).t > 1900) sample(); }, 2000);
window.addEventListener('resize', drawChart);
boot();
