/* The task list (#/): one page of GET /tasks at a time - newest first, paged on the server with
   `?before=` (the answer's `next`), filtered by status and by a part of the name - refreshed
   every LIST_EVERY_MS, its unfinished rows kept live (live.js). Filters and the page are in the
   address (#/?status=failed&q=orders&before=task_…), so a reload or a shared link shows the same. */
'use strict';

import {
  $, API, TASK_ID, api, clear, h, num, plural, replaceIfChanged, timeEl, STATUS_LABEL, taskName,
} from './core.js';
import {
  Bar, actionsKey, buildActions, durationText, errorBox, etaText, progressState, rateText, sizeText,
} from './actions.js';
import { accept, keepWatching, onForget, onStatus, pollingNote, tasks } from './live.js';

export const PAGE_SIZE = 25;
const LIST_EVERY_MS = 5000;

const rows = new Map();  // task_id -> TaskRow
const list = { order: [], filters: { status: '', q: '', before: '' }, cursors: [], next: null, timer: 0, busy: false, active: false, hooks: null, generation: 0, again: false };

// ------------------------------------------------------------------ one row
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
    for (const label of ['Rows', 'Duration', 'Size', 'Rate', 'ETA', 'Started', 'Finished']) {
      const dd = h('dd');
      this.facts[label] = dd;
      facts.append(h('div', { class: 'fact-' + label.toLowerCase() }, h('dt', null, label), dd));
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
    const origin = s.schedule_id ? [' · ', h('a', { href: '#/schedules', class: 'from-schedule' }, 'scheduled')]
      : s.retry_of ? ' · retry' : s.rerun_of ? ' · re-run' : '';
    clear(this.meta).append(h('span', { class: 'mono' }, s.task_id), ' · created ', timeEl(s.created_at), ...[].concat(origin));
    this.bar.set(progressState(s));
    const p = s.progress || {};
    this.facts.Rows.textContent = num(s.result ? s.result.rows : p.rows);
    this.facts.Duration.textContent = durationText(s);
    this.facts.Size.textContent = sizeText(s);
    this.facts.Rate.textContent = rateText(s);
    this.facts.ETA.textContent = etaText(s);
    clear(this.facts.Started).append(timeEl(s.started_at));
    clear(this.facts.Finished).append(timeEl(s.finished_at));
    if (replaceIfChanged(this.actions, actionsKey(s), () => buildActions(s, list.hooks))) this.link.focus();
    this.errors.hidden = !s.error;
    replaceIfChanged(this.errors, JSON.stringify([s.status, s.error]), () => errorBox(s, 3, true));
  }
}

onStatus((s) => { const row = rows.get(s.task_id); if (row) row.update(s); });
onForget((id) => {
  const row = rows.get(id);
  if (row) { row.el.remove(); rows.delete(id); }
  list.order = list.order.filter((x) => x !== id);
  $('tasks-empty').hidden = list.order.length > 0;
});

// ------------------------------------------------------------------ the page of tasks
function query(filters, limit) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (filters.status) params.set('status', filters.status);
  if (filters.q) params.set('q', filters.q);
  if (filters.before) params.set('before', filters.before);
  return params.toString();
}

/** The list's address for `filters` (what the hash holds). */
export function listHash(filters) {
  const params = new URLSearchParams();
  for (const key of ['status', 'q', 'before']) if (filters[key]) params.set(key, filters[key]);
  const text = params.toString();
  return '#/' + (text ? '?' + text : '');
}

export async function refreshList() {
  window.clearTimeout(list.timer);
  if (!list.active) return;
  if (list.busy) { list.again = true; return; }  // the filters changed meanwhile: once more after this one
  list.busy = true;
  list.again = false;
  const generation = list.generation;
  const state = $('list-state');
  try {
    if (document.visibilityState !== 'hidden' || !list.order.length) {
      const data = await api('GET', API + '/tasks?' + query(list.filters, PAGE_SIZE));
      if (list.active && generation === list.generation) {  // else an answer for filters gone since
        const ids = [];
        for (const s of data.tasks || []) {
          if (!TASK_ID.test(s.task_id || '')) continue;
          accept(s, 'list');
          ids.push(s.task_id);
        }
        list.order = ids;
        list.next = data.next || null;
        renderList();
        state.textContent = '';
      }
    }
  } catch (e) {
    if (e.status === 400 && list.filters.before && generation === list.generation) {
      list.busy = false;  // the page's first task was deleted: start over
      location.hash = listHash({ ...list.filters, before: '' });
      return;
    }
    state.textContent = e.status === 401 ? 'Waiting for the API token.' : e.status === 0 ? 'The service does not answer.' : 'Could not load the tasks: ' + e.message;
  } finally {
    list.busy = false;
  }
  if (list.active && (list.again || generation !== list.generation)) { refreshList(); return; }
  if (list.active) {
    keepWatching(list.order);
    showNote();
    list.timer = window.setTimeout(refreshList, LIST_EVERY_MS);
  }
}

function showNote() {
  const note = $('list-note');
  const text = pollingNote();
  note.hidden = !text;
  note.textContent = text || '';
}

function renderList() {
  const holder = $('task-list');
  const keep = new Set(list.order);
  for (const [id, row] of Array.from(rows)) {
    if (!keep.has(id)) { row.el.remove(); rows.delete(id); }
  }
  let cursor = holder.firstElementChild;
  for (const id of list.order) {
    let row = rows.get(id);
    if (!row) { row = new TaskRow(id); rows.set(id, row); }
    row.update(tasks.get(id));
    if (row.el === cursor) cursor = cursor.nextElementSibling;
    else holder.insertBefore(row.el, cursor);  // only new or reordered rows move: focus stays put
  }
  const filtered = list.filters.status || list.filters.q;
  const empty = $('tasks-empty');
  empty.hidden = list.order.length > 0;
  if (!list.order.length) {
    clear(empty).append(h('span', null, filtered
      ? ['No task matches these filters. ', h('a', { href: '#/' }, 'Show every task')]
      : list.filters.before ? ['No older tasks. ', h('a', { href: '#/' }, 'Back to the newest')]
        : ['No tasks yet. ', h('a', { href: '#/new' }, 'Start one'), ' - the form has an example that works right away.']));
  }
  const page = list.cursors.length + 1;
  $('page-newer').disabled = !list.filters.before;
  $('page-older').disabled = !list.next;
  $('pager').hidden = !list.filters.before && !list.next;
  $('page-state').textContent = list.order.length
    ? 'Page ' + page + ' · ' + plural(list.order.length, 'task') + (list.next ? '' : ' · the oldest')
    : '';
  const summary = [filtered ? 'filtered' : '', list.filters.status ? STATUS_LABEL[list.filters.status] : '', list.filters.q ? '"' + list.filters.q + '"' : ''].filter(Boolean).join(' ');
  $('tasks-heading').dataset.filtered = summary ? 'yes' : '';
}

/** Show the list for the hash's filters (`params`: URLSearchParams of #/?…). */
export function openList(params, hooks) {
  list.hooks = hooks;
  const filters = { status: params.get('status') || '', q: params.get('q') || '', before: params.get('before') || '' };
  if (filters.status !== list.filters.status || filters.q !== list.filters.q) list.cursors = [];
  if (!filters.before) list.cursors = [];
  list.filters = filters;
  list.generation += 1;
  list.active = true;
  $('filter-status').value = filters.status;
  if (document.activeElement !== $('filter-q')) $('filter-q').value = filters.q;
  document.title = 'Tasks · pageferry';
  refreshList();
}

export function closeList() {
  list.active = false;
  window.clearTimeout(list.timer);
}

/** The list's own changes of address (filters, pages) keep the focus where it is. */
let quietHash = null;
function go(hash) {
  location.hash = hash;
  quietHash = location.hash;  // as the browser keeps it (encoded)
}
export function isQuietNavigation(hash) {
  const quiet = hash === quietHash;
  quietHash = null;
  return quiet;
}

export function setUpList() {
  const status = $('filter-status');
  const q = $('filter-q');
  let typing = 0;
  const apply = () => {
    list.cursors = [];
    go(listHash({ status: status.value, q: q.value.trim(), before: '' }));
  };
  status.addEventListener('change', apply);
  q.addEventListener('input', () => { window.clearTimeout(typing); typing = window.setTimeout(apply, 300); });
  $('list-filters').addEventListener('submit', (event) => { event.preventDefault(); window.clearTimeout(typing); apply(); });
  $('list-filters').addEventListener('reset', () => { window.setTimeout(apply, 0); });
  $('page-older').addEventListener('click', () => {
    if (!list.next) return;
    list.cursors.push(list.filters.before);
    go(listHash({ ...list.filters, before: list.next }));
    $('tasks-heading').focus();
  });
  $('page-newer').addEventListener('click', () => {
    const before = list.cursors.length ? list.cursors.pop() : '';
    go(listHash({ ...list.filters, before }));
    $('tasks-heading').focus();
  });
}
