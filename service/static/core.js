/* pageferry page: what every view uses - building the DOM (never from HTML text), formatting,
   the API token, calls to /api/export, notices, and whether the service answers at all.

   The token (when the service has API_TOKEN) goes only as `Authorization: Bearer`, never into a
   URL. It lives in this tab's sessionStorage; a tab opened later (a task opened in a new tab)
   asks the open tabs for it over a BroadcastChannel, so it works without typing it again.
   "Remember on this device" keeps it in localStorage instead, on purpose only. */
'use strict';

export const API = '/api/export';
export const FINAL = new Set(['completed', 'failed', 'cancelled']);
export const RANK = { queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };
export const STATUS_LABEL = { queued: 'Queued', running: 'Running', completed: 'Completed', failed: 'Failed', cancelled: 'Cancelled' };
export const PHASE_LABEL = { fetching: 'Fetching', merging: 'Merging', exporting: 'Exporting', delivering: 'Delivering' };
export const TASK_ID = /^task_[0-9a-f]{12}$/;
export const SCHEDULE_ID = /^sch_[0-9a-f]{12}$/;

export const $ = (id) => document.getElementById(id);

/** Events between the views: 'token' (the token changed), 'online' (the service answers again). */
export const bus = new EventTarget();
export function emit(name, detail) { bus.dispatchEvent(new CustomEvent(name, { detail })); }

// ------------------------------------------------------------------ DOM building (no innerHTML)
function build(el, attrs, children) {
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') el.setAttribute('class', value);
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

export function h(tag, attrs, ...children) { return build(document.createElement(tag), attrs, children); }

const SVG = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs, ...children) { return build(document.createElementNS(SVG, tag), attrs, children); }

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

/** Replace `holder`'s content when `key` changed; true when the focus was inside (to move it). */
export function replaceIfChanged(holder, key, buildContent) {
  if (holder.dataset.key === key) return false;
  const hadFocus = holder.contains(document.activeElement);
  clear(holder);
  const content = buildContent();
  if (content) holder.append(...[].concat(content).filter(Boolean));
  holder.dataset.key = key;
  return hadFocus;
}

// ------------------------------------------------------------------ formatting
const numberFormat = new Intl.NumberFormat();
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });

export function num(n) { return n === null || n === undefined ? '—' : numberFormat.format(n); }

export function size(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n, i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
  return (i === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + '\u00a0' + units[i];
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '—';
  let s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + '\u00a0s';
  const m = Math.floor(s / 60); s %= 60;
  if (m < 60) return m + '\u00a0min' + (s ? ' ' + s + '\u00a0s' : '');
  return Math.floor(m / 60) + '\u00a0h ' + (m % 60) + '\u00a0min';
}

export function percentText(p) {
  const value = Math.max(0, Math.min(100, p));
  return (value >= 10 || Number.isInteger(value) ? Math.floor(value) : value.toFixed(1)) + '\u00a0%';
}

export function parseTime(iso) { const d = iso ? new Date(iso) : null; return d && !isNaN(d) ? d : null; }

export function when(iso) {
  const d = parseTime(iso);
  if (!d) return '—';
  return (d.toDateString() === new Date().toDateString() ? timeFormat : dateTimeFormat).format(d);
}

export function fullTime(iso) { const d = parseTime(iso); return d ? dateTimeFormat.format(d) : '—'; }

export function timeEl(iso) {
  const d = parseTime(iso);
  if (!d) return document.createTextNode('—');
  return h('time', { datetime: iso, title: dateTimeFormat.format(d) }, when(iso));
}

export function elapsed(s) {
  const start = parseTime(s.started_at);
  if (!start) return null;
  const end = parseTime(s.finished_at) || new Date();
  return (end - start) / 1000;
}

export function taskName(s) { return (s && s.name) || (s && s.task_id) || 'task'; }

export function plural(n, word) { return num(n) + ' ' + word + (n === 1 ? '' : 's'); }

// ------------------------------------------------------------------ notices and announcements
export function announce(message) {
  const region = $('announcer');
  region.textContent = '';
  window.setTimeout(() => { region.textContent = message; }, 60);
}

export function showNotice(parts, kind) {
  const notice = $('notice');
  clear(notice).append(...parts);
  notice.className = 'notice' + (kind ? ' ' + kind : '');
  notice.hidden = false;
}

export function hideNotice() { const notice = $('notice'); notice.hidden = true; clear(notice); }

// ------------------------------------------------------------------ the token
const TOKEN_KEY = 'pageferry.apiToken';
export const auth = { token: '', needed: false, remembered: false };

function readToken() {
  try {
    const local = localStorage.getItem(TOKEN_KEY);
    if (local) { auth.remembered = true; return local; }
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch (e) { return ''; }
}
auth.token = readToken();

let channel = null;
try { channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel('pageferry-token') : null; } catch (e) { channel = null; }

export function setToken(value, remember) {
  auth.token = value;
  auth.remembered = !!(value && remember);
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
    if (auth.remembered) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
  } catch (e) { /* storage refused: the token lives as long as the page */ }
}

/** A tab without a token asks the others (same origin only); one that has it answers. While
    the question is open (ASK_WAIT_MS) a refused request does not ask the user yet: a tab opened
    from another one gets the token without a "token needed" flash. */
const ASK_WAIT_MS = 500;
let asking = false;
let refusedWhileAsking = false;

export function shareToken() {
  if (!channel) return;
  channel.onmessage = (event) => {
    const message = event.data || {};
    if (message.type === 'ask' && auth.token) channel.postMessage({ type: 'token', token: auth.token });
    else if (message.type === 'token' && !auth.token && typeof message.token === 'string' && message.token) {
      asking = false;
      setToken(message.token, false);
      $('token-input').value = message.token;
      tokenState('token taken from another tab', 'ok');
      emit('token');
    }
  };
  if (auth.token) return;
  asking = true;
  channel.postMessage({ type: 'ask' });
  window.setTimeout(() => {
    if (!asking) return;
    asking = false;
    if (refusedWhileAsking) needToken();
  }, ASK_WAIT_MS);
}

export function tokenState(text, kind) {
  const el = $('token-state');
  el.textContent = text;
  el.className = 'token-state' + (kind ? ' ' + kind : '');
}

function needToken() {
  if (asking) { refusedWhileAsking = true; return; }
  if (auth.needed) return;
  auth.needed = true;
  const text = auth.token
    ? 'The API token was not accepted. Enter the right token in the field at the top.'
    : 'This service needs an API token. Enter it in the field at the top (it is kept for this browser tab only).';
  const go = h('button', { type: 'button', class: 'btn btn-small', onclick: () => $('token-input').focus() }, 'Enter the token');
  showNotice([h('span', { text }), ' ', go]);
  $('token-form').classList.add('attention');
  tokenState(auth.token ? 'token refused' : 'token needed', 'bad');
}

function tokenAccepted() {
  if (!auth.needed) return;
  auth.needed = false;
  hideNotice();
  $('token-form').classList.remove('attention');
  tokenState(auth.token ? 'token accepted' : '', 'ok');
}

// ------------------------------------------------------------------ is the service there?
/** `online` turns false when a request gets no answer at all; a probe of /healthz (backing off
    up to PROBE_MAX_MS) turns it back, and the views then reload what they show. */
export const connection = { online: true, probeTimer: 0, delay: 0 };
const PROBE_FIRST_MS = 1000;
const PROBE_MAX_MS = 15000;

function showOffline() {
  const state = $('conn-state');
  state.hidden = false;
  state.textContent = '● offline';
  const seconds = Math.round(connection.delay / 1000);
  $('offline').hidden = false;
  $('offline-text').textContent = 'The service does not answer. Trying again in ' + seconds + '\u00a0s; what is shown may be out of date.';
}

export function serviceDown() {
  if (connection.online) {
    connection.online = false;
    connection.delay = PROBE_FIRST_MS;
    announce('The service does not answer.');
    emit('offline');
    probeSoon();
  }
  showOffline();
}

function probeSoon() {
  window.clearTimeout(connection.probeTimer);
  connection.probeTimer = window.setTimeout(probe, connection.delay);
}

export async function probe() {
  window.clearTimeout(connection.probeTimer);
  try {
    const response = await fetch('/healthz', { cache: 'no-store' });
    if (response.ok) { serviceUp(); return; }
  } catch (e) { /* still down */ }
  connection.delay = Math.min(PROBE_MAX_MS, connection.delay * 2);
  showOffline();
  probeSoon();
}

function serviceUp() {
  if (connection.online) return;
  connection.online = true;
  window.clearTimeout(connection.probeTimer);
  $('offline').hidden = true;
  $('conn-state').hidden = true;
  announce('The service answers again.');
  emit('online');
}

// ------------------------------------------------------------------ API calls
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || ('HTTP ' + status));
    this.status = status;
    this.body = body || { error: 'error', message: this.message, details: [] };
  }
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const sentToken = auth.token;
  if (sentToken) headers.Authorization = 'Bearer ' + sentToken;
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
    serviceDown();
    throw new ApiError(0, { error: 'network', message: 'The service does not answer.', details: [] });
  }
  serviceUp();
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    if (auth.token === sentToken) needToken();  // else a newer token is being tried already
    throw new ApiError(401, data);
  }
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    if (!data || !data.error) serviceDown();  // a proxy in front answered for a service that is gone
  }
  if (!response.ok) throw new ApiError(response.status, data);
  tokenAccepted();
  return data;
}

/** A URL signed for one task and route ('ws-link' | 'download-link'): {url, expires_at}. */
export function signedLink(kind, id) { return api('POST', API + '/' + kind + '/' + encodeURIComponent(id)); }

// ------------------------------------------------------------------ a confirmation in place (no dialog)
/** Replace `button` by a question with a confirm and a keep button; `onConfirm` runs on yes.
    Escape or "keep" puts the button back (and the focus on it). */
export function confirmInPlace(button, question, yesLabel, noLabel, onConfirm) {
  const holder = button.parentNode;
  const yes = h('button', { type: 'button', class: 'btn btn-danger btn-small confirm-yes' }, yesLabel);
  const no = h('button', { type: 'button', class: 'btn btn-small confirm-no' }, noLabel);
  const box = h('div', { class: 'confirm', role: 'group', 'aria-label': question },
    h('span', { class: 'confirm-question' }, question), yes, no);
  const restore = () => { box.replaceWith(button); button.focus(); };
  no.addEventListener('click', restore);
  box.addEventListener('keydown', (event) => { if (event.key === 'Escape') restore(); });
  yes.addEventListener('click', () => { box.replaceWith(button); onConfirm(); });
  if (holder) button.replaceWith(box);
  yes.focus();
  return box;
}
