// The token flow, for a block that still mints client secrets (a workflow
// is configured): getClientSecret() is the function a hosted-mode ChatKit
// page hands to <openai-chatkit>; the Start and Refresh buttons call it.

const START_PATH = '/api/chatkit/start';
const REFRESH_PATH = '/api/chatkit/refresh';
const SHOWN_HEADERS = ['RateLimit', 'RateLimit-Policy', 'Retry-After'];
const MAX_LOG = 20;

// retryAt is when the last error's Retry-After says to try again (Unix
// seconds), shown as a countdown under the error.
const state = { secret: null, expiresAt: null, retryAt: null };

const $ = (id) => document.getElementById(id);

// mask shows only the first 6 characters of a secret.
function mask(secret) {
  return secret.slice(0, 6) + '…';
}

function setStatus(kind, text) {
  const el = $('status');
  el.dataset.state = kind;
  el.textContent = text;
}

// post calls the start or refresh endpoint and records what came back.
// It resolves to the parsed 2xx body and throws on anything else.
async function post(kind, currentClientSecret) {
  // Same-origin, with the anonymous-visitor cookie. Start sends no body
  // and no Content-Type, like the WordPress client (a CORS simple request).
  const init = { method: 'POST', credentials: 'same-origin', cache: 'no-store' };
  let path = START_PATH;
  if (kind === 'refresh') {
    path = REFRESH_PATH;
    init.headers = { 'Content-Type': 'application/json' };
    init.body = JSON.stringify({ currentClientSecret });
  }
  setStatus('busy', kind + '…');
  const began = performance.now();
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    const error = { error: 'network_error', message: String(err && err.message || err), request_id: '' };
    showHeaders(null);
    showError(0, error);
    logCall(kind, 0, began, '', 'network error');
    setStatus('error', kind + ' failed');
    throw new Error(kind + ' failed: ' + error.message);
  }
  showHeaders(res.headers);
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  const requestID = res.headers.get('X-Request-Id') || '';
  if (!res.ok || !body || typeof body.client_secret !== 'string') {
    const error = body && typeof body.error === 'string'
      ? body
      : { error: res.ok ? 'invalid_response' : 'http_' + res.status, message: 'the answer was not the expected JSON', request_id: requestID };
    showError(res.status, error, retryAfter(res.headers));
    logCall(kind, res.status, began, requestID, error.error);
    setStatus('error', kind + ' failed (' + res.status + ')');
    throw new Error(kind + ' failed: ' + res.status + ' ' + error.error);
  }
  state.secret = body.client_secret;
  state.expiresAt = typeof body.expires_at === 'number' ? body.expires_at : null;
  clearError();
  logCall(kind, res.status, began, requestID, 'secret ' + mask(body.client_secret));
  setStatus('ok', kind === 'start' ? 'started' : 'refreshed');
  renderSecret();
  return body;
}

// getClientSecret implements ChatKit's contract: null starts a session,
// anything else refreshes it; it resolves to the bare client_secret string
// and throws on any non-2xx answer.
export async function getClientSecret(currentClientSecret) {
  const body = currentClientSecret == null
    ? await post('start')
    : await post('refresh', currentClientSecret);
  return body.client_secret;
}

function renderSecret() {
  $('secret').textContent = state.secret ? mask(state.secret) : 'none';
  $('refresh').disabled = !state.secret;
  $('expires').dataset.expiresAt = state.expiresAt == null ? '' : String(state.expiresAt);
  tick();
}

// retryAfter reads a Retry-After header in seconds (the module never sends
// the date form) as a Unix time, or null.
function retryAfter(headers) {
  const v = headers.get('Retry-After');
  if (v === null || !/^\d+$/.test(v.trim())) return null;
  return Math.floor(Date.now() / 1000) + Number(v.trim());
}

// tick updates the expiry and retry countdowns.
function tick() {
  tickRetry();
  const el = $('expires');
  if (state.expiresAt == null) {
    el.textContent = '—';
    el.dataset.state = '';
    return;
  }
  const left = state.expiresAt - Math.floor(Date.now() / 1000);
  const at = new Date(state.expiresAt * 1000).toLocaleTimeString();
  if (left <= 0) {
    el.textContent = 'expired ' + duration(-left) + ' ago (' + at + ')';
    el.dataset.state = 'expired';
  } else {
    el.textContent = 'in ' + duration(left) + ' (' + at + ')';
    el.dataset.state = left <= 60 ? 'soon' : 'ok';
  }
}

function duration(secs) {
  const m = Math.floor(secs / 60);
  const s = secs % 60;
  return m + ':' + String(s).padStart(2, '0');
}

function showHeaders(headers) {
  const rid = headers && headers.get('X-Request-Id');
  $('request-id').textContent = rid || '—';
  const box = $('ratelimit');
  box.textContent = '';
  const present = headers ? SHOWN_HEADERS.filter((h) => headers.get(h) !== null) : [];
  if (present.length === 0) {
    box.textContent = '—';
    return;
  }
  for (const h of present) {
    const line = document.createElement('div');
    const code = document.createElement('code');
    code.textContent = h + ': ' + headers.get(h);
    line.appendChild(code);
    box.appendChild(line);
  }
}

function showError(status, e, retryAt) {
  const el = $('error');
  el.dataset.error = e.error || 'error';
  el.textContent = (status ? 'HTTP ' + status + ' · ' : '') + 'error: ' + (e.error || '?') +
    '\nmessage: ' + (e.message || '') +
    '\nrequest_id: ' + (e.request_id || '—');
  state.retryAt = retryAt == null ? null : retryAt;
  if (state.retryAt != null) {
    el.appendChild(document.createTextNode('\n'));
    const retry = document.createElement('span');
    retry.id = 'retry';
    el.appendChild(retry);
    tickRetry();
  }
}

// tickRetry counts down to the time Retry-After gave.
function tickRetry() {
  const el = $('retry');
  if (!el || state.retryAt == null) return;
  const left = state.retryAt - Math.floor(Date.now() / 1000);
  const at = new Date(state.retryAt * 1000).toLocaleTimeString();
  el.textContent = left > 0
    ? 'retry after: ' + duration(left) + ' (at ' + at + ')'
    : 'retry after: now (since ' + at + ')';
}

function clearError() {
  const el = $('error');
  el.dataset.error = '';
  el.textContent = 'none';
  state.retryAt = null;
}

// logCall adds a row to the call log: time, call, status, duration, what
// came back and the request id, in columns.
function logCall(kind, status, began, requestID, note) {
  const li = document.createElement('li');
  const ms = Math.round(performance.now() - began);
  const cells = [
    ['when', new Date().toLocaleTimeString()],
    ['kind', kind],
    ['code', status ? String(status) : '—'],
    ['ms', ms + ' ms'],
    ['note', note],
    ['rid', requestID],
  ];
  cells.forEach(([cls, text], i) => {
    if (i > 0) li.appendChild(document.createTextNode(' '));
    const cell = document.createElement('span');
    cell.className = cls;
    cell.textContent = text;
    li.appendChild(cell);
  });
  if (!(status >= 200 && status < 300)) li.className = 'bad';
  const log = $('log');
  log.prepend(li);
  while (log.children.length > MAX_LOG) log.lastChild.remove();
}

// initMinting shows the token-flow card and starts a session, as a
// hosted-mode page does on load.
export function initMinting() {
  $('minting').hidden = false;
  $('start').addEventListener('click', () => getClientSecret(null).catch(() => {}));
  $('refresh').addEventListener('click', () => {
    if (state.secret) getClientSecret(state.secret).catch(() => {});
  });
  setInterval(tick, 1000);
  return getClientSecret(null).catch(() => {});
}
