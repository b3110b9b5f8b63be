/* Schedules (#/schedules): the list - each schedule's cron in words, time zone, next and last
   run, paused or not, and its recent runs (GET /tasks?schedule_id=) - with run now, pause or
   resume, and delete (after a confirmation); and a form to create one, which previews the next
   runs of the cron expression as it is typed (POST /schedules/check). */
'use strict';

import {
  $, API, SCHEDULE_ID, announce, api, clear, confirmInPlace, fullTime, h, num, plural, timeEl,
} from './core.js';
import { statusBadge } from './actions.js';

const RUNS_SHOWN = 5;
const REFRESH_MS = 5000;
const DRAFT_KEY = 'pageferry.scheduleDraft';
const view = { active: false, timer: 0, busy: false, again: false, highlight: null, checkTimer: 0, checked: '' };

function byId(id) { return document.querySelector('#schedule-list li[data-schedule-id="' + id + '"]'); }

// ------------------------------------------------------------------ the list
async function refresh() {
  window.clearTimeout(view.timer);
  if (!view.active) return;
  if (view.busy) { view.again = true; return; }  // an action changed something: once more after this one
  view.busy = true;
  view.again = false;
  const state = $('schedules-state');
  try {
    const data = await api('GET', API + '/schedules');
    const schedules = (data.schedules || []).filter((s) => SCHEDULE_ID.test(s.schedule_id || ''));
    const runs = await Promise.all(schedules.map((s) =>
      api('GET', API + '/tasks?limit=' + RUNS_SHOWN + '&schedule_id=' + encodeURIComponent(s.schedule_id))
        .then((r) => r.tasks || []).catch(() => null)));
    if (!view.active) return;
    render(schedules, runs);
    state.textContent = '';
  } catch (e) {
    state.textContent = e.status === 401 ? 'Waiting for the API token.' : e.status === 0 ? 'The service does not answer.' : 'Could not load the schedules: ' + e.message;
  } finally {
    view.busy = false;
  }
  if (view.active) view.timer = window.setTimeout(refresh, view.again ? 0 : REFRESH_MS);
}

function render(schedules, runs) {
  const list = $('schedule-list');
  const keep = new Set(schedules.map((s) => s.schedule_id));
  for (const el of Array.from(list.children)) if (!keep.has(el.dataset.scheduleId)) el.remove();
  let cursor = list.firstElementChild;
  schedules.forEach((s, i) => {
    let item = byId(s.schedule_id);
    const key = JSON.stringify([s, runs[i]]);
    if (!item) item = h('li', { class: 'schedule card', 'data-schedule-id': s.schedule_id });
    if (item.dataset.key !== key) {
      const hadFocus = item.contains(document.activeElement) ? document.activeElement.className : null;
      fill(item, s, runs[i]);
      item.dataset.key = key;
      if (hadFocus) {
        const again = item.querySelector('button.' + hadFocus.split(' ').filter((c) => c.startsWith('sched-'))[0]);
        if (again) again.focus();
      }
    }
    item.classList.toggle('highlight', view.highlight === s.schedule_id);
    if (item === cursor) cursor = cursor.nextElementSibling;
    else list.insertBefore(item, cursor);
  });
  $('schedules-empty').hidden = schedules.length > 0;
}

function fill(item, s, runs) {
  clear(item);
  item.dataset.paused = s.paused ? 'yes' : 'no';
  const headingId = 'sched-name-' + s.schedule_id;
  const run = h('button', { type: 'button', class: 'btn btn-small btn-primary sched-run' }, 'Run now', h('span', { class: 'sr-only' }, ' ' + (s.name || s.schedule_id)));
  const pause = h('button', { type: 'button', class: 'btn btn-small sched-pause' }, s.paused ? 'Resume' : 'Pause', h('span', { class: 'sr-only' }, ' ' + (s.name || s.schedule_id)));
  const remove = h('button', { type: 'button', class: 'btn btn-small btn-danger-quiet sched-delete' }, 'Delete', h('span', { class: 'sr-only' }, ' ' + (s.name || s.schedule_id)));
  const problem = h('p', { class: 'form-status bad', role: 'alert', hidden: true });
  const say = (text) => { problem.hidden = !text; problem.textContent = text || ''; };
  run.addEventListener('click', async () => {
    run.disabled = true;
    try {
      const started = await api('POST', API + '/schedules/' + encodeURIComponent(s.schedule_id) + '/run');
      announce('Started a run of ' + (s.name || s.schedule_id) + ': ' + started.task_id);
      say('');
      refresh();
    } catch (e) { say('Could not run it: ' + e.message); } finally { run.disabled = false; }
  });
  pause.addEventListener('click', async () => {
    pause.disabled = true;
    try {
      await api('POST', API + '/schedules/' + encodeURIComponent(s.schedule_id) + (s.paused ? '/resume' : '/pause'));
      announce((s.name || s.schedule_id) + (s.paused ? ' resumed' : ' paused'));
      say('');
      await refresh();
    } catch (e) { say('Could not ' + (s.paused ? 'resume' : 'pause') + ' it: ' + e.message); pause.disabled = false; }
  });
  remove.addEventListener('click', () => {
    confirmInPlace(remove, 'Delete the schedule ' + (s.name || s.schedule_id) + '? Its past runs stay in the task list.', 'Yes, delete', 'Keep it', async () => {
      remove.disabled = true;
      try {
        await api('DELETE', API + '/schedules/' + encodeURIComponent(s.schedule_id));
        announce('Deleted the schedule ' + (s.name || s.schedule_id));
        item.remove();
        $('schedules-empty').hidden = $('schedule-list').children.length > 0;
        $('schedules-heading').focus();
      } catch (e) {
        if (e.status === 404) { item.remove(); return; }
        say('Could not delete it: ' + e.message);
        remove.disabled = false;
      }
    });
  });
  const source = s.spec && Array.isArray(s.spec.sources) && s.spec.sources[0] ? s.spec.sources[0].url : null;
  const runList = h('ol', { class: 'runs' });
  if (runs === null) runList.append(h('li', { class: 'muted' }, 'Could not load its runs.'));
  else if (!runs.length) runList.append(h('li', { class: 'muted' }, 'No runs yet.'));
  else {
    for (const t of runs) {
      runList.append(h('li', { class: 'run', 'data-task-id': t.task_id },
        statusBadge(t), ' ', h('a', { href: '#/task/' + t.task_id }, t.task_id), ' · ', timeEl(t.created_at),
        t.result ? ' · ' + plural(t.result.rows, 'row') : '',
        t.error && t.error.message ? [' · ', h('span', { class: 'run-error' }, t.error.message)] : ''));
    }
  }
  item.append(...[
    h('div', { class: 'schedule-head' },
      h('h2', { id: headingId, class: 'schedule-name' }, s.name || s.schedule_id),
      h('span', { class: 'badge ' + (s.paused ? 'status-cancelled' : 'status-completed') }, s.paused ? 'Paused' : 'Active')),
    h('p', { class: 'cron-line' }, h('code', { class: 'cron' }, s.cron), ' · ', s.description || 'a custom cron expression', ' · ', s.timezone),
    source ? h('p', { class: 'task-meta' }, h('span', { class: 'mono' }, s.schedule_id), ' · reads ', h('code', null, source)) : null,
    h('dl', { class: 'facts' },
      h('div', null, h('dt', null, 'Next run'), h('dd', { class: 'next-run' }, s.paused ? 'paused' : timeEl(s.next_run))),
      h('div', null, h('dt', null, 'Last run'), h('dd', null, s.last_run ? timeEl(s.last_run) : 'never')),
      h('div', null, h('dt', null, 'Skipped runs'), h('dd', null, num(s.skipped_runs || 0))),
      h('div', null, h('dt', null, 'Created'), h('dd', null, timeEl(s.created_at)))),
    h('div', { class: 'schedule-actions actions' }, run, pause, remove),
    problem,
    h('h3', { class: 'runs-heading' }, 'Recent runs'),
    runList,
  ].filter(Boolean));
  item.setAttribute('aria-labelledby', headingId);
}

// ------------------------------------------------------------------ the create form
function showForm(show) {
  const form = $('schedule-form');
  form.hidden = !show;
  $('schedule-new').hidden = show;
  if (show) {
    try {
      const draft = sessionStorage.getItem(DRAFT_KEY);
      if (draft) { $('s-spec').value = draft; sessionStorage.removeItem(DRAFT_KEY); }
    } catch (e) { /* no storage: paste it */ }
    if (!$('s-timezone').dataset.touched) {
      try { $('s-timezone').value = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'; } catch (e) { $('s-timezone').value = 'UTC'; }
    }
    $('s-cron').focus();
    checkSoon(0);
  }
}

function checkSoon(delay) {
  window.clearTimeout(view.checkTimer);
  view.checkTimer = window.setTimeout(checkCron, delay);
}

async function checkCron() {
  const cron = $('s-cron').value.trim();
  const timezone = $('s-timezone').value.trim() || 'UTC';
  const box = $('s-cron-preview');
  const key = cron + '|' + timezone;
  if (key === view.checked) return;
  view.checked = key;
  if (!cron) { clear(box).append(h('p', { class: 'muted' }, 'Type a cron expression to see when it runs.')); return; }
  try {
    const data = await api('POST', API + '/schedules/check', { cron, timezone });
    if (view.checked !== key) return;
    $('s-cron').removeAttribute('aria-invalid');
    const local = new Intl.DateTimeFormat(undefined, { weekday: 'short', year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
    clear(box).append(
      h('p', { class: 'cron-words' }, h('strong', null, data.description ? capital(data.description) : 'A custom schedule'), ' (' + data.timezone + ').'),
      h('p', { class: 'hint' }, 'The next runs:'),
      h('ol', { class: 'next-runs' }, (data.next_runs || []).map((r) => h('li', null,
        h('time', { datetime: r.at, title: fullTime(r.at) }, r.local), ' - your time: ', local.format(new Date(r.at))))));
  } catch (e) {
    if (view.checked !== key) return;
    const details = (e.body && e.body.details) || [];
    clear(box).append(h('p', { class: 'input-error' }, details.length ? details.map((d) => d.field + ': ' + d.message).join('; ') : e.message));
    if (details.some((d) => d.field === 'cron')) $('s-cron').setAttribute('aria-invalid', 'true');
  }
}

function capital(text) { return text.charAt(0).toUpperCase() + text.slice(1); }

async function create(event) {
  event.preventDefault();
  const errors = clear($('schedule-errors'));
  const status = $('schedule-status');
  status.textContent = '';
  status.className = 'form-status';
  let spec;
  try { spec = JSON.parse($('s-spec').value); } catch (e) {
    errors.append(h('p', null, 'The job spec is not valid JSON: ' + e.message));
    $('s-spec').focus();
    return;
  }
  const button = $('schedule-create');
  button.disabled = true;
  try {
    const created = await api('POST', API + '/schedules', { cron: $('s-cron').value.trim(), timezone: $('s-timezone').value.trim() || 'UTC', spec });
    status.className = 'form-status ok';
    status.textContent = 'Created ' + created.schedule_id + '.';
    announce('Schedule created: ' + (created.description || created.cron));
    view.highlight = created.schedule_id;
    $('s-spec').value = '';
    $('s-cron').value = '';
    view.checked = '';
    showForm(false);
    await refresh();
    const item = byId(created.schedule_id);
    if (item) { const run = item.querySelector('.sched-run'); if (run) run.focus(); }
  } catch (e) {
    const details = (e.body && e.body.details) || [];
    errors.append(h('p', null, e.status === 0 ? e.message : 'Not created:'),
      h('ul', null, (details.length ? details : [{ field: 'schedule', message: e.message }]).map((d) =>
        h('li', { class: 'field-error', 'data-field': d.field }, h('code', { class: 'field-path' }, d.field), ' ', h('span', { class: 'field-message' }, d.message)))));
    const first = details[0] && details[0].field;
    if (first === 'cron') $('s-cron').focus(); else if (first === 'timezone') $('s-timezone').focus(); else $('s-spec').focus();
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ the view
export function openSchedules(params, startNew) {
  view.active = true;
  view.highlight = params.get('highlight');
  document.title = 'Schedules · pageferry';
  if (startNew) showForm(true);
  refresh();
}

export function closeSchedules() {
  view.active = false;
  window.clearTimeout(view.timer);
}

/** "Schedule it…" on the new-task form: carry its spec over. */
export function scheduleDraft(specText) {
  try { sessionStorage.setItem(DRAFT_KEY, specText); } catch (e) { /* the form opens empty */ }
}

export function setUpSchedules() {
  $('schedule-new').addEventListener('click', () => showForm(true));
  $('schedule-cancel').addEventListener('click', () => { showForm(false); $('schedule-new').focus(); });
  $('schedule-form').addEventListener('submit', create);
  $('s-cron').addEventListener('input', () => checkSoon(300));
  $('s-timezone').addEventListener('input', () => { $('s-timezone').dataset.touched = '1'; checkSoon(300); });
  const zones = $('timezones');
  try {
    for (const zone of Intl.supportedValuesOf('timeZone')) zones.append(h('option', { value: zone }));
  } catch (e) { /* an older browser: type the name */ }
}
