/* One task (#/task/<id>): its progress, live; its actions; what happened (the event log the
   runner records, a throughput chart of pages/s over time); for a failure, its distinct causes
   and a next step; per-source figures; the result, manifest and deliveries; and the spec, as it
   was submitted and as it ran (every default filled in), both with secrets shown as ***. */
'use strict';

import {
  $, API, FINAL, PHASE_LABEL, STATUS_LABEL, api, auth, clear, duration, elapsed, h, num,
  percentText, replaceIfChanged, showNotice, size, svg, taskName, timeEl,
} from './core.js';
import {
  Bar, actionsKey, buildActions, errorBox, etaText, pageProblem, pagesOf, progressState, rateText, skippedCount,
} from './actions.js';
import { accept, onForget, onMode, onStatus, tasks, watch, watchers } from './live.js';

let detail = null;

const EVENT_LABEL = {
  created: 'Queued', started: 'Started', phase: 'Phase', retry: 'Retries', pause: 'Pause', resumed: 'Resumed',
  rate_limit: 'Rate limit', cancel: 'Cancel', skipped: 'Skipped', delivery: 'Delivery', webhook: 'Webhook',
  completed: 'Completed', failed: 'Failed', cancelled: 'Cancelled',
};

class TaskDetail {
  constructor(id, hooks) {
    this.id = id;
    this.hooks = hooks;
    this.extraFor = null;
    const section = clear($('view-task'));
    this.section = section;
    section.dataset.taskId = id;
    delete section.dataset.status;
    this.heading = h('h1', { id: 'task-heading', tabindex: '-1' }, id);
    this.badge = h('span', { class: 'badge' });
    this.partial = h('span', { class: 'badge badge-partial', hidden: true }, 'partial');
    this.live = h('span', { class: 'live-state', id: 'live-state' });
    this.liveNote = h('p', { class: 'live-note', id: 'live-note', role: 'status', hidden: true });
    this.meta = h('p', { class: 'task-meta' });
    this.bar = new Bar('task-heading');
    this.actions = h('div', { class: 'detail-actions' });
    this.problem = h('p', { class: 'form-status bad action-problem', role: 'alert', hidden: true });
    this.errors = h('div', { class: 'detail-errors' });
    this.grid = h('dl', { class: 'detail-grid' });
    this.gridCells = {};
    for (const label of ['Phase', 'Pages', 'Rows', 'Fetched', 'Requests', 'Retries', 'Rate', 'ETA',
      'Created', 'Started', 'Finished', 'Duration']) {
      const dd = h('dd');
      this.gridCells[label] = dd;
      this.grid.append(h('div', null, h('dt', null, label), dd));
    }
    this.chart = h('div', { class: 'chart' });
    this.events = h('div', { class: 'events' });
    this.sourcesBody = h('tbody');
    this.sourcesNote = h('p', { class: 'section-note' });
    this.result = h('div', { class: 'detail-result' });
    this.delivery = h('div', { class: 'detail-delivery' });
    this.manifest = h('div', { class: 'detail-manifest' });
    this.spec = h('div', { class: 'detail-spec' }, h('p', { class: 'muted' }, 'Loading the spec…'));
    this.effective = h('div', { class: 'detail-effective' });
    section.append(
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, '← All tasks')),
      h('div', { class: 'view-head detail-head' }, this.heading, this.badge, this.partial, this.live),
      this.liveNote,
      this.meta,
      h('div', { class: 'detail-progress' }, this.bar.el, this.bar.text),
      this.actions,
      this.problem,
      this.errors,
      h('h2', null, 'Progress'), this.grid,
      h('h2', { id: 'happened-heading' }, 'What happened'),
      h('div', { class: 'happened' }, this.chart, this.events),
      h('h2', null, 'Sources'), this.sourcesNote,
      h('div', { class: 'table-wrap sources-wrap', role: 'region', 'aria-label': 'Sources', tabindex: '0' },
        h('table', { class: 'sources stack' },
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
      this.spec,
      this.effective);
  }

  showLive(w) {
    const { state, note } = w ? w.describe() : { state: '', note: '' };
    const mode = w ? w.mode : 'done';
    this.live.textContent = state ? '● ' + state : '';
    this.live.dataset.mode = mode;
    this.section.dataset.live = mode;
    this.liveNote.hidden = !note;
    this.liveNote.textContent = note;
  }

  missing() {
    clear(this.section).append(
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, '← All tasks')),
      h('div', { class: 'view-head' }, h('h1', { id: 'task-heading', tabindex: '-1' }, 'No such task')),
      h('p', null, 'There is no task ', h('code', null, this.id), '. It may have been deleted.'));
    this.section.dataset.status = 'missing';
  }

  showProblem(text) {
    this.problem.hidden = !text;
    this.problem.textContent = text || '';
  }

  update(s) {
    this.section.dataset.status = s.status;
    this.heading.textContent = taskName(s);
    document.title = taskName(s) + ' (' + (STATUS_LABEL[s.status] || s.status).toLowerCase() + ') · pageferry';
    this.badge.className = 'badge status-' + s.status;
    this.badge.textContent = STATUS_LABEL[s.status] || s.status;
    this.partial.hidden = !s.partial;
    const origin = [];
    if (s.schedule_id) {
      origin.push(' · from schedule ', h('a', { class: 'mono', href: '#/schedules?highlight=' + encodeURIComponent(s.schedule_id) }, s.schedule_id));
      if (s.scheduled_for) origin.push(' (', s.missed_runs ? 'standing for ' + num(s.missed_runs + 1) + ' runs, ' : '', 'due ', timeEl(s.scheduled_for), ')');
    }
    if (s.retry_of) origin.push(' · retry of ', h('a', { class: 'mono', href: '#/task/' + s.retry_of }, s.retry_of));
    else if (s.rerun_of) origin.push(' · re-run of ', h('a', { class: 'mono', href: '#/task/' + s.rerun_of }, s.rerun_of));
    clear(this.meta).append(h('span', { class: 'mono' }, s.task_id), ...origin);
    this.bar.set(progressState(s));
    if (replaceIfChanged(this.actions, actionsKey(s), () => buildActions(s, this.hooks))) this.heading.focus();
    replaceIfChanged(this.errors, JSON.stringify([s.status, s.error, s.retry_until]), () => errorBox(s, 0, false));

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

    this.renderChart(s);
    this.renderEvents(s);
    this.renderSources(s);
    this.renderResult(s);
    this.renderDelivery(s);
    // the spec once; the manifest when the task has ended (read again at the change to final)
    if (this.extraFor === null || (FINAL.has(s.status) && this.extraFor !== s.status && this.extraFor !== 'error:' + s.status)) {
      this.loadExtra(s.status);
    }
  }

  // ---------------------------------------------------------------- what happened
  renderChart(s) {
    const samples = Array.isArray(s.throughput) ? s.throughput : [];
    const key = JSON.stringify(samples);
    if (this.chart.dataset.key === key) return;
    this.chart.dataset.key = key;
    clear(this.chart);
    const points = [];
    for (let i = 1; i < samples.length; i += 1) {
      const [t0, p0] = samples[i - 1];
      const [t1, p1] = samples[i];
      if (t1 > t0) points.push([t1, Math.max(0, (p1 - p0) / (t1 - t0))]);
    }
    if (!points.length) {
      this.chart.append(h('p', { class: 'muted chart-empty' }, s.status === 'queued' ? 'The throughput chart starts when the task does.' : 'Not enough samples yet for a throughput chart.'));
      return;
    }
    const W = 600, H = 160, PAD_L = 44, PAD_B = 24, PAD_T = 10, PAD_R = 8;
    const tMax = Math.max(...points.map((x) => x[0]), 1);
    const rMax = Math.max(...points.map((x) => x[1]), 0.1);
    const x = (t) => PAD_L + ((W - PAD_L - PAD_R) * t) / tMax;
    const y = (r) => H - PAD_B - ((H - PAD_B - PAD_T) * r) / rMax;
    const line = [[0, 0], ...points].map(([t, r]) => x(t).toFixed(1) + ',' + y(r).toFixed(1)).join(' ');
    const area = x(0).toFixed(1) + ',' + y(0).toFixed(1) + ' ' + line + ' ' + x(points[points.length - 1][0]).toFixed(1) + ',' + y(0).toFixed(1);
    const peak = Math.max(...points.map((p) => p[1]));
    const total = samples[samples.length - 1][1] - samples[0][1];
    const span = samples[samples.length - 1][0] - samples[0][0];
    const average = span > 0 ? total / span : 0;
    const summary = 'Pages per second over ' + duration(tMax) + ': peak ' + peak.toFixed(1) + ', average ' + average.toFixed(1) + '.';
    const titleId = 'chart-title-' + this.id;
    const chart = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-labelledby': titleId, class: 'throughput', preserveAspectRatio: 'none' },
      svg('title', { id: titleId }, summary),
      svg('line', { x1: PAD_L, y1: y(0), x2: W - PAD_R, y2: y(0), class: 'axis' }),
      svg('line', { x1: PAD_L, y1: PAD_T, x2: PAD_L, y2: y(0), class: 'axis' }),
      svg('line', { x1: PAD_L, y1: y(rMax), x2: W - PAD_R, y2: y(rMax), class: 'grid' }),
      svg('polygon', { points: area, class: 'area' }),
      svg('polyline', { points: line, class: 'line' }),
      svg('text', { x: PAD_L - 6, y: y(rMax) + 4, class: 'tick', 'text-anchor': 'end' }, rMax.toFixed(rMax < 10 ? 1 : 0)),
      svg('text', { x: PAD_L - 6, y: y(0), class: 'tick', 'text-anchor': 'end' }, '0'),
      svg('text', { x: W - PAD_R, y: H - 6, class: 'tick', 'text-anchor': 'end' }, duration(tMax).replace('\u00a0', ' ')),
      svg('text', { x: PAD_L, y: H - 6, class: 'tick' }, '0 s'));
    this.chart.append(h('figure', { class: 'chart-figure' }, chart,
      h('figcaption', { class: 'section-note' }, 'Pages per second. ', summary.replace('Pages per second over ', 'Over '))));
  }

  renderEvents(s) {
    const events = Array.isArray(s.events) ? s.events.slice() : [];
    if (s.webhook) {  // the webhook is sent after the task ended: its outcome is in the status
      const w = s.webhook;
      const tries = w.attempts ? ' after ' + w.attempts + ' attempt' + (w.attempts === 1 ? '' : 's') : '';
      const message = w.delivered ? 'webhook delivered' + tries
        : w.pending ? 'webhook: ' + (w.attempts ? 'attempt ' + w.attempts + ' failed' + (w.error ? ' (' + w.error + ')' : '') + ', trying again' : 'waiting to be sent')
          : 'webhook not delivered' + tries + (w.error ? ': ' + w.error : '');
      events.push({ at: null, kind: 'webhook', message });
    }
    const key = JSON.stringify([events, s.events_dropped]);
    if (this.events.dataset.key === key) return;
    this.events.dataset.key = key;
    clear(this.events);
    if (!events.length) {
      this.events.append(h('p', { class: 'muted' }, 'No events recorded for this task.'));
      return;
    }
    const list = h('ol', { class: 'event-log', 'aria-labelledby': 'happened-heading' });
    for (const event of events) {
      list.append(h('li', { class: 'event event-' + (event.kind || 'info'), 'data-kind': event.kind || 'info' },
        h('span', { class: 'event-time' }, event.at ? timeEl(event.at) : '—'),
        h('span', { class: 'event-kind' }, EVENT_LABEL[event.kind] || event.kind || 'Event'),
        h('span', { class: 'event-message' }, event.message || '')));
    }
    const parts = [list];
    if (s.events_dropped) parts.unshift(h('p', { class: 'section-note' }, num(s.events_dropped) + ' older events are not kept.'));
    this.events.append(...parts);
  }

  // ---------------------------------------------------------------- sources, result, delivery
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
      const skipped = done.skipped_pages ?? skippedIn(name);
      const total = one.pages_total ?? (s.status === 'completed' ? (done.pages ?? pagesDone) + (skipped || 0) : null);
      const bar = new Bar(null);
      bar.el.removeAttribute('aria-labelledby');
      bar.el.setAttribute('aria-label', 'Progress of source ' + name);
      const state = s.status === 'completed' && !skipped
        ? { percent: 100, text: '100\u00a0%' }
        : total ? { percent: (100 * pagesDone) / total, text: percentText((100 * pagesDone) / total) }
          : s.status === 'running' ? { indeterminate: true, text: 'total unknown' } : { percent: 0, text: '—' };
      bar.set(state);
      this.sourcesBody.append(h('tr', null,
        h('th', { scope: 'row', 'data-label': 'Source' }, name),
        h('td', { 'data-label': 'Progress' }, bar.el, bar.text),
        h('td', { class: 'num', 'data-label': 'Pages' }, pagesOf(pagesDone, total)),
        h('td', { class: 'num', 'data-label': 'Rows' }, num(one.rows ?? done.records)),
        h('td', { class: 'num', 'data-label': 'Requests' }, num(done.requests)),
        h('td', { class: 'num', 'data-label': 'Retries' }, num(done.retries)),
        h('td', { class: 'num', 'data-label': 'Skipped pages' }, num(skipped))));
    }
    this.sourcesNote.textContent = summary.length
      ? 'Requests, retries and skipped pages per source, as recorded when the task ended.'
      : 'Requests, retries and skipped pages per source are known once the task has finished; the totals are under Progress.';
  }

  renderResult(s) {
    const key = JSON.stringify([s.status, s.result, s.expired, s.partial, skippedCount(s), auth.token]);
    if (this.result.dataset.key === key) return;
    this.result.dataset.key = key;
    clear(this.result);
    if (s.status !== 'completed' || !s.result) return;
    const r = s.result;
    const skipped = skippedCount(s);
    this.result.append(h('h2', null, 'Result'),
      h('dl', { class: 'detail-grid' },
        h('div', null, h('dt', null, 'File'), h('dd', null, r.filename)),
        h('div', null, h('dt', null, 'Size'), h('dd', null, size(r.bytes))),
        h('div', null, h('dt', null, 'Rows'), h('dd', null, num(r.rows))),
        h('div', null, h('dt', null, 'Partial'), h('dd', null, s.partial || skipped ? 'yes: ' + num(skipped) + ' page' + (skipped === 1 ? ' was' : 's were') + ' skipped' : 'no')),
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
      list.append(h('li', null, 'Webhook: ', w.delivered ? 'delivered' : w.pending ? 'pending' : 'not delivered',
        w.attempts ? ' after ' + w.attempts + ' attempt' + (w.attempts === 1 ? '' : 's') : '',
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
    clear(this.spec).append(h('pre', { class: 'spec', tabindex: '0', 'aria-label': 'Job spec as submitted (JSON)' },
      h('code', null, JSON.stringify(data.spec, null, 2))));
    clear(this.effective);
    if (data.effective_spec) {
      this.effective.append(h('details', { class: 'effective' },
        h('summary', null, 'The effective spec: every default filled in, as the task ran'),
        h('pre', { class: 'spec', tabindex: '0', 'aria-label': 'Effective job spec (JSON)' },
          h('code', null, JSON.stringify(data.effective_spec, null, 2)))));
    }
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
      files.append(h('tr', null, h('th', { scope: 'row', 'data-label': 'File' }, f.name), h('td', { class: 'num', 'data-label': 'Rows' }, num(f.rows)),
        h('td', { class: 'num', 'data-label': 'Size' }, size(f.bytes)), h('td', { class: 'hash', 'data-label': 'SHA-256' }, f.sha256 || '—')));
    }
    this.manifest.append(h('h2', null, 'Manifest'),
      h('p', { class: 'section-note' }, 'Started ', timeEl(m.started_at), ', finished ', timeEl(m.finished_at),
        m.partial ? '. Partial: some pages were skipped.' : '. Complete: no page was skipped.'),
      h('div', { class: 'table-wrap', role: 'region', 'aria-label': 'Files', tabindex: '0' },
        h('table', { class: 'files stack' },
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

onStatus((s) => { if (detail && detail.id === s.task_id) detail.update(s); });
onForget((id) => { if (detail && detail.id === id) detail.missing(); });
onMode((w) => { if (detail && detail.id === w.id) detail.showLive(w); });

export function currentDetail() { return detail; }

export function closeDetail() { detail = null; }

export async function openTask(id, hooks, isCurrent) {
  detail = new TaskDetail(id, {
    ...hooks,
    problem: (s, text) => { if (detail && detail.id === id) detail.showProblem(text); },
    deleted: () => { location.hash = '#/'; },
  });
  const mine = detail;
  if (!/^task_[0-9a-f]{12}$/.test(id)) { mine.missing(); return; }
  const known = tasks.get(id);
  if (known) mine.update(known);
  try {
    const s = await api('GET', API + '/status/' + encodeURIComponent(id));
    if (detail === mine && !accept(s, 'load') && !known) mine.update(s);
  } catch (e) {
    if (detail !== mine) return;
    if (e.status === 404) { mine.missing(); return; }
    if (e.status !== 401 && e.status !== 0) showNotice([h('span', null, 'Could not load the task: ' + e.message)]);
  }
  if (detail === mine && isCurrent()) {
    const w = watch(id);  // a socket only when it is unfinished
    mine.showLive(w || watchers.get(id) || null);
  }
}
