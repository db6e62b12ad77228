// embed.js, served by Caddy's chatkit module at <agent path>/embed.js.
//
// One tag, <script src="/api/chatkit/embed.js" defer> (and its end tag), puts the chat
// on a page: this script loads OpenAI's ChatKit script (unless the page did),
// then mounts <openai-chatkit> against the agent with the options of the
// Caddyfile's agent block, behind a chat button (launcher on) or in the
// page's first [data-chatkit] element (launcher off). When it cannot, it says
// why in the browser console and shows nothing.
//
// The object below is written by Caddy when its config loads (JSON, with <, >
// and & escaped). Its `options` are ChatKitOptions (chatkit-js,
// packages/chatkit/types/index.d.ts): api {domainKey, uploadStrategy},
// theme {colorScheme, color: {accent: {primary, level}}}, startScreen
// {greeting, prompts: [{label, prompt}]}, composer {placeholder, attachments,
// dictation}. This script adds what only the page knows, api.url (absolute,
// from location.origin) and, for theme auto, theme.colorScheme, and passes
// the rest to setOptions untouched: features turned on in the Caddyfile
// (uploads, dictation) arrive as options, with no change here. Nothing in it
// is secret.
(() => {
  'use strict';
  const config = /*@caddy-chatkit-config*/{};

  const tag = '[caddy-chatkit embed.js]';
  const fail = (message) => console.error(`${tag} ${message}`);
  // How long OpenAI's script may take to define <openai-chatkit>: after it
  // loaded (it may define the element a little later), and in all.
  const graceAfterLoadMs = 3000;
  const loadTimeoutMs = 30000;

  if (window.caddyChatKitEmbed) {
    console.warn(`${tag} is included twice; the second copy does nothing`);
    return;
  }
  const state = { element: null, open: false };
  window.caddyChatKitEmbed = state;

  const options = config.options || {};
  if (!options.api || !options.api.domainKey) {
    fail('no domain key, so the chat is not shown: add "domain_key <key>" to the agent block of the Caddyfile. ' +
      "The key comes from your OpenAI organization's domain allowlist (platform.openai.com: Settings, " +
      `Organization, Security, Domain allowlist), where this site's host name (${location.hostname}) must be registered.`);
    return;
  }

  // theme auto: ChatKit has only light and dark, so the page decides, and
  // follows the visitor's setting when it changes.
  const darkQuery = config.autoColorScheme && window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;

  // The full options every time: setOptions replaces, it never merges
  // (OpenAIChatKit.setOptions in chatkit-js's types).
  const chatkitOptions = () => {
    const o = JSON.parse(JSON.stringify(options));
    o.api.url = new URL(config.path, location.origin).href;
    if (darkQuery) {
      o.theme = o.theme || {};
      o.theme.colorScheme = darkQuery.matches ? 'dark' : 'light';
    }
    return o;
  };

  const mount = (container) => {
    const el = document.createElement('openai-chatkit');
    el.className = 'caddy-chatkit-element';
    el.setOptions(chatkitOptions());
    el.addEventListener('chatkit.error', (event) => {
      const error = event.detail && event.detail.error;
      fail(`ChatKit reported an error: ${error && error.message ? error.message : error}`);
    });
    container.appendChild(el);
    state.element = el;
    return el;
  };

  if (darkQuery) {
    const follow = () => {
      if (state.element) state.element.setOptions(chatkitOptions());
    };
    if (darkQuery.addEventListener) darkQuery.addEventListener('change', follow);
    else if (darkQuery.addListener) darkQuery.addListener(follow);
  }

  // OpenAI's script, unless the page loaded it already; resolves once
  // <openai-chatkit> is defined. A failure is reported, but a late
  // definition still mounts the chat.
  const chatkitDefined = () => {
    const defined = customElements.whenDefined('openai-chatkit');
    if (customElements.get('openai-chatkit')) return defined;
    const src = new URL(config.scriptURL, location.href).href;
    let reported = false;
    const report = (why) => {
      if (reported || customElements.get('openai-chatkit')) return;
      reported = true;
      fail(why);
    };
    let script = [...document.scripts].find((s) => s.src === src);
    if (!script) {
      script = document.createElement('script');
      script.src = src;
      script.async = true;
      document.head.appendChild(script);
    }
    script.addEventListener('error', () => report(
      `OpenAI's ChatKit script ${src} could not be loaded, so the chat is not shown. ` +
      'Is it blocked by a content or ad blocker, by a Content-Security-Policy (script-src and frame-src need ' +
      `${new URL(src).origin}), or is the network down?`));
    script.addEventListener('load', () => setTimeout(() => report(
      `OpenAI's ChatKit script ${src} loaded but did not define <openai-chatkit>, so the chat is not shown. ` +
      'Is script_url pointing at the right script?'), graceAfterLoadMs));
    setTimeout(() => report(
      `<openai-chatkit> is still not defined ${loadTimeoutMs / 1000}s after loading ${src} began ` +
      '(a slow network?); the chat appears if it loads later.'), loadTimeoutMs);
    return defined;
  };

  const style = () => {
    const css = document.createElement('style');
    css.id = 'caddy-chatkit-style';
    css.textContent = `
.caddy-chatkit-launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;width:56px;height:56px;
  border:0;border-radius:50%;padding:0;display:flex;align-items:center;justify-content:center;cursor:pointer;
  color:#fff;background:#111;box-shadow:0 4px 16px rgba(0,0,0,.25)}
.caddy-chatkit-launcher:focus-visible{outline:3px solid #2563eb;outline-offset:3px}
.caddy-chatkit-launcher svg{width:26px;height:26px;fill:none;stroke:currentColor;stroke-width:2}
.caddy-chatkit-panel{position:fixed;right:20px;bottom:88px;z-index:2147483000;width:min(400px,calc(100vw - 40px));
  height:min(640px,calc(100vh - 120px));border-radius:16px;overflow:hidden;background:#fff;
  box-shadow:0 8px 32px rgba(0,0,0,.3)}
.caddy-chatkit-panel[hidden]{display:none!important}
.caddy-chatkit-element{display:block;width:100%;height:100%}
[data-chatkit]>.caddy-chatkit-element{min-height:480px}`;
    document.head.appendChild(css);
  };

  // launcher on: a real button that opens and closes a panel; the element
  // is created on the first open, so pages nobody chats on load no frame.
  const launch = () => {
    const panel = document.createElement('div');
    panel.id = 'caddy-chatkit-panel';
    panel.className = 'caddy-chatkit-panel';
    panel.setAttribute('role', 'dialog');
    panel.setAttribute('aria-label', 'Chat');
    panel.hidden = true;

    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'caddy-chatkit-launcher';
    button.setAttribute('aria-controls', panel.id);
    button.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false">' +
      '<path d="M21 12a8 8 0 0 1-11.6 7.1L4 20l1-4.6A8 8 0 1 1 21 12z"/></svg>';
    const accent = options.theme && options.theme.color && options.theme.color.accent;
    if (accent && accent.primary) button.style.background = accent.primary; // CSSOM: an invalid value is ignored

    const show = (open) => {
      state.open = open;
      panel.hidden = !open;
      button.setAttribute('aria-expanded', String(open));
      button.setAttribute('aria-label', open ? 'Close chat' : 'Open chat');
      if (!open) return;
      const el = state.element || mount(panel);
      // focusComposer returns a promise; it may fail while the frame loads.
      if (typeof el.focusComposer === 'function') Promise.resolve().then(() => el.focusComposer()).catch(() => {});
    };
    button.addEventListener('click', () => show(!state.open));
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && state.open) {
        show(false);
        button.focus();
      }
    });
    show(false);
    document.body.append(panel, button);
    state.button = button;
  };

  // launcher off: the page says where the chat goes.
  const fill = () => {
    const container = document.querySelector('[data-chatkit]');
    if (!container) {
      fail('launcher is off, but the page has no element with a data-chatkit attribute to hold the chat: ' +
        'add one where the chat belongs, e.g. <div data-chatkit style="height:600px"></div>, or turn launcher on.');
      return;
    }
    mount(container);
  };

  const domReady = new Promise((resolve) => {
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', resolve, { once: true });
    else resolve();
  });

  // The button appears only once ChatKit can open: a blocked script leaves
  // no dead button on the page.
  Promise.all([domReady, chatkitDefined()]).then(() => {
    style();
    if (config.launcher) launch();
    else fill();
  });
})();
