/* pageferry progress page: plain JavaScript modules, no build step, no dependencies, nothing
   loaded from elsewhere.

   Views (hash routes): #/ the task list (#/?status=…&q=…&before=… a filtered page of it),
   #/task/<id> one task, #/new the new-task form, #/schedules the schedules (#/schedules/new
   opens the create form). A task's address works in a new tab too: the tab gets the API token
   from an open tab of the page (core.js), and loads the task from the API.

   Modules: core.js (DOM, API calls, token, online/offline), live.js (websockets with a polling
   fallback), actions.js (progress words and task actions), tasks.js (the list), detail.js (one
   task), form.js (the new-task form), schedules.js.

   Everything that comes from the API (names, errors, URLs) is put into the page with
   textContent / text nodes only - never parsed as HTML. */
'use strict';

import { $, auth, bus, hideNotice, probe, setToken, shareToken, tokenState } from './core.js';
import { keepWatching, restartAll, watchers } from './live.js';
import { closeList, isQuietNavigation, openList, setUpList } from './tasks.js';
import { closeDetail, openTask } from './detail.js';
import { currentSpecText, openForm, prefill, setUpForm } from './form.js';
import { closeSchedules, openSchedules, scheduleDraft, setUpSchedules } from './schedules.js';

const VIEWS = ['tasks', 'task', 'new', 'schedules'];
const view = { name: '', id: null };

/** What a task's actions need from the app (edit & re-run opens the form on its spec). */
const hooks = {
  edit: (spec, s) => { prefill(spec, s); location.hash = '#/new'; },
  problem: (s, text) => { $('list-state').textContent = text; },
  deleted: () => {},
};

function show(name) {
  for (const v of VIEWS) $('view-' + v).hidden = v !== name;
  for (const [nav, target] of [['nav-tasks', 'tasks'], ['nav-new', 'new'], ['nav-schedules', 'schedules']]) {
    if (name === target) $(nav).setAttribute('aria-current', 'page'); else $(nav).removeAttribute('aria-current');
  }
}

function route(moveFocus) {
  const hash = location.hash || '#/';
  if (!hash.startsWith('#/')) return;
  const [path, search] = hash.slice(1).split('?');
  const params = new URLSearchParams(search || '');
  const task = /^\/task\/([^/?#]+)$/.exec(path);
  if (view.name === 'tasks') closeList();
  if (view.name === 'schedules') closeSchedules();
  if (task) {
    const id = decodeURIComponent(task[1]);
    view.name = 'task'; view.id = id;
    show('task');
    for (const [other, w] of Array.from(watchers)) if (other !== id) w.stop();
    openTask(id, hooks, () => view.name === 'task' && view.id === id);
  } else if (path === '/new') {
    view.name = 'new'; view.id = null; closeDetail();
    show('new');
    keepWatching([]);
    openForm();
  } else if (path === '/schedules' || path === '/schedules/new') {
    view.name = 'schedules'; view.id = null; closeDetail();
    show('schedules');
    keepWatching([]);
    openSchedules(params, path === '/schedules/new');
  } else {
    view.name = 'tasks'; view.id = null; closeDetail();
    show('tasks');
    openList(params, hooks);
  }
  if (moveFocus) {
    const heading = document.querySelector('#view-' + view.name + ' h1');
    if (heading) heading.focus();
  }
}

function restartLive() {
  restartAll();
  route(false);
}

function setUpToken() {
  const input = $('token-input');
  input.value = auth.token;
  $('token-remember').checked = auth.remembered;
  if (auth.token) tokenState(auth.remembered ? 'token remembered on this device' : 'token set for this tab', 'ok');
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    setToken(input.value.trim(), $('token-remember').checked);
    auth.needed = false;
    hideNotice();
    $('token-form').classList.remove('attention');
    tokenState(auth.token ? (auth.remembered ? 'token saved on this device' : 'token saved for this tab') : 'no token', auth.token ? 'ok' : '');
    restartLive();
  });
  $('token-clear').addEventListener('click', () => {
    input.value = '';
    $('token-remember').checked = false;
    setToken('', false);
    tokenState('no token', '');
    restartLive();
  });
  bus.addEventListener('token', restartLive);
  shareToken();
}

function init() {
  setUpToken();
  setUpList();
  setUpForm();
  setUpSchedules();
  $('schedule-button').addEventListener('click', () => {
    const text = currentSpecText();
    if (text === null) { $('form-status').textContent = 'Fix the JSON first.'; return; }
    scheduleDraft(text);
    location.hash = '#/schedules/new';
  });
  $('offline-retry').addEventListener('click', probe);
  $('skip-link').addEventListener('click', (event) => { event.preventDefault(); $('main').focus(); });
  window.addEventListener('hashchange', () => route(!isQuietNavigation(location.hash)));
  bus.addEventListener('online', restartLive);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && view.name === 'tasks') route(false);
  });
  route(false);
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
