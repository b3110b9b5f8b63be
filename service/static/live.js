/* Live status of unfinished tasks: a websocket per watched task (opened through the URL that
   POST /ws-link signs), falling back to polling /status when the socket does not open within
   CONNECT_TIMEOUT_MS, errors or drops - with a note saying so - and trying the socket again
   with a growing pause while polling. An open socket is checked every HEARTBEAT_MS by one
   /status call, so a service that went away shows as offline, not as a silent "live". */
'use strict';

import { API, FINAL, RANK, TASK_ID, api, announce, connection, num, signedLink, STATUS_LABEL, taskName } from './core.js';

export const CONNECT_TIMEOUT_MS = 4000;
const POLL_EVERY_MS = 1500;
const RETRY_FIRST_MS = 2000;
const RETRY_MAX_MS = 60000;
const HEARTBEAT_MS = 15000;
const QUEUED_CHECK_MS = 3000;  // a queued task's place in the queue is not pushed: ask for it
const MAX_SOCKETS = 16;  // open websockets at most (each holds a server thread)

export const tasks = new Map();     // task_id -> latest status JSON
export const watchers = new Map();  // task_id -> Watch
const sockets = { worked: false, failures: 0 };
const listeners = new Set();
const forgetters = new Set();

/** `fn(status, previous)` for every accepted status; `onForget(fn)`: a task that is gone. */
export function onStatus(fn) { listeners.add(fn); }
export function onForget(fn) { forgetters.add(fn); }

/** Take a status JSON; `via` is 'socket' | 'poll' | 'list' | 'action' | 'load'. */
export function accept(s, via) {
  if (!s || typeof s !== 'object' || !TASK_ID.test(s.task_id || '')) return false;
  const id = s.task_id;
  const prev = tasks.get(id);
  if (prev && (RANK[s.status] ?? 0) < (RANK[prev.status] ?? 0)) return false;  // an older snapshot
  if (via === 'list') {
    const w = watchers.get(id);
    if (w && w.live) return false;  // the socket is fresher than the list
    if (prev && prev.events && !s.events) s = { ...s, events: prev.events, events_dropped: prev.events_dropped, throughput: prev.throughput };
  }
  if (prev && s.status === 'queued' && s.queue_position === undefined && prev.queue_position !== undefined) {
    s = { ...s, queue_position: prev.queue_position };  // pushes do not carry it: keep the last known
  }
  tasks.set(id, s);
  if (prev && prev.status !== s.status) {
    let message = taskName(s) + ': ' + (STATUS_LABEL[s.status] || s.status).toLowerCase();
    if (s.status === 'completed' && s.result) message += ', ' + num(s.result.rows) + ' rows';
    if (s.status === 'failed' && s.error) message += ': ' + s.error.message;
    announce(message);
  }
  for (const fn of listeners) fn(s, prev);
  return true;
}

export function forget(id) {
  tasks.delete(id);
  const w = watchers.get(id);
  if (w) w.stop();
  for (const fn of forgetters) fn(id);
}

function socketsUsable() {
  return typeof window.WebSocket === 'function' && (sockets.worked || sockets.failures < 3);
}

const REASONS = {
  timeout: 'the live connection did not open within ' + CONNECT_TIMEOUT_MS / 1000 + '\u00a0s',
  closed: 'the live connection dropped',
  refused: 'the live connection was refused',
  unavailable: 'live connections do not work here',
};

/** Live updates for one unfinished task. `mode`: connecting | socket | poll | offline | done. */
class Watch {
  constructor(id) {
    this.id = id;
    this.ws = null;
    this.pollTimer = 0;
    this.retryTimer = 0;
    this.connectTimer = 0;
    this.heartbeat = 0;
    this.retryDelay = RETRY_FIRST_MS;
    this.retryAt = 0;
    this.live = false;
    this.polling = false;
    this.mode = 'connecting';
    this.reason = '';
    this.checked = 0;
    this.stopped = false;
  }

  start() {
    if (socketsUsable()) this.openSocket();
    else this.fallback('unavailable');
    return this;
  }

  async openSocket() {
    window.clearTimeout(this.retryTimer);
    if (this.stopped || this.ws) return;
    if (!this.polling) this.setMode('connecting');
    let link;
    try { link = await signedLink('ws-link', this.id); } catch (e) {
      if (this.stopped) return;
      if (e.status === 404) { forget(this.id); return; }
      this.fallback(e.status === 0 ? 'closed' : 'refused');
      return;
    }
    if (this.stopped || this.ws) return;
    let ws;
    try { ws = new WebSocket(link.url); } catch (e) { sockets.failures += 1; this.fallback('unavailable'); return; }
    this.ws = ws;
    let delivered = false;
    const giveUp = (reason) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.live = false;
      window.clearTimeout(this.connectTimer);
      window.clearInterval(this.heartbeat);
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch (e) { /* not open yet */ }
      if (!delivered) sockets.failures += 1;
      if (this.stopped) return;
      const s = tasks.get(this.id);
      if (s && FINAL.has(s.status)) { this.stop(); return; }  // the normal end: final status, then close
      this.fallback(reason);
    };
    // An upgrade that is never answered leaves the socket CONNECTING for minutes: give up early.
    this.connectTimer = window.setTimeout(() => { if (!delivered) giveUp('timeout'); }, CONNECT_TIMEOUT_MS);
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message && message.error) {  // unknown task: one error message, then the close
        if (message.error === 'not_found') forget(this.id); else this.stop();
        return;
      }
      if (!delivered) {
        delivered = true;
        window.clearTimeout(this.connectTimer);
        sockets.worked = true;
        this.retryDelay = RETRY_FIRST_MS;
        this.stopPolling();
        this.checked = Date.now();
        this.heartbeat = window.setInterval(() => {
          const s = tasks.get(this.id);
          const due = s && s.status === 'queued' ? QUEUED_CHECK_MS : HEARTBEAT_MS;
          if (Date.now() - this.checked >= due - 100) this.check();
        }, QUEUED_CHECK_MS);
      }
      this.live = true;
      this.setMode('socket');
      accept(message, 'socket');
    };
    ws.onclose = () => giveUp(delivered ? 'closed' : 'refused');
  }

  /** An open socket says nothing while nothing changes: make sure the service is still there. */
  async check() {
    this.checked = Date.now();
    try {
      const s = await api('GET', API + '/status/' + encodeURIComponent(this.id));
      accept(s, 'poll');
    } catch (e) {
      if (e.status === 0 && this.ws) {
        const ws = this.ws;
        if (ws.onclose) ws.onclose();
      }
    }
  }

  /** Poll now and on, and try the socket again after a pause that doubles each time. */
  fallback(reason) {
    this.reason = reason;
    this.live = false;
    if (!this.polling) this.poll();
    else this.setMode(connection.online ? 'poll' : 'offline');
    if (typeof window.WebSocket === 'function' && !this.stopped) {
      this.retryAt = Date.now() + this.retryDelay;
      this.retryTimer = window.setTimeout(() => this.openSocket(), this.retryDelay);
      this.retryDelay = Math.min(RETRY_MAX_MS, this.retryDelay * 2);
    }
  }

  poll() {
    this.polling = true;
    this.setMode(connection.online ? 'poll' : 'offline');
    const tick = async () => {
      this.pollTimer = 0;
      if (this.stopped || !this.polling) return;
      try {
        const s = await api('GET', API + '/status/' + encodeURIComponent(this.id));
        if (this.stopped) return;
        accept(s, 'poll');
        if (FINAL.has(s.status)) { this.stop(); return; }
        if (this.polling) this.setMode('poll');
      } catch (e) {
        if (e.status === 404) { forget(this.id); return; }
        if (e.status === 0) this.setMode('offline');
      }
      if (!this.stopped && this.polling) this.pollTimer = window.setTimeout(tick, POLL_EVERY_MS);
    };
    tick();
  }

  stopPolling() {
    this.polling = false;
    window.clearTimeout(this.pollTimer);
  }

  stop() {
    this.stopped = true;
    this.stopPolling();
    window.clearTimeout(this.retryTimer);
    window.clearTimeout(this.connectTimer);
    window.clearInterval(this.heartbeat);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000); } catch (e) { /* already closing */ }
    }
    this.live = false;
    if (watchers.get(this.id) === this) watchers.delete(this.id);
    this.setMode('done');
  }

  setMode(mode) {
    this.mode = mode;
    for (const fn of modeListeners) fn(this);
  }

  /** Words for the mode, for the task view. */
  describe() {
    switch (this.mode) {
      case 'connecting': return { state: 'connecting…', note: '' };
      case 'socket': return { state: 'live', note: '' };
      case 'offline': return { state: 'offline', note: 'The service does not answer; the figures shown are the last ones received.' };
      case 'poll': {
        const retry = this.retryAt > Date.now() ? ' Trying the live connection again in ' + Math.max(1, Math.round((this.retryAt - Date.now()) / 1000)) + '\u00a0s.' : '';
        return { state: 'polling', note: 'Updates every ' + POLL_EVERY_MS / 1000 + '\u00a0s by polling: ' + (REASONS[this.reason] || 'the live connection is not available') + '.' + retry };
      }
      default: return { state: '', note: '' };
    }
  }
}

const modeListeners = new Set();
export function onMode(fn) { modeListeners.add(fn); }

export function watch(id) {
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

/** Keep exactly the watchers for `ids` (unfinished ones only, at most MAX_SOCKETS). */
export function keepWatching(ids) {
  const wanted = new Set();
  for (const id of ids) {
    const s = tasks.get(id);
    if ((!s || !FINAL.has(s.status)) && wanted.size < MAX_SOCKETS) wanted.add(id);
  }
  for (const [id, w] of Array.from(watchers)) if (!wanted.has(id)) w.stop();
  for (const id of wanted) watch(id);
}

export function restartAll() {
  for (const w of Array.from(watchers.values())) w.stop();
  sockets.failures = 0;
}

/** The list's note: how its rows are kept up to date (null while sockets work). */
export function pollingNote() {
  const modes = Array.from(watchers.values()).map((w) => w.mode);
  if (modes.includes('offline')) return 'The service does not answer: the list shows what was last received.';
  if (modes.includes('poll')) return 'Live updates by polling every ' + POLL_EVERY_MS / 1000 + '\u00a0s: the live connection is not available.';
  return null;
}
