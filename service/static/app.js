/* pageferry progress page: plain JavaScript, no build step, no dependencies.

   Views (hash routes): #/ the task list, #/task/<id> one task, #/new the new-task form.
   Data: GET /api/export/tasks (a slow poll, for the list itself and new tasks), one websocket
      per unfinished task shown (/api/export/ws/<id>), and a per-task poll of /status/<id> only
   when its websocket cannot be used. With API_TOKEN set, the token (kept in sessionStorage)
   goes as `Authorization: Bearer` on every fetch and never into a URL: websockets open the
   short-lived URL that POST /ws-link/<id> signs for the task, and download links carry the URL
   that POST /download-link/<id> signs (fetched when the link is hovered, focused or pressed,
   so a Ctrl+click or a middle click opens a working URL too).

   Everything that comes from the API (names, errors, URLs) is put into the page with
   textContent / text nodes only - never parsed as HTML. */
'use strict';

(function () {
  const API = '/api/export';
  const FINAL = new Set(['completed', 'failed', 'cancelled']);
  const RANK = { queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };
  const STATUS_LABEL = { queued: 'Queued', running: 'Running', completed: 'Completed', failed: 'Failed', cancelled: 'Cancelled' };
  const PHASE_LABEL = { fetching: 'Fetching', merging: 'Merging', exporting: 'Exporting', delivering: 'Delivering' };
  const LIST_EVERY_MS = 5000;      // the list's slow poll (new tasks, finished ones)
  const POLL_EVERY_MS = 1500;      // one task's fallback when its websocket does not work
  const SOCKET_RETRY_POLLS = 8;    // a socket that worked before is tried again after this many polls
  const MAX_SOCKETS = 16;          // open websockets at most (each holds a server thread)
  const LIST_LIMIT = 50;
  const TOKEN_KEY = 'pageferry.apiToken';
  const TASK_ID = /^task_[0-9a-f]{12}$/;
  const EXAMPLE_SPEC = {
    name: 'orders',
    sources: [{
      url: 'https://api.example.com/v1/orders',
      records: 'data',
      pagination: { type: 'page', param: 'page', size_param: 'per_page', size: 100, total_pages: 'meta.total_pages' },
      auth: { type: 'bearer', token: '${ORDERS_TOKEN}' },
    }],
    rate_limit: { requests: 10, per: 1.0 },
    export: { format: 'csv' },
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ DOM building (no innerHTML)
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (key === 'class') el.className = value;
        else if (key === 'text') el.textContent = String(value);
        else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
        else el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

  // ------------------------------------------------------------------ formatting
  const numberFormat = new Intl.NumberFormat();
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });

  function num(n) { return n === null || n === undefined ? '—' : numberFormat.format(n); }

  function size(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n, i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return (i === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + '\u00a0' + units[i];
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return '—';
    let s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + '\u00a0s';
    const m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + '\u00a0min' + (s ? ' ' + s + '\u00a0s' : '');
    return Math.floor(m / 60) + '\u00a0h ' + (m % 60) + '\u00a0min';
  }

  function percentText(p) {
    const value = Math.max(0, Math.min(100, p));
    return (value >= 10 || Number.isInteger(value) ? Math.floor(value) : value.toFixed(1)) + '\u00a0%';
  }

  function parseTime(iso) { const d = iso ? new Date(iso) : null; return d && !isNaN(d) ? d : null; }

  function when(iso) {
    const d = parseTime(iso);
    if (!d) return '—';
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    return (sameDay ? timeFormat : dateTimeFormat).format(d);
  }

  function timeEl(iso) {
    const d = parseTime(iso);
    if (!d) return document.createTextNode('—');
    return h('time', { datetime: iso, title: dateTimeFormat.format(d) }, when(iso));
  }

  function elapsed(s) {
    const start = parseTime(s.started_at);
    if (!start) return null;
    const end = parseTime(s.finished_at) || new Date();
    return (end - start) / 1000;
  }

  function taskName(s) { return (s && s.name) || (s && s.task_id) || 'task'; }

  // ------------------------------------------------------------------ token
  let token = '';
  try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { token = ''; }
  let authNeeded = false;

  function setToken(value) {
    token = value;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage refused: the token lives as long as the page */ }
  }

  /** A URL signed for one task and route ('ws-link' | 'download-link'): {url, expires_at}. */
  function signedLink(kind, id) { return api('POST', API + '/' + kind + '/' + encodeURIComponent(id)); }

  function downloadHref(id) { return API + '/download/' + encodeURIComponent(id); }

  // ------------------------------------------------------------------ API calls
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || ('HTTP ' + status));
      this.status = status;
      this.body = body || { error: 'error', message: this.message, details: [] };
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    let payload;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = typeof body === 'string' ? body : JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body: payload, cache: 'no-store', credentials: 'same-origin' });
    } catch (e) {
      throw new ApiError(0, { error: 'network', message: 'The service cannot be reached.', details: [] });
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (response.status === 401) {
      needToken();
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    tokenAccepted();
    return data;
  }

  // ------------------------------------------------------------------ notices and announcements
  function announce(message) {
    const region = $('announcer');
    region.textContent = '';
    window.setTimeout(() => { region.textContent = message; }, 60);
  }

  function showNotice(parts, kind) {
    const notice = $('notice');
    clear(notice).append(...parts);
    notice.className = 'notice' + (kind ? ' ' + kind : '');
    notice.hidden = false;
  }

  function hideNotice() { const notice = $('notice'); notice.hidden = true; clear(notice); }

  function needToken() {
    if (authNeeded) return;
    authNeeded = true;
    const text = token
      ? 'The API token was not accepted. Enter the right token in the field at the top.'
      : 'This service needs an API token. Enter it in the field at the top (it is kept for this browser tab only).';
    const go = h('button', { type: 'button', class: 'btn btn-small', onclick: () => $('token-input').focus() }, 'Enter the token');
    showNotice([h('span', { text }), ' ', go]);
    $('token-form').classList.add('attention');
    tokenState(token ? 'token refused' : 'token needed', 'bad');
  }

  function tokenAccepted() {
    if (!authNeeded) return;
    authNeeded = false;
    hideNotice();
    $('token-form').classList.remove('attention');
    tokenState(token ? 'token accepted' : '', 'ok');
  }

  function tokenState(text, kind) {
    const el = $('token-state');
    el.textContent = text;
    el.className = 'token-state' + (kind ? ' ' + kind : '');
  }

  // ------------------------------------------------------------------ the task model
  const tasks = new Map();     // task_id -> latest status JSON
  const watchers = new Map();  // task_id -> Watch
  const sockets = { worked: false, failures: 0 };
  let listOrder = [];          // ids shown in the list, newest first

  /** Take a status JSON; `via` is 'socket' | 'poll' | 'list' | 'action' | 'load'. */
  function accept(s, via) {
    if (!s || typeof s !== 'object' || !TASK_ID.test(s.task_id || '')) return false;
    const id = s.task_id;
    const prev = tasks.get(id);
    if (prev && (RANK[s.status] ?? 0) < (RANK[prev.status] ?? 0)) return false;  // an older snapshot
    if (via === 'list') {
      const w = watchers.get(id);
      if (w && w.live) return false;  // the socket is fresher than the list
    }
    tasks.set(id, s);
    if (prev && prev.status !== s.status) {
      let message = taskName(s) + ': ' + (STATUS_LABEL[s.status] || s.status).toLowerCase();
      if (s.status === 'completed' && s.result) message += ', ' + num(s.result.rows) + ' rows';
      if (s.status === 'failed' && s.error) message += ': ' + s.error.message;
      announce(message);
    }
    const row = rows.get(id);
    if (row) row.update(s);
    if (detail && detail.id === id) detail.update(s, prev);
    return true;
  }

  function forget(id) {
    tasks.delete(id);
    const row = rows.get(id);
    if (row) { row.el.remove(); rows.delete(id); }
    listOrder = listOrder.filter((x) => x !== id);
    if (detail && detail.id === id) detail.missing();
  }

  function socketsUsable() {
    return typeof window.WebSocket === 'function' && (sockets.worked || sockets.failures < 3);
  }

  /** Live updates for one unfinished task: its websocket, or a poll when the socket fails. */
  class Watch {
    constructor(id) {
      this.id = id;
      this.ws = null;
      this.timer = 0;
      this.polls = 0;
      this.live = false;       // a socket is open and has delivered
      this.mode = 'connecting';
      this.stopped = false;
    }

    start() {
      if (socketsUsable()) this.openSocket(); else this.poll();
      return this;
    }

    async openSocket() {
      let ws;
      this.setMode('connecting');
      let link;
      try { link = await signedLink('ws-link', this.id); } catch (e) {
        if (this.stopped) return;
        if (e.status === 404) { this.stop(); forget(this.id); return; }
        this.poll();
        return;
      }
      if (this.stopped) return;
      try { ws = new WebSocket(link.url); } catch (e) { sockets.failures += 1; this.poll(); return; }
      this.ws = ws;
      let delivered = false;
      ws.onmessage = (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch (e) { return; }
        if (message && message.error) {  // unknown task: one error message, then the close
          this.stop();
          if (message.error === 'not_found') forget(this.id);
          return;
        }
        delivered = true;
        sockets.worked = true;
        this.live = true;
        this.setMode('socket');
        accept(message, 'socket');
      };
      ws.onclose = () => {
        this.ws = null;
        this.live = false;
        if (this.stopped) return;
        const s = tasks.get(this.id);
        if (s && FINAL.has(s.status)) { this.stop(); return; }   // the normal end: final status, then close
        if (!delivered) sockets.failures += 1;                    // refused, blocked, or no token
        this.poll();
      };
    }

    poll() {
      this.setMode('poll');
      const tick = async () => {
        this.timer = 0;
        if (this.stopped) return;
        try {
          const s = await api('GET', API + '/status/' + encodeURIComponent(this.id));
          accept(s, 'poll');
          if (FINAL.has(s.status)) { this.stop(); return; }
        } catch (e) {
          if (e.status === 404) { this.stop(); forget(this.id); return; }
        }
        if (this.stopped) return;
        this.polls += 1;
        if (sockets.worked && this.polls % SOCKET_RETRY_POLLS === 0 && socketsUsable()) {
          this.openSocket();  // the socket worked before (a restart, a blip): back to pushes
          return;
        }
        this.timer = window.setTimeout(tick, POLL_EVERY_MS);
      };
      tick();
    }

    stop() {
      this.stopped = true;
      window.clearTimeout(this.timer);
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        ws.onclose = null;
        ws.onmessage = null;
        try { ws.close(1000); } catch (e) { /* already closing */ }
      }
      this.live = false;
      if (watchers.get(this.id) === this) watchers.delete(this.id);
      this.setMode('done');
    }

    setMode(mode) {
      this.mode = mode;
      if (detail && detail.id === this.id) detail.showLive(mode);
    }
  }

  function watch(id) {
    const s = tasks.get(id);
    if (s && FINAL.has(s.status)) return null;
    let w = watchers.get(id);
    if (!w) {
      w = new Watch(id);
      watchers.set(id, w);
      w.start();
    }
    return w;
  }

  /** Keep exactly the websockets the current view needs. */
  function syncWatchers() {
    const wanted = new Set();
    if (view.name === 'task' && view.id) wanted.add(view.id);
    if (view.name === 'tasks') {
      for (const id of listOrder) {
        const s = tasks.get(id);
        if (s && !FINAL.has(s.status) && wanted.size < MAX_SOCKETS) wanted.add(id);
      }
    }
    for (const [id, w] of Array.from(watchers)) if (!wanted.has(id)) w.stop();
    for (const id of wanted) watch(id);
  }

  function restartLive() {
    for (const w of Array.from(watchers.values())) w.stop();
    sockets.failures = 0;
    route(false);
  }

  // ------------------------------------------------------------------ shared pieces
  class Bar {
    constructor(labelledBy) {
      this.fill = h('div', { class: 'bar-fill' });
      this.el = h('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-labelledby': labelledBy }, this.fill);
      this.text = h('div', { class: 'bar-text' });
    }

    set(state) {
      this.el.classList.toggle('indeterminate', !!state.indeterminate);
      if (state.indeterminate) {
        this.el.removeAttribute('aria-valuenow');
        this.fill.style.width = '';
      } else {
        const p = Math.max(0, Math.min(100, state.percent || 0));
        this.el.setAttribute('aria-valuenow', String(Math.round(p * 10) / 10));
        this.fill.style.width = p + '%';
      }
      this.el.setAttribute('aria-valuetext', state.text);
      this.text.textContent = state.text;
    }
  }

  function pagesOf(done, total) {
    const unit = (n) => (n === 1 ? ' page' : ' pages');
    return total === null || total === undefined ? num(done) + unit(done) : num(done) + ' of ' + num(total) + unit(total);
  }

  function progressState(s) {
    const p = s.progress || {};
    const done = p.pages_done || 0;
    const total = p.pages_total;
    switch (s.status) {
      case 'queued':
        return { percent: 0, text: 'Queued, waiting for a free slot' };
      case 'completed':
        return { percent: 100, text: pagesOf(done, total ?? done) + ' · 100\u00a0%' };
      case 'running': {
        const phase = s.phase || 'fetching';
        if (phase !== 'fetching') {
          const label = (PHASE_LABEL[phase] || phase) + '…';
          return p.percent === null || p.percent === undefined
            ? { indeterminate: true, text: num(done) + ' pages fetched · ' + label }
            : { percent: p.percent, text: pagesOf(done, total) + ' · ' + label };
        }
        if (total === null || total === undefined || p.percent === null || p.percent === undefined) {
          return { indeterminate: true, text: num(done) + ' pages · total not known yet' };
        }
        if (s.cancel_requested) return { percent: p.percent, text: pagesOf(done, total) + ' · cancelling…' };
        return { percent: p.percent, text: pagesOf(done, total) + ' · ' + percentText(p.percent) };
      }
      default: {
        const verb = s.status === 'failed' ? 'Failed' : 'Cancelled';
        return total
          ? { percent: (100 * done) / total, text: verb + ' at ' + pagesOf(done, total) }
          : { percent: 0, text: verb + ' after ' + num(done) + ' pages' };
      }
    }
  }

  function rateText(s) {
    const p = s.progress || {};
    if (s.status === 'running') return (p.rate ?? 0).toFixed(1) + ' req/s';
    if (FINAL.has(s.status)) {
      const secs = elapsed(s);
      if (secs && p.requests) return (p.requests / secs).toFixed(1) + ' req/s avg';
    }
    return '—';
  }

  function etaText(s) {
    const p = s.progress || {};
    if (s.status === 'completed') return 'done';
    if (s.status !== 'running') return '—';
    return p.eta_seconds === null || p.eta_seconds === undefined ? 'unknown' : duration(p.eta_seconds);
  }

  function badge(s) {
    return h('span', { class: 'badge status-' + s.status }, STATUS_LABEL[s.status] || s.status);
  }

  const LINK_FRESH_MS = 40000;  // a signed link lives 60 s: renew it when older than this

  function downloadLink(s) {
    const r = s.result || {};
    if (s.expired) return h('span', { class: 'muted' }, 'Result expired');
    const a = h('a', { class: 'btn btn-primary download', href: downloadHref(s.task_id), download: r.filename || '' },
      h('span', { class: 'dl-label' }, 'Download'), ' ',
      h('span', { class: 'dl-file' }, h('span', { class: 'filename' }, r.filename || 'result'), ' ',
        h('span', { class: 'size' }, '(' + size(r.bytes) + ')')));
    // The href becomes a URL signed for this task (no header needed, no token in it) as soon as
    // the pointer or the keyboard reaches the link; a press before that fetches it, then follows it.
    let signedAt = 0;
    let pending = null;
    const fresh = () => signedAt && Date.now() - signedAt < LINK_FRESH_MS;
    const sign = () => {
      if (fresh()) return Promise.resolve(a.href);
      if (!pending) {
        pending = signedLink('download-link', s.task_id)
          .then((link) => { a.href = link.url; signedAt = Date.now(); return link.url; })
          .finally(() => { pending = null; });
      }
      return pending;
    };
    const warm = () => { sign().catch(() => { /* shown when the link is pressed */ }); };
    for (const type of ['pointerenter', 'focus', 'pointerdown', 'touchstart']) a.addEventListener(type, warm, { passive: true });
    const follow = (event) => {
      if (fresh()) return;  // the browser follows the signed href itself (Ctrl+click: a new tab)
      event.preventDefault();
      const newTab = event.ctrlKey || event.metaKey || event.shiftKey || event.button === 1;
      sign().then((url) => {
        if (newTab) window.open(url, '_blank', 'noopener');
        else a.click();  // the fresh href, with the download attribute
      }).catch((e) => {
        if (e.status !== 401) announce('Could not download ' + taskName(s) + ': ' + e.message);
      });
    };
    a.addEventListener('click', follow);
    a.addEventListener('auxclick', (event) => { if (event.button === 1) follow(event); });
    return a;
  }

  function cancelButton(s) {
    const requested = s.cancel_requested;
    const button = h('button', { type: 'button', class: 'btn btn-danger cancel', disabled: requested || null },
      h('span', { class: 'label' }, requested ? 'Cancelling…' : 'Cancel'),
      h('span', { class: 'sr-only' }, ' task ' + taskName(s)));
    button.addEventListener('click', async () => {
      button.disabled = true;
      button.querySelector('.label').textContent = 'Cancelling…';
      announce('Cancelling ' + taskName(s));
      try {
        accept(await api('DELETE', API + '/cancel/' + encodeURIComponent(s.task_id)), 'action');
      } catch (e) {
        if (e.status === 409 || e.status === 404) {
          try { accept(await api('GET', API + '/status/' + encodeURIComponent(s.task_id)), 'action'); } catch (ignored) { /* shown by the next poll */ }
        } else {
          button.disabled = false;
          button.querySelector('.label').textContent = 'Cancel';
          announce('Could not cancel ' + taskName(s) + ': ' + e.message);
        }
      }
    });
    return button;
  }

  function pageProblem(page) {
    const status = page.status !== null && page.status !== undefined ? 'HTTP ' + page.status : '';
    const error = page.error ? String(page.error) : '';
    if (!error) return status || 'failed';
    return status && !error.startsWith(status) ? status + ': ' + error : error;
  }

  function errorBox(s, pageLimit, detailLink) {
    const error = s.error;
    if (!error || !(s.status === 'failed' || s.status === 'cancelled')) return null;
    const box = h('div', { class: 'error-box' + (s.status === 'cancelled' ? ' cancelled' : '') });
    box.append(h('p', null, h('strong', null, s.status === 'failed' ? 'Error: ' : 'Cancelled: '),
      h('span', { class: 'error-message' }, error.message || '')));
    const pages = Array.isArray(error.pages) ? error.pages : [];
    if (pages.length) {
      const shown = pageLimit ? pages.slice(0, pageLimit) : pages;
      const list = h('ul', { class: 'failed-pages', 'aria-label': 'Failed pages' });
      for (const page of shown) {
        list.append(h('li', null,
          h('code', { class: 'failed-url' }, page.url || '(no URL)'), ' — ', pageProblem(page)));
      }
      box.append(h('p', { class: 'failed-title' }, h('strong', null, pages.length === 1 ? 'Failed page:' : pages.length + ' failed pages:')), list);
      if (pages.length > shown.length && detailLink) {
        box.append(h('p', null, h('a', { href: '#/task/' + s.task_id }, (pages.length - shown.length) + ' more in the task view')));
      }
    }
    return box;
  }

  function replaceIfChanged(holder, key, build) {
    if (holder.dataset.key === key) return false;
    const hadFocus = holder.contains(document.activeElement);
    clear(holder);
    const content = build();
    if (content) holder.append(...[].concat(content).filter(Boolean));
    holder.dataset.key = key;
    return hadFocus;
  }

  function actionsKey(s) {
    return [s.status, s.cancel_requested, s.expired, s.result ? s.result.filename + s.result.bytes : '', token].join('|');
  }

  function buildActions(s) {
    if (s.status === 'completed' && s.result) return [downloadLink(s)];
    if (s.status === 'running' || s.status === 'queued') return [cancelButton(s)];
    return [];
  }

  // ------------------------------------------------------------------ the list
  const rows = new Map();  // task_id -> TaskRow

  class TaskRow {
    constructor(id) {
      this.id = id;
      const nameId = 'name-' + id;
      this.link = h('a', { href: '#/task/' + id });
      this.badge = h('span');
      this.partial = h('span', { class: 'badge badge-partial', hidden: true }, 'partial');
      this.meta = h('div', { class: 'task-meta' });
      this.bar = new Bar(nameId);
      this.facts = {};
      const facts = h('dl', { class: 'facts' });
      for (const label of ['Rows', 'Rate', 'ETA', 'Started', 'Finished']) {
        const dd = h('dd');
        this.facts[label] = dd;
        facts.append(h('div', null, h('dt', null, label), dd));
      }
      this.actions = h('div', { class: 'task-actions' });
      this.errors = h('div', { class: 'task-errors' });
      this.el = h('li', { class: 'task', 'data-task-id': id },
        h('div', { class: 'task-main' },
          h('div', { class: 'task-title' }, h('h2', { class: 'task-name', id: nameId }, this.link), this.badge, this.partial),
          this.meta),
        h('div', { class: 'task-progress' }, this.bar.el, this.bar.text, facts),
        this.actions,
        this.errors);
    }

    update(s) {
      this.el.dataset.status = s.status;
      this.link.textContent = taskName(s);
      this.badge.className = 'badge status-' + s.status;
      this.badge.textContent = STATUS_LABEL[s.status] || s.status;
      this.partial.hidden = !s.partial;
      clear(this.meta).append(h('span', { class: 'mono' }, s.task_id), ' · created ', timeEl(s.created_at),
        s.schedule_id ? ' · scheduled' : '');
      this.bar.set(progressState(s));
      const p = s.progress || {};
      this.facts.Rows.textContent = num(s.result ? s.result.rows : p.rows);
      this.facts.Rate.textContent = rateText(s);
      this.facts.ETA.textContent = etaText(s);
      clear(this.facts.Started).append(timeEl(s.started_at));
      clear(this.facts.Finished).append(timeEl(s.finished_at));
      if (replaceIfChanged(this.actions, actionsKey(s), () => buildActions(s))) this.link.focus();
      this.errors.hidden = !s.error;
      replaceIfChanged(this.errors, JSON.stringify([s.status, s.error]), () => errorBox(s, 3, true));
    }
  }

  let listTimer = 0;
  let listBusy = false;

  async function refreshList() {
    window.clearTimeout(listTimer);
    if (view.name !== 'tasks') return;
    if (listBusy) return;
    listBusy = true;
    const state = $('list-state');
    try {
      if (document.visibilityState !== 'hidden' || !listOrder.length) {
        const data = await api('GET', API + '/tasks?limit=' + LIST_LIMIT);
        const ids = [];
        for (const s of data.tasks || []) {
          if (!TASK_ID.test(s.task_id || '')) continue;
          accept(s, 'list');
          ids.push(s.task_id);
        }
        listOrder = ids;
        renderList();
        state.textContent = '';
      }
    } catch (e) {
      state.textContent = e.status === 401 ? 'Waiting for the API token.' : 'Could not load the tasks: ' + e.message;
    } finally {
      listBusy = false;
    }
    if (view.name === 'tasks') {
      syncWatchers();
      listTimer = window.setTimeout(refreshList, LIST_EVERY_MS);
    }
  }

  function renderList() {
    const list = $('task-list');
    const keep = new Set(listOrder);
    for (const [id, row] of Array.from(rows)) {
      if (!keep.has(id)) { row.el.remove(); rows.delete(id); }
    }
    let cursor = list.firstElementChild;
    for (const id of listOrder) {
      let row = rows.get(id);
      if (!row) { row = new TaskRow(id); rows.set(id, row); }
      row.update(tasks.get(id));
      if (row.el === cursor) cursor = cursor.nextElementSibling;
      else list.insertBefore(row.el, cursor);  // only new or reordered rows move: focus stays put
    }
    $('tasks-empty').hidden = listOrder.length > 0;
  }

  // ------------------------------------------------------------------ one task
  let detail = null;

  class TaskDetail {
    constructor(id) {
      this.id = id;
      this.extraFor = null;
      const section = clear($('view-task'));
      this.section = section;
      this.heading = h('h1', { id: 'task-heading', tabindex: '-1' }, id);
      this.badge = h('span', { class: 'badge' });
      this.partial = h('span', { class: 'badge badge-partial', hidden: true }, 'partial');
      this.live = h('span', { class: 'muted live-state' });
      this.meta = h('p', { class: 'task-meta' });
      this.bar = new Bar('task-heading');
      this.actions = h('div', { class: 'detail-actions' });
      this.errors = h('div', { class: 'detail-errors' });
      this.grid = h('dl', { class: 'detail-grid' });
      this.gridCells = {};
      for (const label of ['Phase', 'Pages', 'Rows', 'Fetched', 'Requests', 'Retries', 'Rate', 'ETA',
        'Created', 'Started', 'Finished', 'Duration']) {
        const dd = h('dd');
        this.gridCells[label] = dd;
        this.grid.append(h('div', null, h('dt', null, label), dd));
      }
      this.sourcesBody = h('tbody');
      this.sourcesNote = h('p', { class: 'section-note' });
      this.result = h('div', { class: 'detail-result' });
      this.delivery = h('div', { class: 'detail-delivery' });
      this.manifest = h('div', { class: 'detail-manifest' });
      this.spec = h('div', { class: 'detail-spec' }, h('p', { class: 'muted' }, 'Loading the spec…'));
      section.append(
        h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, '← All tasks')),
        h('div', { class: 'view-head detail-head' }, this.heading, this.badge, this.partial, this.live),
        this.meta,
        h('div', { class: 'detail-progress' }, this.bar.el, this.bar.text),
        this.actions,
        this.errors,
        h('h2', null, 'Progress'), this.grid,
        h('h2', null, 'Sources'), this.sourcesNote,
        h('div', { class: 'table-wrap', role: 'region', 'aria-label': 'Sources', tabindex: '0' },
          h('table', { class: 'sources' },
            h('thead', null, h('tr', null,
              h('th', { scope: 'col' }, 'Source'), h('th', { scope: 'col' }, 'Progress'),
              h('th', { scope: 'col', class: 'num' }, 'Pages'), h('th', { scope: 'col', class: 'num' }, 'Rows'),
              h('th', { scope: 'col', class: 'num' }, 'Requests'), h('th', { scope: 'col', class: 'num' }, 'Retries'),
              h('th', { scope: 'col', class: 'num' }, 'Skipped pages'))),
            this.sourcesBody)),
        this.result,
        this.manifest,
        this.delivery,
        h('h2', null, 'Job spec'),
        h('p', { class: 'section-note' }, 'As submitted, with every secret shown as ***.'),
        this.spec);
    }

    showLive(mode) {
      const text = { connecting: 'connecting…', socket: 'live', poll: 'live (polling)', done: '' }[mode] ?? '';
      this.live.textContent = text ? '● ' + text : '';
      this.section.dataset.live = mode;
    }

    missing() {
      clear(this.section).append(
        h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, '← All tasks')),
        h('div', { class: 'view-head' }, h('h1', { id: 'task-heading', tabindex: '-1' }, 'No such task')),
        h('p', null, 'There is no task ', h('code', null, this.id), '. It may have been removed.'));
    }

    update(s, prev) {
      this.section.dataset.status = s.status;
      this.heading.textContent = taskName(s);
      document.title = taskName(s) + ' (' + (STATUS_LABEL[s.status] || s.status).toLowerCase() + ') · pageferry';
      this.badge.className = 'badge status-' + s.status;
      this.badge.textContent = STATUS_LABEL[s.status] || s.status;
      this.partial.hidden = !s.partial;
      clear(this.meta).append(h('span', { class: 'mono' }, s.task_id),
        s.schedule_id ? [' · from schedule ', h('span', { class: 'mono' }, s.schedule_id)] : '');
      this.bar.set(progressState(s));
      if (replaceIfChanged(this.actions, actionsKey(s), () => buildActions(s))) this.heading.focus();
      replaceIfChanged(this.errors, JSON.stringify([s.status, s.error]), () => errorBox(s, 0, false));

      const p = s.progress || {};
      const cells = this.gridCells;
      cells.Phase.textContent = s.status === 'running' ? (PHASE_LABEL[s.phase] || s.phase || '—') : '—';
      cells.Pages.textContent = pagesOf(p.pages_done || 0, p.pages_total);
      cells.Rows.textContent = num(s.result ? s.result.rows : p.rows);
      cells.Fetched.textContent = size(p.bytes);
      cells.Requests.textContent = num(p.requests);
      cells.Retries.textContent = num(p.retries);
      cells.Rate.textContent = rateText(s);
      cells.ETA.textContent = etaText(s);
      clear(cells.Created).append(timeEl(s.created_at));
      clear(cells.Started).append(timeEl(s.started_at));
      clear(cells.Finished).append(timeEl(s.finished_at));
      cells.Duration.textContent = duration(elapsed(s));

      this.renderSources(s);
      this.renderResult(s);
      this.renderDelivery(s);
      // the spec once; the manifest when the task has ended (read again at the change to final)
      if (this.extraFor === null || (FINAL.has(s.status) && this.extraFor !== s.status && this.extraFor !== 'error:' + s.status)) {
        this.loadExtra(s.status);
      }
    }

    renderSources(s) {
      const summary = (this.manifestData && this.manifestData.sources) || (s.summary && s.summary.sources) || [];
      const byName = new Map(summary.map((x) => [x.name, x]));
      const live = Array.isArray(s.sources) ? s.sources : [];
      const names = live.length ? live.map((x) => x.name) : summary.map((x) => x.name);
      const manifest = this.manifestData;
      const skippedIn = (name) => (manifest && Array.isArray(manifest.skipped_pages)
        ? manifest.skipped_pages.filter((x) => !x.source || x.source === name).length : undefined);
      const key = JSON.stringify([s.status, live, summary, !!manifest]);
      if (this.sourcesBody.dataset.key === key) return;
      this.sourcesBody.dataset.key = key;
      clear(this.sourcesBody);
      if (!names.length) {
        this.sourcesBody.append(h('tr', null, h('td', { colspan: 7, class: 'muted' }, s.status === 'queued' ? 'Not started yet.' : 'No progress reported yet.')));
      }
      for (const name of names) {
        const one = live.find((x) => x.name === name) || {};
        const done = byName.get(name) || {};
        const pagesDone = one.pages_done ?? done.pages ?? 0;
        const total = one.pages_total ?? (s.status === 'completed' ? (done.pages ?? pagesDone) : null);
        const bar = new Bar(null);
        bar.el.removeAttribute('aria-labelledby');
        bar.el.setAttribute('aria-label', 'Progress of source ' + name);
        const state = s.status === 'completed'
          ? { percent: 100, text: '100\u00a0%' }
          : total ? { percent: (100 * pagesDone) / total, text: percentText((100 * pagesDone) / total) }
            : s.status === 'running' ? { indeterminate: true, text: 'total unknown' } : { percent: 0, text: '—' };
        bar.set(state);
        this.sourcesBody.append(h('tr', null,
          h('th', { scope: 'row' }, name),
          h('td', null, bar.el, bar.text),
          h('td', { class: 'num' }, pagesOf(pagesDone, total)),
          h('td', { class: 'num' }, num(one.rows ?? done.records)),
          h('td', { class: 'num' }, num(done.requests)),
          h('td', { class: 'num' }, num(done.retries)),
          h('td', { class: 'num' }, num(done.skipped_pages ?? skippedIn(name)))));
      }
      this.sourcesNote.textContent = summary.length
        ? 'Requests, retries and skipped pages per source, as recorded when the task ended.'
        : 'Requests, retries and skipped pages per source are known once the task has finished; the totals are under Progress.';
    }

    renderResult(s) {
      const key = JSON.stringify([s.status, s.result, s.expired, s.partial, token]);
      if (this.result.dataset.key === key) return;
      this.result.dataset.key = key;
      clear(this.result);
      if (s.status !== 'completed' || !s.result) return;
      const r = s.result;
      this.result.append(h('h2', null, 'Result'),
        h('dl', { class: 'detail-grid' },
          h('div', null, h('dt', null, 'File'), h('dd', null, r.filename)),
          h('div', null, h('dt', null, 'Size'), h('dd', null, size(r.bytes))),
          h('div', null, h('dt', null, 'Rows'), h('dd', null, num(r.rows))),
          h('div', null, h('dt', null, 'Partial'), h('dd', null, s.partial ? 'yes, pages were skipped' : 'no')),
          h('div', { class: 'wide' }, h('dt', null, 'SHA-256'), h('dd', { class: 'hash' }, r.sha256 || '—'))));
    }

    renderDelivery(s) {
      const key = JSON.stringify([s.webhook, s.deliveries]);
      if (this.delivery.dataset.key === key) return;
      this.delivery.dataset.key = key;
      clear(this.delivery);
      if (!s.webhook && !(s.deliveries && s.deliveries.length)) return;
      const list = h('ul');
      if (s.webhook) {
        const w = s.webhook;
        list.append(h('li', null, 'Webhook: ', w.delivered ? 'delivered' : 'not delivered',
          w.attempts !== undefined ? ' after ' + w.attempts + ' attempt' + (w.attempts === 1 ? '' : 's') : '',
          w.error ? ' — ' + w.error : ''));
      }
      for (const d of s.deliveries || []) {
        list.append(h('li', null, h('code', null, d.target || '?'), ': ', d.ok ? 'delivered' : 'failed', d.error ? ' — ' + d.error : ''));
      }
      this.delivery.append(h('h2', null, 'Delivery'), list);
    }

    async loadExtra(forStatus) {
      this.extraFor = forStatus;
      let data;
      try {
        data = await api('GET', API + '/detail/' + encodeURIComponent(this.id));
      } catch (e) {
        if (detail !== this) return;
        clear(this.spec).append(h('p', { class: 'muted' }, e.status === 401 ? 'The spec needs the API token.' : 'Could not load the spec: ' + e.message));
        this.extraFor = 'error:' + forStatus;  // tried again when the status changes, not on every push
        return;
      }
      if (detail !== this) return;
      clear(this.spec).append(h('pre', { class: 'spec', tabindex: '0', 'aria-label': 'Job spec (JSON)' },
        h('code', null, JSON.stringify(data.spec, null, 2))));
      this.manifestData = data.manifest;
      this.renderManifest(data.manifest);
      const s = tasks.get(this.id);
      if (s) { this.sourcesBody.dataset.key = ''; this.renderSources(s); }
    }

    renderManifest(m) {
      clear(this.manifest);
      if (!m) return;
      const files = h('tbody');
      for (const f of m.files || []) {
        files.append(h('tr', null, h('th', { scope: 'row' }, f.name), h('td', { class: 'num' }, num(f.rows)),
          h('td', { class: 'num' }, size(f.bytes)), h('td', { class: 'hash' }, f.sha256 || '—')));
      }
      this.manifest.append(h('h2', null, 'Manifest'),
        h('p', { class: 'section-note' }, 'Started ', timeEl(m.started_at), ', finished ', timeEl(m.finished_at),
          m.partial ? '. Partial: some pages were skipped.' : '. Complete: no page was skipped.'),
        h('div', { class: 'table-wrap', role: 'region', 'aria-label': 'Files', tabindex: '0' },
          h('table', { class: 'files' },
            h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'File'), h('th', { scope: 'col', class: 'num' }, 'Rows'),
              h('th', { scope: 'col', class: 'num' }, 'Size'), h('th', { scope: 'col' }, 'SHA-256'))),
            files)));
      const skipped = m.skipped_pages || [];
      if (skipped.length) {
        const list = h('ul', { class: 'skipped' });
        for (const page of skipped) {
          list.append(h('li', null, page.source ? '[' + page.source + '] ' : '', h('code', null, page.url || '?'),
            ' — ', pageProblem(page)));
        }
        this.manifest.append(h('h3', null, skipped.length + ' skipped page' + (skipped.length === 1 ? '' : 's')), list);
      }
    }
  }

  async function openTask(id) {
    detail = new TaskDetail(id);
    const known = tasks.get(id);
    if (known) detail.update(known);
    try {
      const s = await api('GET', API + '/status/' + encodeURIComponent(id));
      if (detail && detail.id === id && !accept(s, 'load') && !known) detail.update(s);
    } catch (e) {
      if (!detail || detail.id !== id) return;
      if (e.status === 404) { detail.missing(); return; }
      if (e.status !== 401) showNotice([h('span', null, 'Could not load the task: ' + e.message)]);
    }
    if (view.name === 'task' && view.id === id) syncWatchers();  // a socket only when it is unfinished
  }

  // ------------------------------------------------------------------ the new-task form
  /** Where a dotted field path ("sources.0.pagination.size") is in the JSON text: the key's
      (or array element's) [start, end), or the closest enclosing one found. */
  function locate(text, path) {
    let i = 0;
    let best = null, bestDepth = -1;
    const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i += 1; };
    const string = () => {
      const start = i;
      i += 1;
      while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
      i += 1;
      return [start, i];
    };
    const value = (depth) => {
      ws();
      const start = i;
      const c = text[i];
      if (c === '{') {
        i += 1; ws();
        if (text[i] === '}') { i += 1; return [start, i]; }
        while (i < text.length) {
          ws();
          const keyRange = string();
          let key;
          try { key = JSON.parse(text.slice(keyRange[0], keyRange[1])); } catch (e) { key = null; }
          ws(); i += 1;  // the colon
          const match = depth < path.length && key === path[depth];
          if (match && depth > bestDepth) { best = keyRange; bestDepth = depth; }
          value(match ? depth + 1 : Infinity);
          ws();
          if (text[i] === ',') { i += 1; continue; }
          i += 1; break;
        }
        return [start, i];
      }
      if (c === '[') {
        i += 1; ws();
        if (text[i] === ']') { i += 1; return [start, i]; }
        let n = 0;
        while (i < text.length) {
          const match = depth < path.length && String(n) === path[depth];
          const range = value(match ? depth + 1 : Infinity);
          if (match && depth > bestDepth) { best = range; bestDepth = depth; }
          ws(); n += 1;
          if (text[i] === ',') { i += 1; continue; }
          i += 1; break;
        }
        return [start, i];
      }
      if (c === '"') return string();
      while (i < text.length && !' \t\n\r,]}'.includes(text[i])) i += 1;
      return [start, i];
    };
    try { value(0); } catch (e) { return null; }
    return best;
  }

  function selectInSpec(range) {
    const input = $('spec-input');
    input.focus();
    input.setSelectionRange(range[0], range[1]);
    const before = input.value.slice(0, range[0]).split('\n').length - 1;
    const lineHeight = parseFloat(getComputedStyle(input).lineHeight) || 20;
    input.scrollTop = Math.max(0, before * lineHeight - input.clientHeight / 3);
  }

  function clearErrors() {
    clear($('spec-errors'));
    $('spec-input').removeAttribute('aria-invalid');
    formStatus('', '');
  }

  function formStatus(text, kind) {
    const el = $('form-status');
    el.textContent = text;
    el.className = 'form-status' + (kind ? ' ' + kind : '');
  }

  function showErrors(details, summary) {
    const box = clear($('spec-errors'));
    const text = $('spec-input').value;
    const list = h('ul');
    for (const d of details) {
      const field = String(d.field || 'spec');
      const item = h('li', { class: 'field-error', 'data-field': field },
        h('code', { class: 'field-path' }, field),
        h('span', { class: 'field-message' }, d.message || 'invalid'));
      if (field !== 'spec') {
        const range = locate(text, field.split('.'));
        if (range) {
          item.append(h('button', { type: 'button', class: 'btn btn-quiet show-field', onclick: () => selectInSpec(range) },
            'Show in spec', h('span', { class: 'sr-only' }, ': ' + field)));
        }
      }
      list.append(item);
    }
    box.append(h('p', null, summary), list);
    $('spec-input').setAttribute('aria-invalid', 'true');
  }

  let formBusy = false;

  async function submitSpec(mode) {
    if (formBusy) return;
    clearErrors();
    const text = $('spec-input').value;
    if (!text.trim()) {
      showErrors([{ field: 'spec', message: 'paste a job spec (JSON) or load it from a file' }], 'The spec is empty.');
      formStatus('Nothing to ' + mode + ' yet.', 'bad');
      return;
    }
    let document_;
    try { document_ = JSON.parse(text); } catch (e) {
      showErrors([{ field: 'spec', message: 'not valid JSON: ' + e.message }], 'The spec is not valid JSON.');
      formStatus('Fix the JSON first.', 'bad');
      return;
    }
    if (!document_ || typeof document_ !== 'object' || Array.isArray(document_)) {
      showErrors([{ field: 'spec', message: 'must be a JSON object: {"sources": [{"url": "…"}], …}' }], 'The spec is not a JSON object.');
      formStatus('Fix the spec first.', 'bad');
      return;
    }
    const files = $('ids-files').files;
    let body = text;
    if (files && files.length) {
      body = new FormData();
      body.append('spec', text);
      for (const file of files) body.append('ids', file, file.name);
    }
    formBusy = true;
    for (const id of ['start-button', 'validate-button']) $(id).disabled = true;
    formStatus(mode === 'start' ? 'Starting…' : 'Validating…', '');
    try {
      const result = await api('POST', API + '/' + mode, body);
      if (mode === 'validate') {
        $('spec-input').setAttribute('aria-invalid', 'false');
        formStatus('The spec is valid.', 'ok');
      } else {
        formStatus('Started ' + result.task_id + '.', 'ok');
        announce('Task started');
        location.hash = '#/task/' + result.task_id;
      }
    } catch (e) {
      if (e.status === 401) {
        formStatus('The service needs an API token: enter it at the top, then try again.', 'bad');
      } else if (e.status === 0) {
        formStatus(e.message, 'bad');
      } else {
        const details = Array.isArray(e.body.details) && e.body.details.length
          ? e.body.details : [{ field: 'spec', message: e.body.message || e.message }];
        const n = details.length;
        showErrors(details, n === 1 ? 'The service found a problem in the spec:' : 'The service found ' + n + ' problems in the spec:');
        formStatus(mode === 'start' ? 'Not started: the spec is not valid.' : 'The spec is not valid.', 'bad');
      }
    } finally {
      formBusy = false;
      for (const id of ['start-button', 'validate-button']) $(id).disabled = false;
    }
  }

  function setUpForm() {
    $('new-form').addEventListener('submit', (event) => { event.preventDefault(); submitSpec('start'); });
    $('validate-button').addEventListener('click', () => submitSpec('validate'));
    $('example-button').addEventListener('click', () => {
      const input = $('spec-input');
      if (input.value.trim() && !window.confirm('Replace the spec in the field with an example?')) return;
      input.value = JSON.stringify(EXAMPLE_SPEC, null, 2);
      clearErrors();
      input.focus();
    });
    $('spec-file').addEventListener('change', async (event) => {
      const file = event.target.files && event.target.files[0];
      if (!file) return;
      try {
        $('spec-input').value = await file.text();
        clearErrors();
        formStatus('Loaded ' + file.name + '.', 'ok');
      } catch (e) {
        formStatus('Could not read ' + file.name + '.', 'bad');
      }
    });
  }

  // ------------------------------------------------------------------ views and routing
  const view = { name: '', id: null };

  function show(name) {
    for (const v of ['tasks', 'task', 'new']) $('view-' + v).hidden = v !== name;
    $('nav-tasks').toggleAttribute('aria-current', false);
    $('nav-new').toggleAttribute('aria-current', false);
    if (name === 'tasks') $('nav-tasks').setAttribute('aria-current', 'page');
    if (name === 'new') $('nav-new').setAttribute('aria-current', 'page');
  }

  function route(moveFocus) {
    const hash = location.hash || '#/';
    if (!hash.startsWith('#/')) return;
    const match = /^#\/task\/([^/?#]+)$/.exec(hash);
    window.clearTimeout(listTimer);
    if (match) {
      const id = decodeURIComponent(match[1]);
      view.name = 'task'; view.id = id;
      show('task');
      if (TASK_ID.test(id)) openTask(id);
      else { detail = new TaskDetail(id); detail.missing(); }
    } else if (hash === '#/new') {
      view.name = 'new'; view.id = null; detail = null;
      show('new');
      document.title = 'New task · pageferry';
    } else {
      view.name = 'tasks'; view.id = null; detail = null;
      show('tasks');
      document.title = 'Tasks · pageferry';
      refreshList();
    }
    if (view.name !== 'task') syncWatchers();  // the task view opens its socket once it knows the status
    else for (const [id, w] of Array.from(watchers)) if (id !== view.id) w.stop();
    if (moveFocus) {
      const heading = document.querySelector('#view-' + view.name + ' h1');
      if (heading) heading.focus();
    }
  }

  function setUpToken() {
    const input = $('token-input');
    input.value = token;
    if (token) tokenState('token set for this tab', 'ok');
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      authNeeded = false;
      hideNotice();
      $('token-form').classList.remove('attention');
      tokenState(token ? 'token saved for this tab' : 'no token', token ? 'ok' : '');
      restartLive();
    });
    $('token-clear').addEventListener('click', () => {
      input.value = '';
      setToken('');
      tokenState('no token', '');
      restartLive();
    });
  }

  function init() {
    setUpToken();
    setUpForm();
    $('skip-link').addEventListener('click', (event) => { event.preventDefault(); $('main').focus(); });
    window.addEventListener('hashchange', () => route(true));
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && view.name === 'tasks') refreshList();
    });
    route(false);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
