/* What the list and the task view share: the progress bar and its words, and the actions of a
   task - download (through a URL signed for it), cancel (after a confirmation), re-run, edit
   and re-run, retry the failed pages (where the spec allows), delete from the list (after a
   confirmation) - and what a failure says: its distinct causes, with counts, and a next step. */
'use strict';

import {
  API, FINAL, announce, api, confirmInPlace, duration, elapsed, h, num, percentText, plural, signedLink, size,
  STATUS_LABEL, taskName, auth, PHASE_LABEL,
} from './core.js';
import { accept, forget } from './live.js';

// ------------------------------------------------------------------ the progress bar
export class Bar {
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

export function pagesOf(done, total) {
  const unit = (n) => (n === 1 ? ' page' : ' pages');
  return total === null || total === undefined ? num(done) + unit(done) : num(done) + ' of ' + num(total) + unit(total);
}

function queueText(s) {
  const n = s.queue_position;
  if (!n) return 'Queued, waiting for a free slot';
  return n === 1 ? 'Queued: next to start' : 'Queued: ' + ordinal(n) + ' in line (' + plural(n - 1, 'task') + ' ahead)';
}

function ordinal(n) {
  const tens = n % 100, ones = n % 10;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : ones === 1 ? 'st' : ones === 2 ? 'nd' : ones === 3 ? 'rd' : 'th';
  return n + suffix;
}

export function skippedCount(s) {
  if (Array.isArray(s.skipped_pages)) return s.skipped_pages.length;
  const sources = (s.summary && s.summary.sources) || [];
  return 0 + sources.reduce((n, x) => n + (x.skipped_pages || 0), 0);
}

export function progressState(s) {
  const p = s.progress || {};
  const done = p.pages_done || 0;
  const total = p.pages_total;
  switch (s.status) {
    case 'queued':
      return { percent: 0, text: queueText(s) };
    case 'completed': {
      const skipped = skippedCount(s);
      if (s.partial || skipped) {
        const of = done + skipped;
        return { percent: of ? (100 * done) / of : 100, text: 'Partial: ' + pagesOf(done, of) + ' fetched · ' + plural(skipped, 'page') + ' skipped' };
      }
      return { percent: 100, text: pagesOf(done, total ?? done) + ' · 100\u00a0%' };
    }
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
        : { percent: 0, text: verb + ' after ' + pagesOf(done) };
    }
  }
}

export function rateText(s) {
  const p = s.progress || {};
  if (s.status === 'running') return (p.rate ?? 0).toFixed(1) + ' req/s';
  if (FINAL.has(s.status)) {
    const secs = elapsed(s);
    if (secs && p.requests) return (p.requests / secs).toFixed(1) + ' req/s avg';
  }
  return '—';
}

export function etaText(s) {
  const p = s.progress || {};
  if (s.status === 'completed') return 'done';
  if (s.status !== 'running') return '—';
  return p.eta_seconds === null || p.eta_seconds === undefined ? 'unknown' : duration(p.eta_seconds);
}

export function durationText(s) { return s.started_at ? duration(elapsed(s)) : '—'; }

export function sizeText(s) { return s.result ? size(s.result.bytes) : s.progress && s.progress.bytes ? size(s.progress.bytes) + ' fetched' : '—'; }

// ------------------------------------------------------------------ actions
const LINK_FRESH_MS = 40000;  // a signed link lives 60 s: renew it when older than this

export function downloadLink(s) {
  const r = s.result || {};
  if (s.expired) return h('span', { class: 'muted' }, 'Result expired');
  const a = h('a', { class: 'btn btn-primary download', href: API + '/download/' + encodeURIComponent(s.task_id), download: r.filename || '' },
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

function actionButton(cls, label, name, extraClass) {
  return h('button', { type: 'button', class: 'btn ' + (extraClass || 'btn-small') + ' ' + cls },
    h('span', { class: 'label' }, label), h('span', { class: 'sr-only' }, ' ' + name));
}

function busy(button, text) {
  button.disabled = true;
  const label = button.querySelector('.label');
  const before = label.textContent;
  label.textContent = text;
  return () => { button.disabled = false; label.textContent = before; };
}

export function cancelButton(s) {
  const requested = s.cancel_requested;
  const button = h('button', { type: 'button', class: 'btn btn-danger cancel', disabled: requested || null },
    h('span', { class: 'label' }, requested ? 'Cancelling…' : 'Cancel'),
    h('span', { class: 'sr-only' }, ' task ' + taskName(s)));
  button.addEventListener('click', () => {
    confirmInPlace(button, 'Cancel ' + taskName(s) + '?', 'Yes, cancel it', 'Keep it running', async () => {
      const undo = busy(button, 'Cancelling…');
      announce('Cancelling ' + taskName(s));
      try {
        accept(await api('DELETE', API + '/cancel/' + encodeURIComponent(s.task_id)), 'action');
      } catch (e) {
        if (e.status === 409 || e.status === 404) {
          try { accept(await api('GET', API + '/status/' + encodeURIComponent(s.task_id)), 'action'); } catch (ignored) { /* the next poll shows it */ }
        } else {
          undo();
          announce('Could not cancel ' + taskName(s) + ': ' + e.message);
        }
      }
    });
  });
  return button;
}

/** Re-run (the same spec snapshot), or `onlyFailed`: continue from the finished pages. */
async function rerun(s, button, onlyFailed, hooks) {
  const undo = busy(button, onlyFailed ? 'Retrying…' : 'Starting…');
  try {
    const started = await api('POST', API + '/rerun/' + encodeURIComponent(s.task_id), onlyFailed ? { only_failed_pages: true } : undefined);
    announce((onlyFailed ? 'Retrying the failed pages of ' : 'Re-running ') + taskName(s));
    location.hash = '#/task/' + started.task_id;
  } catch (e) {
    undo();
    hooks.problem(s, (onlyFailed ? 'Could not retry: ' : 'Could not re-run: ') + e.message, e);
  }
}

export function rerunButton(s, hooks) {
  const button = actionButton('rerun', 'Re-run', taskName(s));
  button.addEventListener('click', () => rerun(s, button, false, hooks));
  return button;
}

export function retryButton(s, hooks) {
  const skipped = s.status === 'completed';
  const button = actionButton('retry', skipped ? 'Retry skipped pages' : 'Retry failed pages', taskName(s), 'btn-small btn-strong');
  button.title = 'Start a new task that keeps the pages already fetched and fetches only the rest';
  button.addEventListener('click', () => rerun(s, button, true, hooks));
  return button;
}

export function editButton(s, hooks) {
  const button = actionButton('edit', 'Edit & re-run', taskName(s));
  button.addEventListener('click', async () => {
    const undo = busy(button, 'Opening…');
    try {
      const data = await api('GET', API + '/detail/' + encodeURIComponent(s.task_id));
      hooks.edit(data.spec, s);
    } catch (e) {
      undo();
      hooks.problem(s, 'Could not open the spec: ' + e.message, e);
    }
  });
  return button;
}

export function deleteButton(s, hooks) {
  const button = actionButton('delete btn-danger-quiet', 'Delete', taskName(s));
  button.addEventListener('click', () => {
    confirmInPlace(button, 'Delete ' + taskName(s) + ' and its result?', 'Yes, delete', 'Keep it', async () => {
      const undo = busy(button, 'Deleting…');
      try {
        await api('DELETE', API + '/tasks/' + encodeURIComponent(s.task_id));
        announce('Deleted ' + taskName(s));
        forget(s.task_id);
        hooks.deleted(s);
      } catch (e) {
        if (e.status === 404) { forget(s.task_id); hooks.deleted(s); return; }
        undo();
        hooks.problem(s, 'Could not delete: ' + e.message, e);
      }
    });
  });
  return button;
}

export function canRetry(s) {
  if (!s.retry_until) return false;
  const until = new Date(s.retry_until);
  return !isNaN(until) && until > new Date() && (s.status === 'failed' || (s.status === 'completed' && skippedCount(s) > 0));
}

export function actionsKey(s) {
  return [s.status, s.cancel_requested, s.expired, s.result ? s.result.filename + s.result.bytes : '', canRetry(s), auth.token].join('|');
}

export function buildActions(s, hooks) {
  if (s.status === 'running' || s.status === 'queued') return [cancelButton(s)];
  const out = [];
  if (s.status === 'completed' && s.result) out.push(downloadLink(s));
  if (canRetry(s)) out.push(retryButton(s, hooks));
  out.push(rerunButton(s, hooks), editButton(s, hooks), deleteButton(s, hooks));
  return out;
}

// ------------------------------------------------------------------ what went wrong
/** The text of a page's problem, without the attempt count ("(after 5 attempts)"). */
export function pageProblem(page) {
  const status = page.status !== null && page.status !== undefined ? 'HTTP ' + page.status : '';
  const error = page.error ? String(page.error) : '';
  if (!error) return status || 'failed';
  return status && !error.startsWith(status) ? status + ': ' + error : error;
}

function causeKey(page) { return pageProblem(page).replace(/\s*\(after \d+ attempts?\)\s*$/, ''); }

/** Failed and skipped pages grouped by cause: [{cause, status, count, example, attempts}]. */
export function causesOf(pages) {
  const groups = new Map();
  for (const page of pages) {
    const key = causeKey(page);
    let group = groups.get(key);
    if (!group) {
      group = { cause: key, status: page.status ?? null, count: 0, example: page.url || null, attempts: null };
      groups.set(key, group);
    }
    group.count += 1;
    const match = /\(after (\d+) attempts?\)/.exec(String(page.error || ''));
    if (match) group.attempts = Number(match[1]);
  }
  return Array.from(groups.values()).sort((a, b) => b.count - a.count);
}

/** What to try next for a cause. */
export function nextStep(cause, s) {
  const status = cause.status;
  const text = cause.cause.toLowerCase();
  if (status === 401 || status === 403) return 'Check the credentials: the auth fields, and that the ${NAME} they reference holds a valid secret.';
  if (status === 404) return 'Check the URL and the pagination: the API has no such page (a page past the end, or a wrong path).';
  if (status === 429) return 'The API limits the request rate: set a lower rate limit, then retry.';
  if (status === 400 || status === 422) return 'The API refused the request: check the query parameters, the page size and the pagination parameter names.';
  if (status && status >= 500) return 'The API failed on its side: retry later' + (s && s.retry_until ? ' (Retry failed pages fetches only what is missing)' : '') + ', or set on_error to "skip" to keep the other pages.';
  if (text.includes('allowed_source_hosts') || text.includes('not allowed')) return 'The service may not reach that host: ask the operator to add it to ALLOWED_SOURCE_HOSTS.';
  if (text.includes('timed out') || text.includes('timeout')) return 'The API answered too slowly: raise the timeout or lower the concurrency, then retry.';
  if (text.includes('records') || text.includes('list')) return 'The records were not where expected: use Preview to see the page and set the records path.';
  if (text.includes('json') || text.includes('body')) return 'The answer was not what was expected: check the format (JSON, NDJSON, CSV) with Preview.';
  if (text.includes('environment variable') || text.includes('secret')) return 'A ${NAME} reference is not set in the service\u2019s environment, or its name does not match SECRET_NAMES.';
  if (text.includes('cancel')) return 'Re-run it when you are ready.';
  return 'Look at the failed page\u2019s URL above; Preview shows what the API answers now. Then re-run.';
}

export function errorBox(s, pageLimit, detailLink) {
  const error = s.error;
  if (!error || !(s.status === 'failed' || s.status === 'cancelled')) return null;
  const box = h('div', { class: 'error-box' + (s.status === 'cancelled' ? ' cancelled' : '') });
  const pages = Array.isArray(error.pages) ? error.pages : [];
  const causes = causesOf(pages);
  let message = error.message || '';
  if (pages.length === 1 && message.includes(String(pages[0].url))) {
    message = 'a page failed';  // the page and its cause are listed just below: say it once
  }
  box.append(h('p', null, h('strong', null, s.status === 'failed' ? 'Error: ' : 'Cancelled: '),
    h('span', { class: 'error-message' }, message)));
  if (causes.length) {
    const list = h('ul', { class: 'causes', 'aria-label': 'Causes' });
    for (const cause of causes) {
      list.append(h('li', { class: 'cause' },
        h('span', { class: 'cause-text' }, cause.cause),
        ' — ', plural(cause.count, 'page'),
        cause.attempts ? ', each after ' + plural(cause.attempts, 'attempt') : ''));
    }
    box.append(h('p', { class: 'causes-title' }, h('strong', null, causes.length === 1 ? 'Cause:' : causes.length + ' distinct causes:')), list);
    const shown = pageLimit ? pages.slice(0, pageLimit) : pages;
    const urls = h('ul', { class: 'failed-pages', 'aria-label': 'Failed pages' });
    for (const page of shown) urls.append(h('li', null, h('code', { class: 'failed-url' }, page.url || '(no URL)')));
    box.append(h('p', { class: 'failed-title' }, h('strong', null, pages.length === 1 ? 'Failed page:' : pages.length + ' failed pages:')), urls);
    if (pages.length > shown.length && detailLink) {
      box.append(h('p', null, h('a', { href: '#/task/' + s.task_id }, (pages.length - shown.length) + ' more in the task view')));
    }
  }
  if (s.status === 'failed') {
    const step = nextStep(causes[0] || { cause: error.message || '', status: null }, s);
    box.append(h('p', { class: 'next-step' }, h('strong', null, 'Next step: '), step));
  }
  return box;
}

export function statusBadge(s) {
  return h('span', { class: 'badge status-' + s.status }, STATUS_LABEL[s.status] || s.status);
}
