// Regent console: plain JavaScript over the documented /v1 API and its event stream.
// The token lives in this tab's sessionStorage only; it is sent in the Authorization header,
// never in a URL. Everything drawn from the API goes into the page as text nodes, never parsed as markup.
'use strict';

(() => {
  const TOKEN_KEY = 'regent.console.token';
  const ROLES = { read: 1, worker: 2, admin: 3 };
  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    who: null,
    cluster: null,
    events: [], // the newest events seen on the stream, newest last (bounded)
    lastEventId: null,
    listeners: new Set(),
    snapshotListeners: new Set(),
    needs: [], // what the current view wants on the stream besides events (run:ID, queues)
    stream: null,
    connected: false,
    view: null, // the current view's cleanup
    generation: 0,
  };

  // ── DOM ────────────────────────────────────────────────────────────────────────────────
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, kids);
    return el;
  }
  // Replaces an element's children; null, undefined and false children are left out.
  function fill(el, ...kids) { el.replaceChildren(); return append(el, kids); }
  function append(el, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === undefined || kid === null || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, String(v));
    }
    for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return el;
  }
  function badge(text, cls) { return h('span', { class: `badge s-${cls || text}`, 'data-badge': text }, text); }
  function kv(k, v) { return h('div', { class: 'kv' }, h('span', { class: 'k' }, k), h('span', { class: 'v' }, v ?? '–')); }
  function table(headers, rows, empty) {
    if (!rows.length) return h('div', { class: 'table-wrap' }, h('div', { class: 'empty' }, empty || 'Nothing here.'));
    return h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))), h('tbody', {}, rows)));
  }
  function short(hash) { return hash ? hash.slice(0, 12) : '–'; }
  function when(iso) { if (!iso) return '–'; const d = new Date(iso); return isNaN(d) ? iso : d.toLocaleString(); }
  function ms(n) {
    if (n === null || n === undefined) return '–';
    if (Math.abs(n) < 1000) return `${Math.round(n * 100) / 100} ms`;
    const sec = n / 1000;
    if (Math.abs(sec) < 120) return `${sec.toFixed(1)} s`;
    if (Math.abs(sec) < 7200) return `${Math.floor(sec / 60)} min ${Math.round(sec % 60)} s`;
    return `${(sec / 3600).toFixed(1)} h`;
  }
  function json(v) { try { return JSON.stringify(v, null, 2); } catch { return String(v); } }

  // ── Banner, confirmation ───────────────────────────────────────────────────────────────
  function banner(text, kind, links) {
    const b = $('banner');
    if (!text) { b.hidden = true; b.textContent = ''; return; }
    b.textContent = text;
    b.dataset.kind = kind || 'error';
    for (const l of links || []) b.append(h('a', { href: l.href }, l.text));
    b.hidden = false;
  }
  function confirmAction(title, text) {
    return new Promise((resolve) => {
      const box = $('confirm');
      $('confirm-title').textContent = title;
      $('confirm-text').textContent = text;
      box.hidden = false;
      const done = (answer) => {
        box.hidden = true;
        $('confirm-yes').removeEventListener('click', yes);
        $('confirm-no').removeEventListener('click', no);
        resolve(answer);
      };
      const yes = () => done(true);
      const no = () => done(false);
      $('confirm-yes').addEventListener('click', yes);
      $('confirm-no').addEventListener('click', no);
      $('confirm-yes').focus();
    });
  }
  // Runs an action behind a confirmation; shows its answer (or its refusal) in the banner.
  async function act(title, text, fn, done) {
    if (!(await confirmAction(title, text))) return;
    try {
      const answer = await fn();
      banner(`${title}: done.`, 'ok');
      if (done) done(answer);
    } catch (e) {
      banner(`${title}: ${e.message}`);
    }
  }

  // ── API ────────────────────────────────────────────────────────────────────────────────
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  function setConnection(ok, text) {
    state.connected = ok;
    const c = $('conn');
    c.dataset.state = ok ? 'live' : 'down';
    c.textContent = text || (ok ? 'live' : 'disconnected: retrying');
    if (!ok) {
      const others = (state.cluster?.instances || []).filter((i) => i.http_address && i.instance_id !== state.cluster.self_instance_id && !i.stale);
      banner('This node does not answer; the console keeps retrying. Other nodes:', 'error',
        others.map((i) => ({ href: `http://${i.http_address}/console/`, text: `${i.node_name} (${i.http_address})` })));
    } else if ($('banner').dataset.kind === 'error' && $('banner').textContent.startsWith('This node does not answer')) {
      banner('');
    }
  }
  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${state.token}` };
    let body;
    if (options.body !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(options.body); }
    let response;
    try {
      response = await fetch(path, { method: options.method || 'GET', headers, body, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      setConnection(false);
      throw new ApiError(0, 'unreachable', 'the node does not answer');
    }
    if (!state.connected && state.stream) setConnection(true);
    const text = await response.text();
    let doc = null;
    try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
    if (response.status === 401) { signOut('The token was refused (unknown, revoked or malformed): paste a valid one.'); throw new ApiError(401, 'unauthorized', 'unauthorized'); }
    if (!response.ok) {
      const err = doc && doc.error ? doc.error : { code: String(response.status), message: text || response.statusText };
      throw new ApiError(response.status, err.code, `${err.message} (${response.status} ${err.code})`);
    }
    return doc;
  }
  const can = (role) => state.who && ROLES[state.who.role] >= ROLES[role];

  // ── The event stream: fetch + a streaming body (an EventSource cannot send a header) ────
  function onEvent(fn) { state.listeners.add(fn); return () => state.listeners.delete(fn); }
  // Snapshots ride on the same stream: the node writes the cluster (always: the disconnected
  // banner names the other nodes from it) and what the view asked for every 2 s, from reads it
  // shares among all its viewers. A view that follows them polls nothing.
  function onSnapshot(kind, fn) {
    const entry = { kind, fn };
    state.snapshotListeners.add(entry);
    return () => state.snapshotListeners.delete(entry);
  }
  function need(list) {
    const same = list.length === state.needs.length && list.every((x, i) => x === state.needs[i]);
    state.needs = list;
    if (!same && state.stream && state.stream.abort) state.stream.restart();
  }
  async function runStream() {
    const me = {};
    state.stream = me;
    let delay = 500;
    while (state.stream === me) {
      const controller = new AbortController();
      let restarting = false;
      me.abort = () => controller.abort();
      me.restart = () => { restarting = true; controller.abort(); };
      try {
        const headers = { Authorization: `Bearer ${state.token}`, Accept: 'text/event-stream' };
        if (state.lastEventId !== null) headers['Last-Event-ID'] = String(state.lastEventId);
        const query = new URLSearchParams();
        for (const x of ['cluster', ...state.needs]) query.append('snapshot', x);
        const response = await fetch(`/v1/events?${query}`, { headers, signal: controller.signal, cache: 'no-store', credentials: 'omit' });
        if (response.status === 401) { signOut('The token was refused: paste a valid one.'); return; }
        if (response.status === 400) { state.lastEventId = null; throw new Error('resume point pruned'); }
        if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
        setConnection(true);
        delay = 500;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const record = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            dispatch(record);
          }
        }
        throw new Error('stream ended');
      } catch (e) {
        if (state.stream !== me) return;
        if (restarting) continue; // the view changed what it needs: reconnect at once, resuming after the last event
        setConnection(false);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }
  }
  function dispatch(record) {
    let id = null, topic = null, data = '';
    for (const line of record.split('\n')) {
      if (line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') topic = value;
      else if (field === 'data') data += value;
    }
    if (topic && topic.startsWith('snapshot.') && id === null && data) {
      let doc;
      try { doc = JSON.parse(data); } catch { return; }
      const kind = topic.slice('snapshot.'.length);
      if (kind === 'cluster') state.cluster = doc;
      for (const l of state.snapshotListeners) if (l.kind === kind) { try { l.fn(doc); } catch (e) { /* keep the stream */ } }
      return;
    }
    if (id === null || !data) return;
    state.lastEventId = Number(id);
    let event;
    try { event = JSON.parse(data); } catch { return; }
    event.topic = event.topic || topic;
    state.events.push(event);
    if (state.events.length > 1000) state.events.splice(0, state.events.length - 1000);
    for (const fn of state.listeners) { try { fn(event); } catch (e) { /* a view's handler must not stop the stream */ } }
  }
  function stopStream() { if (state.stream && state.stream.abort) state.stream.abort(); state.stream = null; }

  // ── Sign in / out ──────────────────────────────────────────────────────────────────────
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.who = null;
    stopStream();
    $('who').textContent = '';
    $('signout').hidden = true;
    $('conn').dataset.state = 'idle';
    $('conn').textContent = 'not connected';
    showLogin(message);
  }
  function showLogin(message) {
    cleanupView();
    const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', placeholder: 'rgt_…', 'aria-label': 'API token' });
    const error = h('p', { id: 'login-error', class: 'error-text' }, message || '');
    const submit = async () => {
      const token = input.value.trim();
      if (!token) { error.textContent = 'Paste a token first (regent tokens create --role read --name me).'; return; }
      state.token = token;
      try {
        state.who = await api('/v1/whoami');
      } catch (e) {
        state.token = null;
        error.textContent = e.code === 'unauthorized' ? 'That token was refused.' : e.message;
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      input.value = '';
      started();
    };
    input.addEventListener('keydown', (e) => { if (e.key === 'Enter') submit(); });
    fill($('view'), h('div', { class: 'panel login' },
      h('h1', {}, 'Sign in'),
      h('p', { class: 'muted' }, 'Paste an API token. It stays in this browser tab (sessionStorage) and is sent only to this node, in a header. The console shows what its role may do.'),
      input, h('button', { id: 'login', type: 'button', onclick: submit }, 'Open the console'), error));
    input.focus();
  }
  async function started() {
    $('who').textContent = `${state.who.name} · ${state.who.role}${state.who.namespace ? ` · ${state.who.namespace}` : ''}${state.who.node_name ? ` @ ${state.who.node_name}` : ''}`;
    $('who').dataset.role = state.who.role;
    $('signout').hidden = false;
    if (!state.stream) runStream();
    route();
  }

  // ── Router ─────────────────────────────────────────────────────────────────────────────
  function cleanupView() { if (state.view) { try { state.view(); } catch { /* ignore */ } } state.view = null; }
  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, query] = raw.split('?');
    return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || '') };
  }
  function route() {
    if (!state.token || !state.who) return;
    cleanupView();
    banner('');
    const { parts, params } = parseHash();
    const name = parts[0] || 'runs';
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === name || (a.dataset.view === 'runs' && name === 'run') || (a.dataset.view === 'packages' && name === 'package'));
    const view = views[name] || views.runs;
    need(name === 'queues' ? ['queues'] : name === 'workers' ? ['workers'] : name === 'run' && parts[1] ? [`run:${parts[1]}`] : []);
    const root = h('div', { id: `view-${name}`, 'data-view': name });
    fill($('view'), root);
    state.generation += 1;
    state.view = view(root, parts.slice(1), params, state.generation) || null;
  }
  // A view's live loop: `load` now, on `every` ms (skipped while the tab is hidden) and when
  // `wake()` is called (an event), with calls in between coalesced.
  function live(load, every) {
    let stopped = false, timer = null, pending = false, busy = false;
    const run = async () => {
      if (stopped) return;
      if (busy) { pending = true; return; }
      busy = true;
      try { await load(); } catch (e) { if (e.status !== 0) banner(e.message); }
      busy = false;
      if (pending && !stopped) { pending = false; setTimeout(run, 150); }
    };
    run();
    if (every) timer = setInterval(() => { if (!document.hidden) run(); }, every);
    let soon = null;
    return {
      wake() { if (!soon) soon = setTimeout(() => { soon = null; run(); }, 200); },
      stop() { stopped = true; clearInterval(timer); clearTimeout(soon); },
    };
  }
  // Countdowns and ages tick every second from the last read (database clock offsets), no fetch.
  function ticker(fn) { fn(); const t = setInterval(fn, 1000); return () => clearInterval(t); }

  const views = {};

  // ── Runs ───────────────────────────────────────────────────────────────────────────────
  const RUN_STATES = ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];
  views.runs = (root, _parts, params) => {
    const filters = {
      type: params.get('type') || '', state: params.get('state') || '', version: params.get('version') || '',
      idempotency_key: params.get('idempotency_key') || '', started_after: params.get('started_after') || '', started_before: params.get('started_before') || '',
    };
    const cursors = [];
    let cursor = params.get('after') || null;
    const input = (name, label, placeholder) => h('label', {}, label, h('input', { id: `f-${name}`, value: filters[name], placeholder: placeholder || '' }));
    const stateSelect = h('select', { id: 'f-state' }, RUN_STATES.map((x) => h('option', { value: x, selected: x === filters.state }, x || 'any')));
    const apply = () => {
      const q = new URLSearchParams();
      for (const k of Object.keys(filters)) {
        const el = $(`f-${k}`);
        let v = el ? el.value.trim() : '';
        if (v && (k === 'started_after' || k === 'started_before') && !/[zZ]|[+-]\d\d:?\d\d$/.test(v)) {
          const d = new Date(v); if (!isNaN(d)) v = d.toISOString();
        }
        if (v) q.set(k, v);
      }
      location.hash = `#/runs${q.toString() ? `?${q}` : ''}`;
    };
    const body = h('div', { id: 'runs-table' });
    const pager = h('div', { class: 'pager' });
    root.append(h('h1', {}, 'Runs'),
      h('div', { class: 'filters' }, input('type', 'type', 'orders.approval'), h('label', {}, 'state', stateSelect), input('version', 'version (hash)'),
        input('idempotency_key', 'idempotency key'), input('started_after', 'started after', '2026-12-01T00:00Z'), input('started_before', 'started before'),
        h('button', { id: 'f-apply', type: 'button', onclick: apply }, 'Filter')),
      body, pager);
    for (const el of root.querySelectorAll('.filters input')) el.addEventListener('keydown', (e) => { if (e.key === 'Enter') apply(); });
    const load = async () => {
      const q = new URLSearchParams({ limit: '50' });
      for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
      if (cursor) q.set('after', cursor);
      const page = await api(`/v1/runs?${q}`);
      fill(body, table(['run', 'type', 'state', 'version', 'started', 'finished', 'took'], page.runs.map((r) =>
        h('tr', { 'data-run': r.run_id, 'data-state': r.state },
          h('td', {}, h('a', { href: `#/run/${r.run_id}`, class: 'mono' }, r.run_id)),
          h('td', {}, r.workflow_type), h('td', {}, badge(r.state)),
          h('td', {}, h('a', { href: `#/package/${r.package_hash}`, class: 'mono' }, short(r.package_hash))),
          h('td', {}, when(r.started_at)), h('td', {}, when(r.finished_at)),
          h('td', {}, r.finished_at ? ms(new Date(r.finished_at) - new Date(r.started_at)) : '–'))), 'No run matches.'));
      fill(pager,
        cursors.length ? h('button', { type: 'button', class: 'quiet', onclick: () => { cursor = cursors.pop(); loop.wake(); } }, '← Newer') : null,
        page.next_cursor ? h('button', { id: 'runs-older', type: 'button', class: 'quiet', onclick: () => { cursors.push(cursor); cursor = page.next_cursor; loop.wake(); } }, 'Older →') : null);
    };
    const loop = live(load, 0);
    // The first page follows the bus: a run started or finished redraws it.
    const off = onEvent((e) => { if (!cursor && e.topic.startsWith('run.')) loop.wake(); });
    return () => { loop.stop(); off(); };
  };

  // ── One run ────────────────────────────────────────────────────────────────────────────
  function layers(steps) {
    const byName = new Map(steps.map((x) => [x.name, x]));
    const depth = new Map();
    const visit = (x, seen) => {
      if (depth.has(x.name)) return depth.get(x.name);
      if (seen.has(x.name)) return 0;
      seen.add(x.name);
      let d = 0;
      for (const a of x.after || []) if (byName.has(a)) d = Math.max(d, visit(byName.get(a), seen) + 1);
      depth.set(x.name, d);
      return d;
    };
    for (const x of steps) visit(x, new Set());
    const columns = [];
    for (const x of steps) { const d = depth.get(x.name); (columns[d] = columns[d] || []).push(x); }
    return columns;
  }
  // The steps as a graph: one column per depth, an edge from each `after` step.
  function dag(steps, subtitle, onPick) {
    const W = 176, H = 48, GX = 56, GY = 16, PAD = 12;
    const columns = layers(steps);
    const pos = new Map();
    columns.forEach((col, c) => col.forEach((x, r) => pos.set(x.name, { x: PAD + c * (W + GX), y: PAD + r * (H + GY) })));
    const width = PAD * 2 + columns.length * (W + GX) - GX;
    const height = PAD * 2 + Math.max(1, ...columns.map((c) => c.length)) * (H + GY) - GY;
    const edges = [];
    for (const x of steps) for (const a of x.after || []) {
      const p = pos.get(a), q = pos.get(x.name);
      if (!p || !q) continue;
      const x1 = p.x + W, y1 = p.y + H / 2, x2 = q.x, y2 = q.y + H / 2, mx = (x1 + x2) / 2;
      edges.push(s('path', { class: 'edge', 'marker-end': 'url(#arrow)', d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 2},${y2}` }));
    }
    const nodes = steps.map((x) => {
      const p = pos.get(x.name);
      const label = x.name.length > 22 ? `${x.name.slice(0, 21)}…` : x.name;
      return s('g', { class: 'node', 'data-step': x.name, 'data-state': x.state || 'pending', transform: `translate(${p.x},${p.y})`, onclick: () => onPick && onPick(x.name) },
        s('title', {}, `${x.name}: ${x.state || x.kind || ''}`),
        s('rect', { width: W, height: H, rx: 8 }),
        s('text', { x: 10, y: 19 }, label),
        s('text', { x: 10, y: 36, class: 'sub' }, subtitle(x)));
    });
    return h('div', { class: 'dag', id: 'dag' }, s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'steps as a graph' },
      s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto' }, s('path', { class: 'arrow', d: 'M0,0 L10,5 L0,10 z' }))),
      edges, nodes));
  }
  function stepWhat(x) {
    if (x.state === 'running' && x.worker) return `running · ${x.worker}`;
    if (x.kind === 'timer' && x.state === 'waiting') return 'sleeping';
    if (x.kind === 'signal' && x.state === 'waiting') return `waiting for ${x.wait?.signal}`;
    if (x.kind === 'child' && x.state === 'waiting') return 'child run';
    return `${x.state}${x.attempts > 1 ? ` · ${x.attempts} attempts` : ''}`;
  }
  views.run = (root, parts) => {
    const id = parts[0];
    let run = null, readOffset = 0;
    const head = h('div', {}), actions = h('div', { class: 'actions', id: 'run-actions' }), graph = h('div', {}), steps = h('div', {}), extra = h('div', {});
    const feed = h('ul', { class: 'timeline', id: 'run-events' });
    root.append(head, actions, graph, h('h2', {}, 'Steps'), steps, extra, h('h2', {}, 'Events of this run (live)'), h('div', { class: 'panel' }, feed));
    const left = (iso) => (iso ? new Date(iso) - (Date.now() + readOffset) : null);
    const countdowns = [];
    const pick = (name) => { const row = root.querySelector(`tr[data-step="${CSS.escape(name)}"]`); if (row) row.scrollIntoView({ block: 'center' }); };
    let drawn = null;
    const draw = () => {
      // The same run again (a snapshot with nothing new): keep the page as it is, so a button
      // under the pointer is not replaced while it is being clicked.
      const same = JSON.stringify({ ...run, read_at: undefined });
      if (same === drawn) return;
      drawn = same;
      countdowns.length = 0;
      fill(head, h('h1', {}, h('span', { class: 'mono' }, run.run_id), badge(run.state)),
        h('div', { class: 'panel grid' }, kv('type', h('a', { href: `#/runs?type=${encodeURIComponent(run.workflow_type)}` }, run.workflow_type)),
          kv('version', h('a', { href: `#/package/${run.package_hash}`, class: 'mono' }, short(run.package_hash))),
          kv('started', `${when(run.started_at)} by ${run.started_by}`), kv('finished', run.finished_at ? `${when(run.finished_at)} by ${run.finished_by}` : '–'),
          kv('reason', run.reason), kv('deadline', when(run.deadline)), kv('idempotency key', run.idempotency_key),
          kv('budget', run.budget && run.budget.limit !== null ? `${run.budget.spent} of ${run.budget.limit} ${run.budget.unit || ''} (${run.budget.remaining} left)` : 'none'),
          kv('parent', run.parent_run_id ? h('a', { href: `#/run/${run.parent_run_id}` }, run.parent_run_id) : '–'),
          run.concurrency_key !== undefined ? kv('concurrency key', run.admitted_at ? `${run.concurrency_key} (admitted ${when(run.admitted_at)})` : `${run.concurrency_key} (waiting for a slot)`) : null),
        run.error ? h('p', { class: 'error-text', id: 'run-error' }, run.error) : null);
      fill(actions);
      if (can('worker')) {
        if (run.state === 'running' || run.state === 'queued') {
          actions.append(h('button', { id: 'run-cancel', type: 'button', class: 'danger', onclick: () => act('Cancel run', `Cancel ${run.run_id}? Its queued and running steps are fenced; this cannot be undone (retry resumes it later).`,
            () => api(`/v1/runs/${run.run_id}/cancel`, { method: 'POST', body: { reason: `cancelled from the console by ${state.who.name}` } }), () => loop.wake()) }, 'Cancel run'));
          for (const x of run.steps.filter((x) => x.kind === 'signal' && x.state === 'waiting')) {
            const sig = x.wait?.signal;
            actions.append(
              h('button', { id: `approve-${x.name}`, type: 'button', class: 'ok', onclick: () => act('Approve', `Send signal "${sig}" to ${run.run_id} (step ${x.name}) as approved?`,
                () => api(`/v1/runs/${run.run_id}/signals/${encodeURIComponent(sig)}`, { method: 'POST', body: { data: { approved: true, by: state.who.name } } }), () => loop.wake()) }, `Approve ${x.name}`),
              h('button', { id: `reject-${x.name}`, type: 'button', class: 'danger', onclick: () => act('Reject', `Reject at step ${x.name}: the run is cancelled with the reason "rejected at ${x.name}".`,
                () => api(`/v1/runs/${run.run_id}/cancel`, { method: 'POST', body: { reason: `rejected at ${x.name} by ${state.who.name} (console)` } }), () => loop.wake()) }, `Reject ${x.name}`));
          }
        } else if (run.state === 'failed' || run.state === 'cancelled') {
          actions.append(h('button', { id: 'run-retry', type: 'button', onclick: () => act('Retry run', `Resume ${run.run_id} from its failed step on its pinned version ${short(run.package_hash)}?`,
            () => api(`/v1/runs/${run.run_id}/retry`, { method: 'POST', body: { steps: 'failed' } }), () => loop.wake()) }, 'Retry from the failed step'));
        }
      }
      fill(graph, dag(run.steps, stepWhat, pick));
      fill(steps, table(['step', 'kind', 'state', 'attempts', 'worker', 'lease / wait', 'finished', 'output / error'], run.steps.map((x) => {
        const timing = h('td', { class: 'countdown' });
        if (x.lease_expires_at && x.state === 'running') countdowns.push([timing, () => `lease ${ms(left(x.lease_expires_at))} left`]);
        else if (x.kind === 'timer' && x.state === 'waiting') countdowns.push([timing, () => `wakes in ${ms(left(x.wait?.due_at))}`]);
        else if (x.kind === 'signal' && x.state === 'waiting') timing.append(`waits for "${x.wait?.signal}"${x.wait?.due_at ? `, until ${when(x.wait.due_at)}` : ''}`);
        else if (x.kind === 'child' && x.wait?.child_run_id) timing.append(h('a', { href: `#/run/${x.wait.child_run_id}` }, `child ${x.wait.child_run_id}`));
        return h('tr', { 'data-step': x.name, 'data-state': x.state },
          h('td', {}, x.name), h('td', {}, x.kind), h('td', {}, badge(x.state)), h('td', {}, `${x.attempts}${x.max_attempts ? ` / ${x.max_attempts}` : ''}`),
          h('td', { class: 'mono' }, x.worker || '–'), timing, h('td', {}, when(x.finished_at)),
          h('td', { class: 'wrap' }, x.error ? h('span', { class: 'error-text' }, x.error) : x.output !== null && x.output !== undefined ? h('code', {}, JSON.stringify(x.output).slice(0, 300)) : '–'));
      })));
      const attempts = run.steps.flatMap((x) => (x.attempt_history || []).map((a) => [x.name, a]));
      fill(extra,
        h('h2', {}, 'Attempts'), table(['step', '#', 'worker', 'epoch', 'state', 'started', 'took'], attempts.map(([name, a]) =>
          h('tr', { 'data-attempt': `${name}/${a.attempt_index}` }, h('td', {}, name), h('td', {}, a.attempt_index), h('td', { class: 'mono' }, a.worker), h('td', {}, a.lease_epoch),
            h('td', {}, badge(a.state)), h('td', {}, when(a.started_at)), h('td', {}, a.ended_at ? ms(new Date(a.ended_at) - new Date(a.started_at)) : '–'))), 'No attempt yet.'),
        h('h2', {}, 'Budget ledger'), table(['step', 'amount', 'unit', 'at'], run.ledger.map((l) => h('tr', {}, h('td', {}, l.step), h('td', {}, l.amount), h('td', {}, l.unit), h('td', {}, when(l.at)))), 'No cost recorded.'),
        h('h2', {}, 'Signals'), table(['name', 'id', 'sent by', 'received', 'consumed by'], (run.signals || []).map((g) => h('tr', {}, h('td', {}, g.name), h('td', { class: 'mono' }, g.signal_id), h('td', {}, g.sent_by), h('td', {}, when(g.received_at)), h('td', {}, g.consumed_by || '–'))), 'No signal.'),
        h('h2', {}, 'Input'), h('pre', {}, json(run.input)), run.output !== undefined && run.output !== null ? [h('h2', {}, 'Output'), h('pre', {}, json(run.output))] : null);
      tick();
    };
    const tick = () => { for (const [el, text] of countdowns) el.textContent = text(); };
    const load = async () => {
      run = await api(`/v1/runs/${encodeURIComponent(id)}`);
      if (run.read_at) readOffset = new Date(run.read_at) - Date.now();
      draw();
    };
    const addEvent = (e) => feed.prepend(h('li', { 'data-topic': e.topic }, h('span', { class: 'muted' }, when(e.published_at)), badge(e.topic, e.topic.split('.')[1]), e.payload?.step ? `step ${e.payload.step}` : '', e.payload?.reason || ''));
    for (const e of state.events) if (e.payload?.run_id === id) addEvent(e);
    // Redrawn at once on each of its events, and from the stream's snapshot of it every 2 s (a
    // claim publishes no event; the node reads the run once for all its viewers).
    const loop = live(load, 0);
    const off = onEvent((e) => { if (e.payload?.run_id === id || e.payload?.parent_run_id === id) { addEvent(e); loop.wake(); } });
    const offSnapshot = onSnapshot('run', (doc) => {
      if (doc.run_id !== id || !doc.run) return;
      run = doc.run;
      if (run.read_at) readOffset = new Date(run.read_at) - Date.now();
      draw();
    });
    const stopTick = ticker(tick);
    return () => { loop.stop(); off(); offSnapshot(); stopTick(); };
  };

  // ── Packages ───────────────────────────────────────────────────────────────────────────
  views.packages = (root) => {
    const body = h('div', {});
    root.append(h('h1', {}, 'Packages'), h('p', { class: 'muted' }, 'Every stored version by type; the routed one starts new runs. Unload is refused while runs are pinned to a version.'), body);
    const load = async () => {
      const versions = [];
      let after = null;
      do {
        const page = await api(`/v1/packages?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ''}`);
        versions.push(...page.packages);
        after = page.next_cursor;
      } while (after && versions.length < 5000);
      const types = [...new Set(versions.map((v) => v.workflow_type))];
      fill(body, ...(types.length ? types.map((t) => h('section', { 'data-type': t }, h('h2', {}, t),
        table(['version', 'routed', 'deployed', 'by', 'steps', 'files', 'size', 'running runs', ''], versions.filter((v) => v.workflow_type === t).reverse().map((v) =>
          h('tr', { 'data-hash': v.content_hash, 'data-routed': String(v.routed) },
            h('td', {}, h('a', { href: `#/package/${v.content_hash}`, class: 'mono' }, short(v.content_hash))),
            h('td', {}, v.routed ? badge('routed') : '–'), h('td', {}, when(v.deployed_at)), h('td', {}, v.deployed_by), h('td', {}, v.step_count), h('td', {}, v.file_count),
            h('td', {}, `${v.size_bytes} B`),
            h('td', {}, v.running_runs ? h('a', { href: `#/runs?version=${v.content_hash}&state=running` }, v.running_runs) : '0'),
            h('td', {}, can('admin') ? [
              !v.routed ? h('button', { type: 'button', class: 'quiet', 'data-action': 'route', onclick: () => act('Route version', `Route ${t} to ${short(v.content_hash)}? New runs start on it; running runs keep their version.`,
                () => api(`/v1/packages/${v.content_hash}/route`, { method: 'POST', body: { workflow_type: t } }), () => loop.wake()) }, 'Route here') : null,
              h('button', { type: 'button', class: 'quiet', 'data-action': 'unload', onclick: () => act('Unload version', `Unload ${short(v.content_hash)} of ${t}? Its stored files are deleted.`,
                () => api(`/v1/packages/${v.content_hash}/unload`, { method: 'POST', body: { workflow_type: t } }), () => loop.wake()) }, 'Unload'),
            ] : null)))))) : [h('div', { class: 'empty' }, 'No package is deployed (regent packages deploy DIR).')]));
    };
    const loop = live(load, 0);
    const off = onEvent((e) => { if (e.topic.startsWith('package.')) loop.wake(); });
    return () => { loop.stop(); off(); };
  };
  views.package = (root, parts) => {
    const hash = parts[0];
    const load = async () => {
      const p = await api(`/v1/packages/${encodeURIComponent(hash)}`);
      const steps = (p.manifest.steps || []).map((x, i, all) => ({ ...x, after: x.after || (i > 0 && !x.after ? [all[i - 1].name] : []), state: 'pending' }));
      fill(root, h('h1', {}, p.workflow_type, h('span', { class: 'mono muted' }, short(p.content_hash)), p.routed ? badge('routed') : null),
        h('p', {}, h('a', { href: `#/runs?version=${p.content_hash}` }, 'Runs of this version')),
        dag(steps, (x) => x.wait_for ? `waits for ${x.wait_for}` : x.sleep ? `sleeps ${x.sleep}` : x.child ? `child ${x.child}` : `lane ${x.lane || '–'}`),
        h('h2', {}, 'Files'), table(['path', 'size'], p.files.map((f) => h('tr', {}, h('td', { class: 'mono' }, f.path), h('td', {}, `${f.size} B`)))),
        h('h2', {}, 'Manifest'), h('pre', {}, json(p.manifest)));
    };
    const loop = live(load, 0);
    return () => loop.stop();
  };

  // ── Cluster ────────────────────────────────────────────────────────────────────────────
  views.cluster = (root) => {
    const leader = h('div', { id: 'leader' }), instances = h('div', {}), terms = h('div', {}), actions = h('div', { class: 'actions' });
    root.append(h('h1', {}, 'Cluster'), leader, actions, h('h2', {}, 'Instances'), instances, h('h2', {}, 'Elections and failovers'), terms);
    const ages = new Map();
    let drawn = null;
    const draw = (c) => {
      state.cluster = c;
      // Heartbeat ages change at every read: they tick in place; the rest is redrawn only when it changed.
      for (const i of c.instances) { const a = ages.get(i.instance_id); if (a) { a.base = i.heartbeat_age_ms; a.at = Date.now(); } }
      const same = JSON.stringify({ ...c, read_at: undefined, instances: c.instances.map((i) => ({ ...i, heartbeat_age_ms: undefined, last_heartbeat: undefined, stale: i.stale })) });
      if (same === drawn) { tickAges(); return; }
      drawn = same;
      const l = c.leader;
      fill(leader, h('div', { class: 'panel grid' },
        kv('leader', l ? h('strong', { id: 'leader-node', 'data-instance': l.instance_id }, l.node_name || l.instance_id) : h('strong', { id: 'leader-node' }, 'none')),
        kv('term', h('span', { id: 'leader-term' }, String(c.term))), kv('since', l ? when(l.elected_at) : '–'), kv('instance', l ? h('span', { class: 'mono' }, l.instance_id) : '–'),
        kv('API', l?.http_address ? h('a', { href: `http://${l.http_address}/console/#/cluster` }, l.http_address) : '–'),
        kv('heartbeat', l ? (l.heartbeat_stale ? badge('stale') : badge('alive')) : '–')));
      fill(actions, can('admin') && l ? h('button', { id: 'resign', type: 'button', class: 'danger', onclick: () => act('Resign the leader',
        `Ask ${l.node_name || l.instance_id} (term ${c.term}) to hand over leadership? Another node takes over within milliseconds.`,
        () => api('/v1/leader/resign', { method: 'POST' }), () => loop.wake()) }, 'Resign leader') : null);
      ages.clear();
      fill(instances, table(['node', 'instance', 'host · pid', 'version', 'API', 'heartbeat age', ''], c.instances.map((i) => {
        const age = h('td', { class: 'age' });
        ages.set(i.instance_id, { cell: age, base: i.heartbeat_age_ms, at: Date.now() });
        const me = i.instance_id === c.self_instance_id;
        return h('tr', { 'data-instance': i.instance_id, class: me ? 'me' : null },
          h('td', {}, i.node_name, i.is_leader ? [' ', badge('leader')] : null), h('td', { class: 'mono' }, short(i.instance_id)),
          h('td', {}, `${i.host} · ${i.pid}`), h('td', {}, i.version),
          h('td', {}, i.http_address ? (me ? i.http_address : h('a', { href: `http://${i.http_address}/console/` }, i.http_address)) : '–'),
          age, h('td', {}, i.stale ? badge('stale') : badge('alive'), me ? ' you are here' : ''));
      })));
      const names = new Map(c.instances.map((i) => [i.instance_id, i.node_name]));
      fill(terms, table(['term', 'leader', 'elected', 'after', 'leaderless', 'ended'], c.terms.map((t) =>
        h('tr', { 'data-term': t.term }, h('td', {}, t.term), h('td', {}, names.get(t.instance_id) || h('span', { class: 'mono' }, short(t.instance_id))),
          h('td', {}, when(t.elected_at)), h('td', {}, t.after === 'lock_released' ? 'the leader vanished (crash or cut off)' : t.after === 'resignation' ? 'a resignation' : t.after || '–'),
          h('td', {}, ms(t.leaderless_ms)), h('td', {}, t.ended ? `${t.ended} ${when(t.ended_at)}` : t.term === c.term ? 'current' : 'vanished'))), 'No election yet.'));
      tickAges();
    };
    const tickAges = () => { for (const a of ages.values()) a.cell.textContent = ms(a.base + (Date.now() - a.at)); };
    const loop = live(async () => draw(await api('/v1/cluster')), 0);
    const offSnapshot = onSnapshot('cluster', draw);
    // A leadership event: the leader card at once from a fresh read (failovers are rare, so this
    // costs nothing in steady state); the elections table follows with the next snapshot.
    const off = onEvent(async (e) => {
      if (!e.topic.startsWith('leader.') && !e.topic.startsWith('instance.')) return;
      try {
        const fresh = await api('/v1/leader');
        if (state.cluster) draw({ ...state.cluster, leader: fresh.leader, term: fresh.term, instances: fresh.instances });
      } catch (err) { /* the snapshot will bring it */ }
    });
    const stop = ticker(tickAges);
    return () => { loop.stop(); off(); stop(); offSnapshot(); };
  };

  // ── Workers and leases ─────────────────────────────────────────────────────────────────
  views.workers = (root) => {
    let offset = 0;
    const workers = h('div', {}), leases = h('div', {}), decisions = h('div', {});
    root.append(h('h1', {}, 'Workers and leases'), workers, h('h2', {}, 'Leases (soonest expiry first)'), leases, h('h2', {}, "The leader's reclaim decisions"), decisions);
    const countdowns = [];
    let drawn = null;
    const draw = (w, l, d) => {
      const same = JSON.stringify([w.items, l.items.map((x) => ({ ...x, read_at: undefined })), d.items]);
      if (same === drawn) return;
      drawn = same;
      countdowns.length = 0;
      fill(workers, table(['namespace', 'instance', 'worker', 'lanes', 'capabilities', 'TTL', 'state', 'last heartbeat', ''], w.items.map((x) => {
        const alive = !x.dead && new Date(x.expires_at) > new Date();
        return h('tr', { 'data-worker': x.worker_instance_id },
          h('td', {}, x.namespace), h('td', { class: 'mono' }, x.worker_instance_id), h('td', {}, x.worker_id), h('td', { class: 'wrap' }, (x.lanes || []).join(', ')),
          h('td', { class: 'wrap' }, (x.capabilities || []).join(', ') || '–'), h('td', {}, ms(x.liveness_ttl_ms)),
          h('td', {}, x.dead ? badge('dead') : alive ? badge('alive') : badge('expired'), x.dead_reason ? ` ${x.dead_reason}` : ''), h('td', {}, when(x.last_heartbeat)),
          h('td', {}, can('admin') && !x.dead ? h('button', { type: 'button', class: 'quiet', 'data-action': 'mark-dead', onclick: () => act('Mark worker dead',
            `Mark ${x.worker_instance_id} dead? Its leases are reclaimed by the leader's next scan and its claims are refused until it registers again.`,
            () => api('/v1/workers/mark-dead', { method: 'POST', body: { namespace: x.namespace, worker_instance_id: x.worker_instance_id, reason: `marked dead from the console by ${state.who.name}` } }),
            () => loop.wake()) }, 'Mark dead') : null));
      }), 'No worker is registered.'));
      if (l.items.length) offset = new Date(l.items[0].read_at) - Date.now();
      fill(leases, table(['execution', 'namespace · lane', 'run · step', 'worker', 'epoch', 'attempt', 'expires in'], l.items.map((x) => {
        const left = h('td', {});
        countdowns.push(() => { const t = new Date(x.lease_expires_at) - (Date.now() + offset); fill(left, t <= 0 ? badge('expired') : ms(t)); });
        return h('tr', { 'data-execution': x.execution_id }, h('td', { class: 'mono' }, short(x.execution_id)), h('td', {}, `${x.namespace} · ${x.lane}`),
          h('td', {}, x.run_id ? [h('a', { href: `#/run/${x.run_id}` }, x.run_id), ` · ${x.step}`] : '–'), h('td', { class: 'mono' }, x.worker_instance_id),
          h('td', {}, x.lease_epoch), h('td', {}, x.attempt_index), left);
      }), 'No lease is held.'));
      fill(decisions, table(['at', 'decision', 'execution', 'lane', 'run · step', 'term'], d.items.map((x) =>
        h('tr', {}, h('td', {}, when(x.at)), h('td', {}, badge(x.decision)), h('td', { class: 'mono' }, short(x.execution_id)), h('td', {}, x.lane ? `${x.namespace} · ${x.lane}` : '–'),
          h('td', {}, x.run_id ? [h('a', { href: `#/run/${x.run_id}` }, x.run_id), ` · ${x.step}`] : '–'), h('td', {}, x.term))), 'No lease has expired.'));
      tick();
    };
    const load = async () => {
      const [w, l, d] = await Promise.all([api('/v1/workers?limit=500'), api('/v1/leases?limit=200'), api('/v1/leases/decisions?limit=50')]);
      draw(w, l, d);
    };
    const tick = () => { for (const f of countdowns) f(); };
    // Drawn once from the API, then from the stream's snapshot every 2 s (shared by every viewer).
    const loop = live(load, 0);
    const off = onSnapshot('workers', (x) => draw({ items: x.workers }, { items: x.leases }, { items: x.decisions }));
    const stop = ticker(tick);
    return () => { loop.stop(); stop(); off(); };
  };

  // ── Queues ─────────────────────────────────────────────────────────────────────────────
  views.queues = (root) => {
    const body = h('div', {});
    root.append(h('h1', {}, 'Queues'), h('p', { class: 'muted' }, 'Per namespace and lane; read once a second by the node for every viewer.'), body);
    const draw = (q) => {
      fill(body, table(['namespace', 'lane', 'ready', 'oldest ready', 'scheduled', 'running', 'expired leases'], q.lanes.map((x) =>
        h('tr', { 'data-lane': `${x.namespace}/${x.lane}` }, h('td', {}, x.namespace), h('td', {}, x.lane), h('td', {}, x.ready), h('td', {}, ms(x.oldest_ready_age_ms)),
          h('td', {}, x.scheduled), h('td', {}, x.running), h('td', {}, x.expired ? badge(String(x.expired), 'expired') : '0'))), 'Every queue is empty.'),
        q.truncated ? h('p', { class: 'muted' }, 'Only the busiest lanes are shown.') : null);
    };
    const loop = live(async () => draw(await api('/v1/queues')), 0);
    const off = onSnapshot('queues', draw);
    return () => { loop.stop(); off(); };
  };

  // ── Events ─────────────────────────────────────────────────────────────────────────────
  views.events = (root, _parts, params) => {
    const filter = h('input', { id: 'topic-filter', value: params.get('topic') || '', placeholder: 'run.* or leader.elected' });
    const list = h('ul', { class: 'timeline', id: 'event-tail' });
    const count = h('span', { class: 'muted' });
    root.append(h('h1', {}, 'Events', count), h('div', { class: 'filters' }, h('label', {}, 'topic (a * matches the rest)', filter)), h('div', { class: 'panel' }, list));
    const matches = (topic) => {
      const f = filter.value.trim();
      if (!f) return true;
      return f.split(/[ ,]+/).some((p) => p.endsWith('*') ? topic.startsWith(p.slice(0, -1)) : topic === p);
    };
    const row = (e) => h('li', { 'data-topic': e.topic, 'data-id': e.id }, h('span', { class: 'mono muted' }, `#${e.id}`), h('span', { class: 'muted' }, when(e.published_at)),
      h('strong', {}, e.topic), h('code', {}, JSON.stringify(e.payload).slice(0, 400)));
    const redraw = () => {
      const shown = state.events.filter((e) => matches(e.topic)).slice(-300).reverse();
      fill(list, ...(shown.length ? shown.map(row) : [h('li', { class: 'muted' }, 'Waiting for events (the tail starts when the console opened).')]));
      count.textContent = `${shown.length} shown`;
    };
    filter.addEventListener('input', redraw);
    redraw();
    const off = onEvent((e) => {
      if (!matches(e.topic)) return;
      if (list.firstChild && list.firstChild.classList.contains('muted')) fill(list);
      list.prepend(row(e));
      while (list.childNodes.length > 300) list.lastChild.remove();
    });
    return off;
  };

  // ── Modules and audit ──────────────────────────────────────────────────────────────────
  views.modules = (root) => {
    const body = h('div', {}), schemas = h('div', {});
    root.append(h('h1', {}, 'Modules and migrations'), body, h('h2', {}, 'Schemas'), schemas);
    const loop = live(async () => {
      const [mods, mig] = await Promise.all([api('/v1/modules'), api('/v1/migrations')]);
      fill(body, table(['module', 'state', 'binary', 'changed', ''], mods.map((m) => h('tr', { 'data-module': m.name },
        h('td', {}, m.name), h('td', {}, m.enabled ? badge('enabled') : badge('disabled')), h('td', {}, m.version), h('td', {}, when(m.updated_at)),
        h('td', {}, can('admin') && !['engine', 'auth'].includes(m.name) ? h('button', { type: 'button', class: 'quiet', onclick: () => act(m.enabled ? 'Disable module' : 'Enable module',
          `${m.enabled ? 'Disable' : 'Enable'} ${m.name} on every node? Its routes answer 404 module_disabled while it is off; its tables are kept.`,
          () => api(`/v1/modules/${encodeURIComponent(m.name)}/${m.enabled ? 'disable' : 'enable'}`, { method: 'POST' }), () => loop.wake()) },
          m.enabled ? 'Disable' : 'Enable') : null)))));
      fill(schemas, table(['schema', 'applied', 'this binary knows', 'floor', 'held contract', ''], mig.schemas.map((x) => h('tr', { 'data-schema': x.schema },
        h('td', {}, x.schema), h('td', {}, x.applied_version), h('td', {}, x.known_version), h('td', {}, x.floor), h('td', {}, x.held_contract ?? '–'),
        h('td', {}, x.current ? badge('current', 'succeeded') : badge('behind', 'failed'))))));
    }, 0);
    return () => loop.stop();
  };
  views.audit = (root) => {
    const body = h('div', {}), pager = h('div', { class: 'pager' });
    root.append(h('h1', {}, 'Audit log'), body, pager);
    const stack = [];
    let before = Number.MAX_SAFE_INTEGER;
    const loop = live(async () => {
      const page = await api(`/v1/audit?before=${before}&limit=50`);
      fill(body, table(['id', 'at', 'actor', 'action', 'term', 'detail'], page.items.map((a) => h('tr', { 'data-action': a.action },
        h('td', {}, a.id), h('td', {}, when(a.at)), h('td', { class: 'mono' }, a.actor), h('td', {}, a.action), h('td', {}, a.term ?? '–'),
        h('td', { class: 'wrap' }, h('code', {}, JSON.stringify(a.detail)))))));
      fill(pager,
        stack.length ? h('button', { type: 'button', class: 'quiet', onclick: () => { before = stack.pop(); loop.wake(); } }, '← Newer') : null,
        page.items.length === 50 ? h('button', { type: 'button', class: 'quiet', onclick: () => { stack.push(before); before = page.items[page.items.length - 1].id; loop.wake(); } }, 'Older →') : null);
    }, 0);
    return () => loop.stop();
  };

  // ── Start ──────────────────────────────────────────────────────────────────────────────
  window.addEventListener('hashchange', route);
  $('signout').addEventListener('click', () => signOut('Signed out.'));
  if (state.token) {
    api('/v1/whoami').then((who) => { state.who = who; started(); }).catch((e) => { if (e.status !== 401) showLogin(e.message); });
  } else {
    showLogin();
  }
})();
