// The page's own chat: a small client of the ChatKit server protocol that
// Caddy's agent mode answers (one POST endpoint, a JSON body
// {"type", "params"}; the model-running types answer with an event stream,
// the others with JSON). It needs nothing from OpenAI's CDN, so the demo
// works offline; the real <openai-chatkit> talks to the same endpoint.

export const CHATKIT_API = '/api/chatkit';

const HISTORY_LIMIT = 20; // threads shown in the list
const ITEMS_PAGE = 50; // items fetched per items.list call when opening a long thread

const $ = (id) => document.getElementById(id);

const chat = {
  threadId: null, // the open thread; null for a new chat (created by the first message)
  controller: null, // aborts the running stream (the Stop button)
  parts: new Map(), // assistant item id -> its content parts' texts, as they stream
  annotations: new Map(), // assistant item id -> the citations streamed so far
};

// post sends one ChatKit request.
function post(type, params, signal) {
  return fetch(CHATKIT_API, {
    method: 'POST',
    credentials: 'same-origin',
    cache: 'no-store',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ type, params }),
    signal,
  });
}

// answerError turns a JSON error answer into an Error carrying the
// module's error code, status and request id.
async function answerError(res) {
  const body = await res.json().catch(() => null);
  const e = new Error((body && body.message) || 'HTTP ' + res.status);
  e.status = res.status;
  e.code = (body && body.error) || 'http_' + res.status;
  e.requestId = (body && body.request_id) || res.headers.get('X-Request-Id') || '';
  e.retryAfter = res.headers.get('Retry-After');
  return e;
}

// call is a request answered with JSON.
async function call(type, params) {
  const res = await post(type, params);
  if (!res.ok) throw await answerError(res);
  return res.json();
}

// sseParser returns a function fed the decoded text of an event stream as
// it arrives; it calls onData with the data of every complete event (the
// text/event-stream rules: lines end in LF, CR or CRLF, a blank line ends
// an event, several data lines join with LF, comments and other fields are
// ignored).
export function sseParser(onData) {
  let buf = '';
  let data = [];
  const line = (l) => {
    if (l === '') {
      if (data.length) onData(data.join('\n'));
      data = [];
      return;
    }
    if (l[0] === ':') return;
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') data.push(value);
  };
  return (text) => {
    buf += text;
    const eol = /\r\n|\r|\n/g;
    let start = 0;
    let m;
    while ((m = eol.exec(buf)) !== null) {
      // A CR at the very end may be the first half of a CRLF: wait for more.
      if (m[0] === '\r' && eol.lastIndex === buf.length) break;
      line(buf.slice(start, m.index));
      start = eol.lastIndex;
    }
    buf = buf.slice(start);
  };
}

// readEvents feeds the body of an event-stream answer to onEvent, one
// parsed event at a time, as the bytes arrive.
async function readEvents(res, onEvent) {
  const feed = sseParser((data) => {
    let ev;
    try {
      ev = JSON.parse(data);
    } catch (_) {
      return; // not ours to show
    }
    onEvent(ev);
  });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    feed(value);
  }
}

function setStatus(state, text) {
  const el = $('chat-status');
  el.dataset.state = state;
  el.textContent = text;
}

function setStreaming(on) {
  $('send').disabled = on;
  $('stop').disabled = !on;
  $('messages').setAttribute('aria-busy', String(on));
}

// showError shows a refusal or failure in words: the error event's message
// (a refused run says what happened and when to try again) or the JSON
// error of a request refused before it started.
function showError(code, message, retryAfter) {
  const el = $('chat-error');
  el.dataset.code = code;
  el.textContent = message + (retryAfter ? ' (Retry-After: ' + retryAfter + ' s)' : '');
}

function clearError() {
  const el = $('chat-error');
  el.dataset.code = '';
  el.textContent = '';
}

// itemText is what an item says: its text parts joined.
function itemText(item) {
  return (item.content || [])
    .map((c) => (c.type === 'input_text' || c.type === 'output_text' || c.type === 'input_tag' ? c.text || '' : ''))
    .join('');
}

function messageEl(id) {
  return document.querySelector('#messages li[data-item-id="' + CSS.escape(id) + '"]');
}

// renderItem adds a message for a user or assistant item, or updates the one
// already shown with that id.
function renderItem(item, state) {
  if (item.type !== 'user_message' && item.type !== 'assistant_message') return null;
  let li = messageEl(item.id);
  if (!li) {
    li = document.createElement('li');
    li.className = 'msg';
    li.dataset.itemId = item.id;
    li.dataset.role = item.type === 'user_message' ? 'user' : 'assistant';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = item.type === 'user_message' ? 'You' : 'Assistant';
    const text = document.createElement('div');
    text.className = 'text';
    li.append(who, text);
    $('messages').appendChild(li);
  }
  li.dataset.state = state;
  li.querySelector('.text').textContent = itemText(item);
  renderAttachments(li, item.attachments || []);
  renderSources(li, (item.content || []).flatMap((c) => c.annotations || []));
  li.scrollIntoView({ block: 'end' });
  return li;
}

// renderAttachments names a message's files, with the picture when the
// server gave a preview link.
function renderAttachments(li, attachments) {
  let box = li.querySelector('.files');
  if (!attachments.length) {
    if (box) box.remove();
    return;
  }
  if (!box) {
    box = document.createElement('p');
    box.className = 'files';
    li.appendChild(box);
  }
  box.replaceChildren(...attachments.map((a) => {
    const el = document.createElement('span');
    el.className = 'file';
    if (a.preview_url && /^https?:\/\//.test(a.preview_url)) {
      const img = document.createElement('img');
      img.src = a.preview_url;
      img.alt = '';
      el.appendChild(img);
    }
    el.append('📎 ' + (a.name || 'file'));
    return el;
  }));
}

// renderSources lists an answer's citations under its text: a link for a
// web page, the name for a file. (Not list items: the page's messages are.)
function renderSources(li, annotations) {
  let box = li.querySelector('.sources');
  if (!annotations.length) {
    if (box) box.remove();
    return;
  }
  if (!box) {
    box = document.createElement('p');
    box.className = 'sources';
    li.appendChild(box);
  }
  box.replaceChildren(
    'Sources: ',
    ...annotations.map((a, i) => {
      const src = a.source || {};
      let el;
      if (src.type === 'url' && /^https?:\/\//.test(src.url || '')) {
        el = document.createElement('a');
        el.href = src.url;
        el.target = '_blank';
        el.rel = 'noopener noreferrer';
      } else {
        el = document.createElement('span');
      }
      el.className = 'source';
      el.textContent = '[' + (i + 1) + '] ' + (src.title || src.url || src.filename || 'source');
      return el;
    }),
  );
}

// applyUpdate applies a thread.item.updated event to a streaming answer.
function applyUpdate(itemId, u) {
  const li = messageEl(itemId);
  const parts = chat.parts.get(itemId);
  if (!li || !parts) return;
  const i = u.content_index || 0;
  switch (u.type) {
    case 'assistant_message.content_part.added':
    case 'assistant_message.content_part.done':
      parts[i] = (u.content && u.content.text) || '';
      break;
    case 'assistant_message.content_part.text_delta':
      parts[i] = (parts[i] || '') + (u.delta || '');
      break;
    case 'assistant_message.content_part.annotation_added': {
      const live = chat.annotations.get(itemId) || [];
      live.push(u.annotation);
      chat.annotations.set(itemId, live);
      renderSources(li, live);
      return;
    }
    default:
      return;
  }
  li.querySelector('.text').textContent = parts.join('');
}

function setThread(id, title) {
  chat.threadId = id;
  $('thread-title').textContent = id ? title || 'Untitled' : 'New chat';
  const hash = id ? '#thread=' + encodeURIComponent(id) : '';
  if (location.hash !== hash) history.replaceState(null, '', location.pathname + location.search + hash);
  for (const b of document.querySelectorAll('#threads button')) {
    b.setAttribute('aria-current', String(b.dataset.threadId === id));
  }
}

// handleEvent shows one stream event.
function handleEvent(ev, res) {
  switch (ev.type) {
    case 'thread.created':
      setThread(ev.thread.id, ev.thread.title);
      break;
    case 'thread.updated':
      if (ev.thread.id === chat.threadId) setThread(ev.thread.id, ev.thread.title);
      break;
    case 'thread.item.added':
      if (ev.item.type === 'assistant_message') {
        chat.parts.set(ev.item.id, (ev.item.content || []).map((c) => c.text || ''));
        setStatus('streaming', 'streaming…'); // any tool has finished
      }
      renderItem(ev.item, 'streaming');
      break;
    case 'thread.item.updated':
      applyUpdate(ev.item_id, ev.update);
      break;
    case 'thread.item.done':
      chat.parts.delete(ev.item.id);
      chat.annotations.delete(ev.item.id);
      renderItem(ev.item, 'done');
      if (ev.item.type === 'user_message') $('input').value = ''; // saved: the composer can let go of it
      break;
    case 'progress_update':
      // A hosted tool is running ("Searching caddyserver.com…").
      setStatus('streaming', ev.text || 'working…');
      break;
    case 'stream_options':
      $('stop').disabled = !(ev.stream_options && ev.stream_options.allow_cancel);
      break;
    case 'error':
      for (const li of document.querySelectorAll('#messages li[data-state="streaming"]')) li.dataset.state = 'failed';
      showError(ev.code || 'error', ev.message || 'The answer failed.' + (ev.allow_retry ? ' Try again.' : ''), res.headers.get('Retry-After'));
      break;
    case 'notice':
      showError('notice', ev.message || '');
      break;
  }
}

// send posts the composer's text to the open thread, or starts a thread
// with it, and shows the answer as it streams.
async function send(text) {
  const input = { content: [{ type: 'input_text', text }], attachments: [], inference_options: {} };
  const file = $('attach').files[0];
  if (file) {
    try {
      input.attachments.push(await upload(file));
    } catch (e) {
      showError(e.code || 'upload_failed', 'The file could not be attached: ' + e.message);
      return;
    }
    $('attach').value = '';
  }
  const [type, params] = chat.threadId
    ? ['threads.add_user_message', { thread_id: chat.threadId, input }]
    : ['threads.create', { input }];
  const controller = new AbortController();
  chat.controller = controller;
  clearError();
  setStreaming(true);
  setStatus('streaming', 'streaming…');
  try {
    const res = await post(type, params, controller.signal);
    if (!(res.headers.get('Content-Type') || '').startsWith('text/event-stream')) {
      const e = await answerError(res);
      showError(e.code, e.message, e.retryAfter);
      setStatus('error', type + ' answered ' + res.status);
      return;
    }
    await readEvents(res, (ev) => handleEvent(ev, res));
    setStatus('done', $('chat-error').dataset.code ? 'ended with an error' : 'done');
  } catch (err) {
    if (controller.signal.aborted) {
      // The server saves what it streamed so far; so does the page.
      for (const li of document.querySelectorAll('#messages li[data-state="streaming"]')) li.dataset.state = 'stopped';
      setStatus('stopped', 'stopped');
    } else {
      showError('network_error', 'The connection broke: ' + (err && err.message ? err.message : err));
      setStatus('error', 'connection broke');
    }
  } finally {
    chat.controller = null;
    setStreaming(false);
    refreshThreads();
  }
}

// upload attaches a file the two-phase way the web component does: ask for
// an attachment (attachments.create), send the bytes to its signed upload
// link, and return its id for the message.
async function upload(file) {
  const att = await call('attachments.create', { name: file.name, size: file.size, mime_type: file.type || 'application/octet-stream' });
  const to = att.upload_descriptor || { url: att.upload_url, method: 'POST' };
  const form = new FormData();
  form.append('file', file);
  const res = await fetch(to.url, { method: to.method || 'POST', body: form });
  if (!res.ok) {
    const e = await answerError(res);
    throw Object.assign(new Error(e.message), { code: e.code });
  }
  return att.id;
}

// refreshThreads lists the visitor's threads, newest first (threads.list).
export async function refreshThreads() {
  let page;
  try {
    page = await call('threads.list', { limit: HISTORY_LIMIT, order: 'desc' });
  } catch (e) {
    showError(e.code, 'Listing threads failed: ' + e.message);
    return;
  }
  const list = $('threads');
  list.textContent = '';
  for (const t of page.data) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.threadId = t.id;
    b.setAttribute('aria-current', String(t.id === chat.threadId));
    const title = document.createElement('span');
    title.className = 'title';
    title.textContent = t.title || 'Untitled';
    const when = document.createElement('time');
    when.dateTime = t.created_at;
    when.textContent = new Date(t.created_at).toLocaleString();
    b.append(title, when);
    b.addEventListener('click', () => openThread(t.id));
    li.appendChild(b);
    list.appendChild(li);
  }
  list.dataset.count = String(page.data.length);
}

// openThread shows a saved thread: threads.get_by_id gives the thread and
// its first items, items.list the rest.
export async function openThread(id) {
  if (chat.controller) return; // one stream at a time
  clearError();
  let t;
  try {
    t = await call('threads.get_by_id', { thread_id: id });
  } catch (e) {
    showError(e.code, e.status === 404 ? 'That thread does not exist (or is not yours).' : e.message);
    setThread(null);
    return;
  }
  $('messages').textContent = '';
  chat.parts.clear();
  setThread(t.id, t.title);
  let page = t.items;
  for (;;) {
    for (const item of page.data) renderItem(item, 'done');
    if (!page.has_more || !page.after) break;
    page = await call('items.list', { thread_id: t.id, after: page.after, order: 'asc', limit: ITEMS_PAGE });
  }
  setStatus('idle', 'opened');
}

function newChat() {
  if (chat.controller) return;
  $('messages').textContent = '';
  chat.parts.clear();
  clearError();
  setThread(null);
  setStatus('idle', 'idle');
  $('input').focus();
}

// initChat wires the composer and loads the thread list (and the thread
// the address names, after a reload).
export async function initChat() {
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('input').value.trim();
    if (text && !chat.controller) send(text);
  });
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { // not while an IME composes
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('stop').addEventListener('click', () => chat.controller && chat.controller.abort());
  $('new-chat').addEventListener('click', newChat);
  await refreshThreads();
  const m = /^#thread=(.+)$/.exec(location.hash);
  if (m) await openThread(decodeURIComponent(m[1]));
}
