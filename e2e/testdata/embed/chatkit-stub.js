// A stand-in for OpenAI's chatkit.js, which the offline test browser cannot
// load: it defines <openai-chatkit> and records what the embed gives it.
window.chatkitStub = { loads: (window.chatkitStub ? window.chatkitStub.loads : 0) + 1, calls: [], focused: 0 };
customElements.define('openai-chatkit', class extends HTMLElement {
  setOptions(options) { window.chatkitStub.calls.push(JSON.parse(JSON.stringify(options))); }
  focusComposer() { window.chatkitStub.focused++; return Promise.resolve(); }
});
