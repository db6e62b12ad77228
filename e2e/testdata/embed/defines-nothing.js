// A script that loads but is not ChatKit: it defines no <openai-chatkit>.
window.notChatKit = true;
