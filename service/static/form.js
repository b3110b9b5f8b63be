/* The new-task form (#/new): a guided form over the first source of a job spec - URL, records
   path, pagination, auth by ${NAME} reference, rate limit, fan-out, columns, export format,
   delivery - with Preview (POST /preview: page 1's records in a table, its columns and types to
   pick and rename, the pagination it suggests filled in), and the JSON editor as "advanced",
   kept in step with the form both ways: the form edits the spec document and writes it to the
   JSON; a valid JSON edit fills the form; fields the form does not show are kept as they are.
   Start and Validate send the JSON text itself, so an error points at the right place. */
'use strict';

import { $, API, announce, api, clear, confirmInPlace, h, num } from './core.js';

const SECRET_REF = /^\$\{[A-Za-z_][A-Za-z0-9_]*\}$/;
const PAG_FIELDS = {
  none: [],
  page: ['param', 'size_param', 'size', 'total_pages', 'total_records'],
  offset: ['param', 'size_param', 'size', 'total_records'],
  cursor: ['param', 'next'],
  next_url: ['next'],
  link: [],
};
const PAG_INPUT = {
  param: 'f-pag-param', size_param: 'f-pag-size-param', size: 'f-pag-size', total_pages: 'f-pag-total-pages',
  total_records: 'f-pag-total-records', next: 'f-pag-next',
};
const PAG_NUMERIC = new Set(['size']);
const PAG_HINT = {
  none: 'One request: the first page is all there is.',
  page: 'Pages are asked for by number until a short or empty page, the total, or the page limit.',
  offset: 'Pages are asked for by record offset until a short or empty page, the total, or the page limit.',
  cursor: 'Each page names the cursor of the next one; it is sent back as a query parameter.',
  next_url: 'Each page holds the URL of the next one (absolute or relative).',
  link: 'Each answer has a Link header with rel="next" (GitHub style).',
};
const AUTH_FIELDS = {
  none: {}, other: {},
  bearer: { token: 'f-auth-token' },
  header: { name: 'f-auth-name', value: 'f-auth-value' },
  query: { name: 'f-auth-name', value: 'f-auth-value' },
  basic: { username: 'f-auth-username', password: 'f-auth-password' },
};
const CASTS = ['string', 'int', 'float', 'bool', 'date', 'datetime'];
const PREVIEW_COLUMNS = 12;

const state = {
  doc: { sources: [{}] },
  mode: 'form',
  settings: null,
  columns: [],             // [{source, detected, include, name, cast, original}]
  columnsFromSpec: false,  // the spec had `columns`: keep writing them
  preview: null,
  busy: false,
  jsonValid: true,
};

const val = (id) => $(id).value.trim();

function clone(value) { return JSON.parse(JSON.stringify(value)); }

function isObject(value) { return value !== null && typeof value === 'object' && !Array.isArray(value); }

/** Set `obj[key]`, or remove it when empty; a default value is only written when the key was there. */
function put(obj, key, value, dflt) {
  if (value === '' || value === undefined || value === null || (typeof value === 'number' && isNaN(value))) { delete obj[key]; return; }
  if (dflt !== undefined && value === dflt && !(key in obj)) return;
  obj[key] = value;
}

function number(id) {
  const text = val(id);
  if (text === '') return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;  // kept as typed: the service names the field
}

function firstSource(doc) {
  if (!Array.isArray(doc.sources) || !doc.sources.length) doc.sources = [{}];
  if (!isObject(doc.sources[0])) doc.sources[0] = {};
  return doc.sources[0];
}

// ------------------------------------------------------------------ form -> spec
function readForm(doc) {
  const d = isObject(doc) ? clone(doc) : {};
  put(d, 'name', val('f-name'));
  const src = firstSource(d);
  put(src, 'url', val('f-url'));
  put(src, 'records', val('f-records'));
  put(src, 'format', val('f-format'), 'json');

  const type = val('f-pag-type');
  if (type === 'none') {
    if (isObject(src.pagination) && src.pagination.type && src.pagination.type !== 'none') delete src.pagination;
  } else {
    const pag = isObject(src.pagination) ? src.pagination : {};
    pag.type = type;
    for (const key of Object.keys(PAG_INPUT)) {
      if (PAG_FIELDS[type].includes(key)) put(pag, key, PAG_NUMERIC.has(key) ? number(PAG_INPUT[key]) : val(PAG_INPUT[key]));
      else delete pag[key];
    }
    if (type !== 'page' && type !== 'offset') delete pag.start;
    src.pagination = pag;
  }
  put(src, 'max_pages', number('f-max-pages'));

  const authType = val('f-auth-type');
  if (authType === 'none') delete src.auth;
  else if (authType !== 'other') {
    const auth = { type: authType };
    for (const [key, id] of Object.entries(AUTH_FIELDS[authType])) put(auth, key, $(id).value.trim());
    src.auth = auth;
  }

  const requests = number('f-rate');
  const per = number('f-rate-per');
  if (requests === undefined) delete d.rate_limit;
  else if ((per === undefined || per === 1) && !(isObject(d.rate_limit) && Object.keys(d.rate_limit).some((k) => k !== 'requests' && k !== 'per'))) d.rate_limit = requests;
  else d.rate_limit = { ...(isObject(d.rate_limit) ? d.rate_limit : {}), requests, per: per === undefined ? 1 : per };
  put(d, 'concurrency', number('f-concurrency'));

  const fan = val('f-fan-type');
  if (fan !== 'other') {
    const param = val('f-fan-param');
    if (fan === 'values') {
      src.ids = { values: parseValues($('f-fan-values').value) };
      put(src.ids, 'param', param);
    } else if (fan === 'range') {
      src.ids = { range: { start: number('f-fan-start'), end: number('f-fan-end') } };
      put(src.ids, 'param', param);
    } else delete src.ids;
    if (fan === 'windows') {
      const windows = { start: val('f-win-start'), end: val('f-win-end'), days: number('f-win-days') };
      put(windows, 'start_param', val('f-win-start-param'));
      put(windows, 'end_param', val('f-win-end-param'));
      for (const key of ['start', 'end', 'days']) put(windows, key, windows[key]);
      src.windows = windows;
    } else delete src.windows;
  }

  writeColumns(d);

  const exp = isObject(d.export) ? d.export : {};
  put(exp, 'format', val('f-export-format'), 'csv');
  put(exp, 'filename', val('f-export-filename'));
  if (Object.keys(exp).length) d.export = exp; else delete d.export;
  put(d, 'on_error', val('f-on-error'), 'fail');

  const hook = val('f-webhook-url');
  if (!hook) delete d.webhook;
  else {
    d.webhook = { ...(isObject(d.webhook) ? d.webhook : {}), url: hook };
    put(d.webhook, 'secret', val('f-webhook-secret'));
  }
  if (deliveryManaged(d)) {
    const s3 = val('f-s3-url');
    if (!s3) delete d.deliver;
    else {
      const target = { ...((d.deliver && d.deliver[0]) || {}), type: 's3', url: s3 };
      put(target, 'endpoint_url', val('f-s3-endpoint'));
      d.deliver = [target];
    }
  }
  return d;
}

function parseValues(text) {
  const parts = text.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);
  return parts.map((x) => (/^-?\d+$/.test(x) && Math.abs(Number(x)) < 2 ** 53 ? Number(x) : x));
}

function deliveryManaged(d) {
  return d.deliver === undefined || (Array.isArray(d.deliver) && (d.deliver.length === 0 || (d.deliver.length === 1 && isObject(d.deliver[0]) && d.deliver[0].type === 's3')));
}

// ------------------------------------------------------------------ spec -> form
function setValue(id, value) {
  const el = $(id);
  const text = value === undefined || value === null ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value);
  if (el.value !== text) el.value = text;
}

function fillForm(doc) {
  const d = isObject(doc) ? doc : {};
  const sources = Array.isArray(d.sources) ? d.sources : [];
  const src = isObject(sources[0]) ? sources[0] : {};
  setValue('f-name', d.name);
  setValue('f-url', src.url);
  setValue('f-records', src.records);
  setValue('f-format', ['json', 'ndjson', 'csv'].includes(src.format) ? src.format : 'json');
  const note = $('sources-note');
  const params = isObject(src.params) ? Object.keys(src.params) : [];
  const parts = [];
  if (sources.length > 1) parts.push('This spec has ' + sources.length + ' sources: the form shows the first; edit the others as JSON.');
  if (params.length) parts.push('The URL also gets the query parameters ' + params.join(', ') + ' (in the JSON, under params).');
  note.hidden = !parts.length;
  note.textContent = parts.join(' ');

  const pag = isObject(src.pagination) ? src.pagination : {};
  const type = PAG_FIELDS[pag.type] ? pag.type : 'none';
  setValue('f-pag-type', type);
  for (const [key, id] of Object.entries(PAG_INPUT)) setValue(id, PAG_FIELDS[type].includes(key) ? pag[key] : '');
  setValue('f-max-pages', src.max_pages);

  const auth = isObject(src.auth) ? src.auth : null;
  const authType = !auth ? 'none' : AUTH_FIELDS[auth.type] && auth.type !== 'other' && auth.type !== 'none' ? auth.type : 'other';
  $('f-auth-type').querySelector('option[value="other"]').hidden = authType !== 'other';
  setValue('f-auth-type', authType);
  for (const id of ['f-auth-token', 'f-auth-name', 'f-auth-value', 'f-auth-username', 'f-auth-password']) setValue(id, '');
  for (const [key, id] of Object.entries(AUTH_FIELDS[authType] || {})) setValue(id, auth[key]);

  if (typeof d.rate_limit === 'number') { setValue('f-rate', d.rate_limit); setValue('f-rate-per', ''); }
  else if (isObject(d.rate_limit)) { setValue('f-rate', d.rate_limit.requests); setValue('f-rate-per', d.rate_limit.per === 1 ? '' : d.rate_limit.per); }
  else { setValue('f-rate', ''); setValue('f-rate-per', ''); }
  setValue('f-concurrency', d.concurrency);

  const ids = isObject(src.ids) ? src.ids : null;
  const windows = isObject(src.windows) ? src.windows : null;
  let fan = 'none';
  if (ids && (ids.file || ids.from || (ids.values && ids.range))) fan = 'other';
  else if (ids && Array.isArray(ids.values)) fan = 'values';
  else if (ids && isObject(ids.range)) fan = 'range';
  else if (ids) fan = 'other';
  else if (windows) fan = 'windows';
  $('f-fan-type').querySelector('option[value="other"]').hidden = fan !== 'other';
  setValue('f-fan-type', fan);
  setValue('f-fan-values', fan === 'values' ? ids.values.join(', ') : '');
  setValue('f-fan-start', fan === 'range' ? ids.range.start : '');
  setValue('f-fan-end', fan === 'range' ? ids.range.end : '');
  setValue('f-fan-param', (fan === 'values' || fan === 'range') ? ids.param : '');
  for (const [key, id] of [['start', 'f-win-start'], ['end', 'f-win-end'], ['days', 'f-win-days'], ['start_param', 'f-win-start-param'], ['end_param', 'f-win-end-param']]) {
    setValue(id, windows ? windows[key] : '');
  }

  readColumns(d);

  const exp = isObject(d.export) ? d.export : {};
  setValue('f-export-format', exp.format || 'csv');
  setValue('f-export-filename', exp.filename);
  setValue('f-on-error', d.on_error === 'skip' ? 'skip' : 'fail');
  const hook = isObject(d.webhook) ? d.webhook : {};
  setValue('f-webhook-url', hook.url);
  setValue('f-webhook-secret', hook.secret);
  const managed = deliveryManaged(d);
  const s3 = managed && Array.isArray(d.deliver) && d.deliver[0] ? d.deliver[0] : {};
  setValue('f-s3-url', s3.url);
  setValue('f-s3-endpoint', s3.endpoint_url);
  for (const id of ['f-s3-url', 'f-s3-endpoint']) $(id).disabled = !managed;
  const deliverNote = $('deliver-note');
  deliverNote.hidden = managed;
  deliverNote.textContent = managed ? '' : 'This spec delivers to ' + d.deliver.length + ' targets: edit them as JSON.';
  showDependent();
}

/** Show the fields that apply to the chosen pagination, auth and fan-out. */
function showDependent() {
  const pag = val('f-pag-type');
  const auth = val('f-auth-type');
  const fan = val('f-fan-type');
  for (const el of document.querySelectorAll('#form-panel [data-for]')) el.hidden = !el.dataset.for.split(' ').includes(pag);
  for (const el of document.querySelectorAll('#form-panel [data-auth]')) el.hidden = !el.dataset.auth.split(' ').includes(auth);
  for (const el of document.querySelectorAll('#form-panel [data-fan]')) el.hidden = !el.dataset.fan.split(' ').includes(fan);
  $('f-pag-param-label').textContent = pag === 'offset' ? 'Offset parameter' : pag === 'cursor' ? 'Cursor parameter' : 'Page parameter';
  $('f-pag-param').placeholder = pag === 'offset' ? 'offset' : pag === 'cursor' ? 'cursor' : 'page';
  $('f-pag-next-label').textContent = pag === 'next_url' ? 'Next URL path' : 'Next cursor path';
  $('f-pag-next').placeholder = pag === 'next_url' ? 'links.next' : 'meta.next_cursor';
  $('f-pag-size-param').placeholder = pag === 'offset' ? 'limit' : 'per_page';
  $('pag-hint').textContent = PAG_HINT[pag] || '';
  $('f-auth-name-label').textContent = auth === 'query' ? 'Query parameter name' : 'Header name';
}

// ------------------------------------------------------------------ columns
function readColumns(d) {
  const given = Array.isArray(d.columns) ? d.columns.filter(isObject) : null;
  const detected = new Map(state.columns.map((c) => [c.source, c.detected]));
  if (given) {
    state.columnsFromSpec = true;
    const seen = new Set();
    const cols = given.map((c) => {
      const source = c.source || c.name;
      seen.add(source);
      return { source, detected: detected.get(source) || null, include: true, name: c.name || '', cast: c.type || '', original: c };
    });
    for (const c of state.columns) if (!seen.has(c.source)) cols.push({ ...c, include: false, original: null });
    state.columns = cols;
  } else {
    state.columnsFromSpec = false;
    state.columns = state.columns.map((c) => ({ ...c, include: true, name: c.source, cast: '', original: null }));
  }
  renderColumns();
}

function writeColumns(d) {
  const touched = state.columns.some((c) => !c.include || (c.name && c.name !== c.source) || c.cast);
  if (!state.columnsFromSpec && !touched) { delete d.columns; return; }
  if (!state.columns.length) return;  // nothing known to pick from: `columns` stays as written
  d.columns = state.columns.filter((c) => c.include).map((c) => {
    const column = { ...(c.original || {}), name: c.name || c.source };
    if (c.source && c.source !== column.name) column.source = c.source;
    else if (!(c.original && c.original.source)) delete column.source;
    if (c.cast) column.type = c.cast; else delete column.type;
    return column;
  });
}

function renderColumns() {
  const holder = clear($('columns-picker'));
  if (!state.columns.length) return;
  const body = h('tbody');
  state.columns.forEach((c, i) => {
    const include = h('input', { type: 'checkbox', id: 'col-include-' + i, 'aria-label': 'Export ' + c.source });
    include.checked = c.include;
    const name = h('input', { type: 'text', id: 'col-name-' + i, class: 'col-name', 'aria-label': 'Name in the export for ' + c.source, spellcheck: 'false', autocomplete: 'off' });
    name.value = c.name || c.source;
    const cast = h('select', { id: 'col-cast-' + i, class: 'col-cast', 'aria-label': 'Type of ' + c.source },
      h('option', { value: '' }, c.detected ? 'as detected (' + c.detected + ')' : 'as it comes'),
      CASTS.map((t) => h('option', { value: t }, t)));
    cast.value = c.cast || '';
    include.addEventListener('change', () => { c.include = include.checked; name.disabled = cast.disabled = !c.include; columnsChanged(); });
    name.addEventListener('input', () => { c.name = name.value.trim(); columnsChanged(); });
    cast.addEventListener('change', () => { c.cast = cast.value; columnsChanged(); });
    name.disabled = cast.disabled = !c.include;
    body.append(h('tr', { 'data-column': c.source },
      h('td', { class: 'pick', 'data-label': 'Export' }, include),
      h('th', { scope: 'row', 'data-label': 'Field' }, h('code', null, c.source), c.detected ? h('span', { class: 'detected-inline muted' }, ' ' + c.detected) : null),
      h('td', { 'data-label': 'Detected' }, c.detected || '—'),
      h('td', { 'data-label': 'Name in the export' }, name),
      h('td', { 'data-label': 'Cast to' }, cast)));
  });
  const all = h('button', { type: 'button', class: 'btn btn-small btn-quiet', id: 'columns-all' }, 'Pick all');
  const none = h('button', { type: 'button', class: 'btn btn-small btn-quiet', id: 'columns-none' }, 'Pick none');
  all.addEventListener('click', () => { for (const c of state.columns) c.include = true; renderColumns(); columnsChanged(); });
  none.addEventListener('click', () => { for (const c of state.columns) c.include = false; renderColumns(); columnsChanged(); });
  const picked = state.columns.filter((c) => c.include).length;
  holder.append(
    h('div', { class: 'actions columns-tools' }, all, none, h('span', { class: 'muted', id: 'columns-count' }, num(picked) + ' of ' + num(state.columns.length) + ' columns picked')),
    h('div', { class: 'table-wrap', role: 'region', 'aria-label': 'Columns', tabindex: '0' },
      h('table', { class: 'columns stack' },
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Export'), h('th', { scope: 'col' }, 'Field'),
          h('th', { scope: 'col' }, 'Detected'), h('th', { scope: 'col' }, 'Name in the export'), h('th', { scope: 'col' }, 'Cast to'))),
        body)));
}

function columnsChanged() {
  const count = $('columns-count');
  if (count) count.textContent = num(state.columns.filter((c) => c.include).length) + ' of ' + num(state.columns.length) + ' columns picked';
  formChanged();
}

/** Columns found by a preview: kept picks stay, new ones come picked unless the spec lists columns. */
function mergeDetected(columns) {
  const known = new Map(state.columns.map((c) => [c.source, c]));
  const next = [];
  for (const col of columns) {
    const have = known.get(col.name);
    if (have) { have.detected = col.type; next.push(have); known.delete(col.name); }
    else next.push({ source: col.name, detected: col.type, include: !state.columnsFromSpec, name: col.name, cast: '', original: null });
  }
  for (const rest of known.values()) next.push(rest);  // listed in the spec, not on page 1
  state.columns = next;
  renderColumns();
}

// ------------------------------------------------------------------ keeping the two in step
function writeJson() {
  $('spec-input').value = JSON.stringify(state.doc, null, 2);
  state.jsonValid = true;
  jsonState('', '');
}

function jsonState(text, kind) {
  const el = $('json-state');
  el.textContent = text;
  el.className = 'hint' + (kind ? ' ' + kind : '');
}

function formChanged() {
  state.doc = readForm(state.doc);
  writeJson();
}

function jsonChanged() {
  const text = $('spec-input').value;
  let parsed;
  try { parsed = JSON.parse(text); } catch (e) {
    state.jsonValid = !text.trim();
    jsonState(text.trim() ? 'Not valid JSON yet (' + e.message + '): the form keeps the last valid spec.' : '', text.trim() ? 'bad' : '');
    return;
  }
  if (!isObject(parsed)) {
    state.jsonValid = false;
    jsonState('A job spec is a JSON object: the form keeps the last valid spec.', 'bad');
    return;
  }
  state.jsonValid = true;
  state.doc = parsed;
  fillForm(parsed);
  jsonState('The form follows this JSON.', 'ok');
}

export function setDoc(doc) {
  state.doc = isObject(doc) ? clone(doc) : { sources: [{}] };
  fillForm(state.doc);
  writeJson();
}

function setMode(mode) {
  if (mode === 'form' && !state.jsonValid) {
    formStatus('Fix the JSON first: the form shows the last valid spec.', 'bad');
    $('spec-input').focus();
    return;
  }
  state.mode = mode;
  $('form-panel').hidden = mode !== 'form';
  $('json-panel').hidden = mode !== 'json';
  $('mode-form').setAttribute('aria-pressed', String(mode === 'form'));
  $('mode-json').setAttribute('aria-pressed', String(mode === 'json'));
}

// ------------------------------------------------------------------ errors next to their fields
const FIELD_INPUTS = [
  ['sources.0.url', 'f-url'], ['sources.0.records', 'f-records'], ['sources.0.format', 'f-format'],
  ['sources.0.pagination.type', 'f-pag-type'], ['sources.0.pagination.param', 'f-pag-param'],
  ['sources.0.pagination.size_param', 'f-pag-size-param'], ['sources.0.pagination.size', 'f-pag-size'],
  ['sources.0.pagination.total_pages', 'f-pag-total-pages'], ['sources.0.pagination.total_records', 'f-pag-total-records'],
  ['sources.0.pagination.next', 'f-pag-next'], ['sources.0.pagination', 'f-pag-type'], ['sources.0.max_pages', 'f-max-pages'],
  ['sources.0.auth.token', 'f-auth-token'], ['sources.0.auth.name', 'f-auth-name'], ['sources.0.auth.value', 'f-auth-value'],
  ['sources.0.auth.username', 'f-auth-username'], ['sources.0.auth.password', 'f-auth-password'], ['sources.0.auth', 'f-auth-type'],
  ['sources.0.ids.values', 'f-fan-values'], ['sources.0.ids.range.start', 'f-fan-start'], ['sources.0.ids.range.end', 'f-fan-end'],
  ['sources.0.ids.range', 'f-fan-start'], ['sources.0.ids.param', 'f-fan-param'], ['sources.0.ids', 'f-fan-type'],
  ['sources.0.windows.start_param', 'f-win-start-param'], ['sources.0.windows.end_param', 'f-win-end-param'],
  ['sources.0.windows.start', 'f-win-start'], ['sources.0.windows.end', 'f-win-end'], ['sources.0.windows.days', 'f-win-days'],
  ['sources.0.windows', 'f-fan-type'], ['sources.0', 'f-url'], ['sources', 'f-url'],
  ['rate_limit.per', 'f-rate-per'], ['rate_limit', 'f-rate'], ['concurrency', 'f-concurrency'],
  ['export.format', 'f-export-format'], ['export.filename', 'f-export-filename'], ['export', 'f-export-format'],
  ['on_error', 'f-on-error'], ['webhook.secret', 'f-webhook-secret'], ['webhook', 'f-webhook-url'],
  ['deliver.0.endpoint_url', 'f-s3-endpoint'], ['deliver', 'f-s3-url'], ['name', 'f-name'], ['columns', 'columns-picker'],
];

function inputFor(field) {
  for (const [prefix, id] of FIELD_INPUTS) {
    if (field === prefix || field.startsWith(prefix + '.')) {
      const el = $(id);
      return el && !el.closest('[hidden]') ? el : null;
    }
  }
  return null;
}

function clearFieldErrors() {
  for (const el of document.querySelectorAll('#form-panel .input-error')) el.remove();
  for (const el of document.querySelectorAll('#form-panel [aria-invalid="true"]')) {
    el.removeAttribute('aria-invalid');
    const described = (el.getAttribute('aria-describedby') || '').split(' ').filter((x) => x && !x.startsWith('err-'));
    if (described.length) el.setAttribute('aria-describedby', described.join(' ')); else el.removeAttribute('aria-describedby');
  }
}

function markField(el, message) {
  const id = 'err-' + el.id;
  let note = $(id);
  if (!note) {
    note = h('p', { class: 'input-error', id });
    el.insertAdjacentElement('afterend', note);
  }
  note.textContent = message;
  el.setAttribute('aria-invalid', 'true');
  const described = (el.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
  if (!described.includes(id)) el.setAttribute('aria-describedby', described.concat(id).join(' '));
}

/** Where a dotted field path is in the JSON text: the key's (or element's) [start, end). */
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
        ws(); i += 1;
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
  setMode('json');
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
  clearFieldErrors();
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
  clearFieldErrors();
  let first = null;
  for (const d of details) {
    const field = String(d.field || 'spec');
    const message = d.message || 'invalid';
    const item = h('li', { class: 'field-error', 'data-field': field },
      h('code', { class: 'field-path' }, field),
      h('span', { class: 'field-message' }, message));
    const input = field !== 'spec' ? inputFor(field) : null;
    if (input && state.mode === 'form') {
      markField(input, message);
      first = first || input;
      item.append(h('button', { type: 'button', class: 'btn btn-quiet show-in-form', onclick: () => { setMode('form'); input.focus(); } },
        'Show in form', h('span', { class: 'sr-only' }, ': ' + field)));
    }
    if (field !== 'spec') {
      const range = locate(text, field.split('.'));
      if (range) {
        const button = h('button', { type: 'button', class: 'btn btn-quiet show-field', onclick: () => selectInSpec(range) },
          'Show in spec', h('span', { class: 'sr-only' }, ': ' + field));
        const inForm = item.querySelector('.show-in-form');
        if (inForm) inForm.before(button); else item.append(button);
      }
    }
    list.append(item);
  }
  box.append(h('p', null, summary), list);
  $('spec-input').setAttribute('aria-invalid', 'true');
  return first;
}

/** What the form checks before sending: a URL, and secrets only as ${NAME} references. */
function localProblems(forPreview) {
  if (state.mode !== 'form') return [];
  const problems = [];
  if (!val('f-url')) problems.push({ field: 'sources.0.url', message: 'give the URL of the first page' });
  if (forPreview) return problems;
  const auth = val('f-auth-type');
  for (const [key, id] of Object.entries(AUTH_FIELDS[auth] || {})) {
    const value = $(id).value.trim();
    if (!$(id).classList.contains('secret-ref')) continue;
    if (!value) problems.push({ field: 'sources.0.auth.' + key, message: 'write a ${NAME} reference to the secret' });
    else if (value.includes('***')) problems.push({ field: 'sources.0.auth.' + key, message: 'the secret was masked (***): write a ${NAME} reference instead' });
    else if (!SECRET_REF.test(value)) problems.push({ field: 'sources.0.auth.' + key, message: 'write a ${NAME} reference (an environment variable of the service), not the secret itself' });
  }
  const secret = val('f-webhook-secret');
  if (secret && !SECRET_REF.test(secret)) problems.push({ field: 'webhook.secret', message: 'write a ${NAME} reference, not the secret itself' });
  return problems;
}

// ------------------------------------------------------------------ validate and start
async function submitSpec(mode) {
  if (state.busy) return;
  clearErrors();
  const text = $('spec-input').value;
  if (!text.trim()) {
    const input = state.mode === 'form' ? null : $('spec-input');
    showErrors([{ field: state.mode === 'form' ? 'sources.0.url' : 'spec', message: state.mode === 'form' ? 'give the URL of the first page' : 'paste a job spec (JSON) or load it from a file' }], 'The spec is empty.');
    formStatus('Nothing to ' + mode + ' yet.', 'bad');
    if (input) input.focus();
    return;
  }
  let document_;
  try { document_ = JSON.parse(text); } catch (e) {
    showErrors([{ field: 'spec', message: 'not valid JSON: ' + e.message }], 'The spec is not valid JSON.');
    formStatus('Fix the JSON first.', 'bad');
    return;
  }
  if (!isObject(document_)) {
    showErrors([{ field: 'spec', message: 'must be a JSON object: {"sources": [{"url": "…"}], …}' }], 'The spec is not a JSON object.');
    formStatus('Fix the spec first.', 'bad');
    return;
  }
  const local = localProblems(false);
  if (local.length) {
    const first = showErrors(local, local.length === 1 ? 'One field needs attention:' : local.length + ' fields need attention:');
    formStatus(mode === 'start' ? 'Not started yet.' : 'Not valid yet.', 'bad');
    if (first) first.focus();
    return;
  }
  const files = $('ids-files').files;
  let body = text;
  if (files && files.length) {
    body = new FormData();
    body.append('spec', text);
    for (const file of files) body.append('ids', file, file.name);
  }
  setBusy(true);
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
    if (e.status === 401) formStatus('The service needs an API token: enter it at the top, then try again.', 'bad');
    else if (e.status === 0) formStatus(e.message, 'bad');
    else {
      const details = Array.isArray(e.body.details) && e.body.details.length ? e.body.details : [{ field: 'spec', message: e.body.message || e.message }];
      const n = details.length;
      const first = showErrors(details, n === 1 ? 'The service found a problem in the spec:' : 'The service found ' + n + ' problems in the spec:');
      formStatus(mode === 'start' ? 'Not started: the spec is not valid.' : 'The spec is not valid.', 'bad');
      if (first) first.focus();
    }
  } finally {
    setBusy(false);
  }
}

function setBusy(busy) {
  state.busy = busy;
  for (const id of ['start-button', 'validate-button', 'preview-button']) $(id).disabled = busy;
}

// ------------------------------------------------------------------ preview
function cell(value) {
  if (value === null || value === undefined) return h('span', { class: 'muted' }, 'null');
  if (typeof value === 'object') return h('code', null, JSON.stringify(value));
  return String(value);
}

function describeEvidence(evidence) {
  const parts = Object.entries(evidence || {}).slice(0, 4).map(([k, v]) => k + ' = ' + (typeof v === 'object' ? JSON.stringify(v) : String(v)));
  return parts.join(', ');
}

async function runPreview() {
  if (state.busy) return;
  clearErrors();
  const local = localProblems(true);
  if (local.length) {
    const first = showErrors(local, 'Preview needs a URL:');
    if (first) first.focus();
    return;
  }
  let body;
  try { body = JSON.parse($('spec-input').value); } catch (e) {
    showErrors([{ field: 'spec', message: 'not valid JSON: ' + e.message }], 'The spec is not valid JSON.');
    return;
  }
  const status = $('preview-status');
  status.textContent = 'Fetching the first page…';
  status.className = 'form-status';
  setBusy(true);
  try {
    const result = await api('POST', API + '/preview', body);
    showPreview(result);
  } catch (e) {
    status.className = 'form-status bad';
    if (e.status === 401) status.textContent = 'The service needs an API token: enter it at the top.';
    else if (e.status === 0) status.textContent = e.message;
    else {
      const details = Array.isArray(e.body.details) && e.body.details.length ? e.body.details : [{ field: 'spec', message: e.body.message || e.message }];
      const first = showErrors(details, 'Preview refused the spec:');
      status.textContent = 'Not previewed: the spec is not valid (below).';
      if (first) first.focus();
    }
  } finally {
    setBusy(false);
  }
}

function showPreview(result) {
  const holder = clear($('preview'));
  holder.hidden = false;
  const status = $('preview-status');
  const sources = (result && Array.isArray(result.sources)) ? result.sources : [];
  const src = sources[0];
  if (!src) { status.textContent = 'The preview returned nothing.'; return; }
  if (src.status !== 'ok') {
    status.className = 'form-status bad';
    status.textContent = 'The first page could not be read.';
    const example = state.settings && state.settings.example_source_url;
    const url = val('f-url');
    holder.append(h('div', { class: 'error-box preview-error' },
      h('p', null, h('strong', null, 'Page 1 failed: '), src.error || 'unknown error', src.http_status ? ' (HTTP ' + src.http_status + ')' : ''),
      example && url.startsWith(example.split('/items')[0])
        ? h('p', null, 'Is the test API running? ', h('code', null, 'python -m tests.testapi.server --port 8900'), ' starts it (the service also needs ', h('code', null, 'ALLOWED_SOURCE_HOSTS=127.0.0.1'), ').')
        : h('p', null, 'Check the URL, the auth and the format; the message above is what the API or the service said.')));
    return;
  }
  state.preview = src;
  const applied = [];
  if (!val('f-records') && src.records_path) {
    setValue('f-records', src.records_path);
    applied.push(h('li', null, 'Records path ', h('code', null, src.records_path), ', where the records were found.'));
  }
  const hint = src.pagination_hint;
  let suggestion = null;
  if (hint && hint.type && hint.type !== 'none' && hint.suggested) {
    const current = val('f-pag-type');
    const evidence = describeEvidence(hint.evidence);
    if (current === 'none') {
      applyPagination(hint.suggested);
      applied.push(h('li', null, 'Pagination: ', h('strong', null, $('f-pag-type').selectedOptions[0].textContent), evidence ? ' (seen: ' + evidence + ').' : '.'));
    } else if (current !== hint.type) {
      const use = h('button', { type: 'button', class: 'btn btn-small', id: 'use-pagination' }, 'Use it');
      use.addEventListener('click', () => { applyPagination(hint.suggested); formChanged(); use.disabled = true; use.textContent = 'Used'; });
      suggestion = h('p', null, 'Page 1 suggests ', h('strong', null, hint.type), ' pagination', evidence ? ' (seen: ' + evidence + ')' : '', ' rather than ', current, '. ', use);
    }
  }
  formChanged();
  mergeDetected(src.columns || []);
  formChanged();
  const records = Array.isArray(src.records) ? src.records : [];
  const columns = (src.columns || []).map((c) => c.name);
  const shown = columns.slice(0, PREVIEW_COLUMNS);
  status.className = 'form-status ok';
  status.textContent = 'Page 1 answered' + (src.http_status ? ' HTTP ' + src.http_status : '') + (src.elapsed_ms !== undefined ? ' in ' + num(src.elapsed_ms) + '\u00a0ms' : '') + ': ' + records.length + ' records shown, ' + columns.length + ' columns.';
  const head = h('tr', null, shown.map((c) => h('th', { scope: 'col' }, c)));
  const body = h('tbody', null, records.map((r) => h('tr', null, shown.map((c) => h('td', null, cell(r[c]))))));
  holder.append(...[
    h('h2', { id: 'preview-heading', class: 'preview-heading' }, 'The first page'),
    h('p', { class: 'section-note' }, 'Requested ', h('code', { class: 'preview-url' }, src.url || val('f-url')), '.'),
    applied.length ? h('div', { class: 'preview-applied' }, h('p', null, 'Filled in from the preview:'), h('ul', null, applied)) : null,
    suggestion,
    records.length
      ? h('div', { class: 'table-wrap preview-table', role: 'region', 'aria-labelledby': 'preview-heading', tabindex: '0' },
        h('table', { class: 'records' }, h('thead', null, head), body))
      : h('p', { class: 'muted' }, 'Page 1 holds no records.'),
    columns.length > shown.length ? h('p', { class: 'section-note' }, 'The table shows ' + shown.length + ' of ' + columns.length + ' columns; every column is in the list under Columns.') : null,
  ].filter(Boolean));
  $('columns-hint').textContent = 'Untick what you do not need, rename a column in the export, or cast it to a type. Untouched, every column is exported as it comes.';
  announce('Preview: ' + records.length + ' records, ' + columns.length + ' columns');
}

function applyPagination(suggested) {
  const type = PAG_FIELDS[suggested.type] ? suggested.type : 'none';
  setValue('f-pag-type', type);
  for (const [key, id] of Object.entries(PAG_INPUT)) setValue(id, PAG_FIELDS[type].includes(key) ? suggested[key] : '');
  showDependent();
  // keys the form does not show (has_more, in, start) come from the suggestion too
  state.doc = readForm(state.doc);
  const src = firstSource(state.doc);
  if (isObject(src.pagination)) for (const [k, v] of Object.entries(suggested)) if (!(k in src.pagination)) src.pagination[k] = v;
}

// ------------------------------------------------------------------ the example
function exampleSpec() {
  const url = (state.settings && state.settings.example_source_url) || 'http://127.0.0.1:8900/items/page';
  const bundled = /\/items\/page$/.test(url.split('?')[0]);
  const spec = { name: 'example-items', sources: [{ url }] };
  if (bundled) {  // the test API's pages: what Preview would find
    spec.sources[0].records = 'data';
    spec.sources[0].pagination = { type: 'page', param: 'page', size_param: 'per_page', size: 100, total_pages: 'meta.total_pages' };
  }
  spec.rate_limit = 20;
  spec.export = { format: 'csv' };
  return spec;
}

async function insertExample() {
  await loadSettings();
  clearErrors();
  state.columns = [];
  state.columnsFromSpec = false;
  $('preview').hidden = true;
  setDoc(exampleSpec());
  $('form-banner').hidden = true;
  formStatus('Example inserted: press Preview to see its first page, or Start task.', 'ok');
  runPreview();
}

// ------------------------------------------------------------------ set up
export function openForm() {
  document.title = 'New task · pageferry';
  loadSettings();
}

let settingsLoaded = false;
async function loadSettings() {
  if (settingsLoaded) return;
  try {
    state.settings = await api('GET', API + '/page-settings');
    settingsLoaded = true;
  } catch (e) {
    return;  // asked again the next time the form opens (e.g. once the token is in)
  }
  const s = state.settings;
  clear($('example-hint')).append(h('span', null, 'The example reads ', h('code', null, s.example_source_url),
    /127\.0\.0\.1:8900|localhost:8900/.test(s.example_source_url)
      ? [' - the bundled test API: start it with ', h('code', null, 'python -m tests.testapi.server --port 8900'), '.']
      : ' (EXAMPLE_SOURCE_URL).'));
  const names = clear($('secret-names'));
  for (const name of s.secret_names_set || []) names.append(h('option', { value: '${' + name + '}' }));
  clear($('auth-hint')).append(h('span', null, 'Secrets are never typed here: write ', h('code', null, '${NAME}'),
    ', the name of an environment variable of the service that holds the secret (allowed names: ',
    (s.secret_names || []).map((n, i) => [i ? ', ' : '', h('code', null, n)]), ').',
    (s.secret_names_set || []).length ? [' Set now: ', s.secret_names_set.map((n, i) => [i ? ', ' : '', h('code', null, n)]), '.'] : ' None is set now.'));
}

// ------------------------------------------------------------------ the field reference
let fieldList = null;

async function loadFields() {
  const holder = $('field-table');
  if (!fieldList) {
    clear(holder).append(h('p', { class: 'muted' }, 'Loading the fields…'));
    try {
      fieldList = (await api('GET', API + '/spec-fields')).fields || [];
    } catch (e) {
      clear(holder).append(h('p', { class: 'muted' }, 'Could not load the fields: ' + e.message));
      return;
    }
  }
  const needle = val('field-filter').toLowerCase();
  const shown = fieldList.filter((f) => !needle || f.field.toLowerCase().includes(needle));
  const body = h('tbody', null, shown.map((f) => h('tr', null,
    h('th', { scope: 'row', 'data-label': 'Field' }, h('code', null, f.field)),
    h('td', { 'data-label': 'Type' }, f.type),
    h('td', { 'data-label': 'Default' }, f.default !== undefined ? h('code', null, JSON.stringify(f.default)) : '—'),
    h('td', { 'data-label': 'Applies' }, f.when ? 'with ' + f.when.join(' or ') : 'always', f.note ? [h('br'), h('span', { class: 'muted' }, f.note)] : ''))));
  clear(holder).append(h('table', { class: 'fields stack' },
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Field'), h('th', { scope: 'col' }, 'Type'),
      h('th', { scope: 'col' }, 'Default'), h('th', { scope: 'col' }, 'Applies'))), body),
  h('p', { class: 'section-note' }, shown.length + ' of ' + fieldList.length + ' fields. A list\u2019s items are written []: sources[].url is the url of each source.'));
}

/** Open the form on a copy of a task's spec (Edit & re-run). */
export function prefill(spec, fromTask) {
  clearErrors();
  state.columns = [];
  state.columnsFromSpec = false;
  $('preview').hidden = true;
  setDoc(spec);
  const banner = $('form-banner');
  const masked = JSON.stringify(spec).includes('***');
  clear(banner).append('Editing a copy of the spec of ', h('a', { href: '#/task/' + fromTask.task_id }, fromTask.name || fromTask.task_id), '. ',
    masked ? 'Secrets written into it show as ***: replace them with ${NAME} references. ' : '',
    JSON.stringify(spec).includes('"file"') ? 'Choose the ids files again (JSON mode). ' : '',
    'Start task makes a new task; the old one stays as it was.');
  banner.hidden = false;
}

/** The spec in the form now (for "Schedule it…"), or null when the JSON does not parse. */
export function currentSpecText() {
  try { JSON.parse($('spec-input').value); } catch (e) { return null; }
  return $('spec-input').value;
}

export function setUpForm() {
  setDoc({ sources: [{ url: '' }] });
  $('new-form').addEventListener('submit', (event) => { event.preventDefault(); submitSpec('start'); });
  $('validate-button').addEventListener('click', () => submitSpec('validate'));
  $('preview-button').addEventListener('click', runPreview);
  $('form-panel').addEventListener('input', (event) => {
    if (event.target.closest('#columns-picker')) return;
    if (event.target.matches('select')) showDependent();
    formChanged();
  });
  $('form-panel').addEventListener('change', (event) => {
    if (event.target.closest('#columns-picker')) return;
    if (event.target.matches('select')) { showDependent(); formChanged(); }
  });
  // Enter in a field does not start the task (a form's implicit submit): in the URL it previews
  $('form-panel').addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || !event.target.matches('input')) return;
    event.preventDefault();
    if (event.target.id === 'f-url') runPreview();
  });
  $('spec-input').addEventListener('input', jsonChanged);
  $('field-reference').addEventListener('toggle', () => { if ($('field-reference').open) loadFields(); });
  $('field-filter').addEventListener('input', () => { if (fieldList) loadFields(); });
  $('mode-form').addEventListener('click', () => setMode('form'));
  $('mode-json').addEventListener('click', () => setMode('json'));
  $('example-button').addEventListener('click', (event) => {
    const button = event.currentTarget;
    if (val('f-url') && val('f-url') !== exampleSpec().sources[0].url) {
      confirmInPlace(button, 'Replace what is in the form with the example?', 'Yes, replace it', 'Keep mine', insertExample);
    } else insertExample();
  });
  $('clear-button').addEventListener('click', (event) => {
    confirmInPlace(event.currentTarget, 'Clear the whole form?', 'Yes, clear it', 'Keep it', () => {
      state.columns = [];
      state.columnsFromSpec = false;
      $('preview').hidden = true;
      $('form-banner').hidden = true;
      setDoc({ sources: [{ url: '' }] });
      clearErrors();
      $('f-url').focus();
    });
  });
  $('spec-file').addEventListener('change', async (event) => {
    const file = event.target.files && event.target.files[0];
    if (!file) return;
    try {
      $('spec-input').value = await file.text();
      jsonChanged();
      clearErrors();
      formStatus('Loaded ' + file.name + '.', 'ok');
    } catch (e) {
      formStatus('Could not read ' + file.name + '.', 'bad');
    }
  });
  showDependent();
}
