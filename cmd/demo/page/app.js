// The demo page: the page's own chat (chat.js) against Caddy's ChatKit
// endpoint, the real <openai-chatkit> on the same endpoint when OpenAI's
// script loads, and the token flow (mint.js) when the block also mints.
import { CHATKIT_API, initChat } from './chat.js';
import { initMinting } from './mint.js';

const CHATKIT_SCRIPT = 'https://cdn.platform.openai.com/deployments/chatkit/chatkit.js';
const CHATKIT_TIMEOUT_MS = 5000;
// Any placeholder works on localhost; a real site uses the key from OpenAI's
// domain allowlist.
const LOCALHOST_DOMAIN_KEY = 'domain_pk_localhost_dev';

const $ = (id) => document.getElementById(id);

// loadConfig reads what cmd/demo wrote next to the page: the backend
// ("fake" or "openai"), the model, and whether the block mints.
async function loadConfig() {
  try {
    const res = await fetch('demo-config.json', { cache: 'no-store' });
    return await res.json();
  } catch (_) {
    return { backend: 'unknown' };
  }
}

function showBackend(cfg) {
  const el = $('backend');
  el.dataset.backend = cfg.backend;
  el.textContent = cfg.backend === 'fake'
    ? 'the built-in fake OpenAI (it answers "You said: …", word by word; no model runs)'
    : cfg.backend === 'openai' ? 'OpenAI, model ' + (cfg.model || '?') : 'unknown';
}

// loadChatKit loads the official script and resolves true once
// <openai-chatkit> is defined, false when that does not happen in time
// (the normal case offline).
function loadChatKit() {
  if (!window.customElements) return Promise.resolve(false);
  if (customElements.get('openai-chatkit')) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), CHATKIT_TIMEOUT_MS);
    customElements.whenDefined('openai-chatkit').then(() => {
      clearTimeout(timer);
      resolve(true);
    });
    const s = document.createElement('script');
    s.src = CHATKIT_SCRIPT;
    s.async = true;
    s.onerror = () => {
      clearTimeout(timer);
      resolve(false);
    };
    document.head.appendChild(s);
  });
}

// mountChatKit mounts the real web component against Caddy's endpoint: the
// self-hosted ChatKit integration, api: { url, domainKey }.
async function mountChatKit() {
  const note = $('chatkit-status');
  if (!(await loadChatKit())) {
    note.textContent = 'ChatKit script not reachable (offline?): the chat above speaks the same protocol';
    note.dataset.state = 'unavailable';
    return;
  }
  const el = document.createElement('openai-chatkit');
  el.id = 'chatkit-widget';
  $('chatkit').appendChild(el);
  el.setOptions({ api: { url: CHATKIT_API, domainKey: LOCALHOST_DOMAIN_KEY } });
  note.dataset.state = 'mounted';
  note.textContent = 'ChatKit mounted with api.url ' + CHATKIT_API + ': it shares the threads of the chat above.';
}

document.addEventListener('DOMContentLoaded', async () => {
  const cfg = await loadConfig();
  showBackend(cfg);
  // One request at a time until the visitor has a cookie, so two first
  // requests do not each get a new anonymous id.
  await initChat();
  if (cfg.minting) await initMinting();
  mountChatKit();
});
