"use strict";
// InstructGLM Board, second part: Chat (streamed from the `instructglm serve` child), Evaluate and Export
// (queued jobs). Shares the helpers and `state` of board.js, which is loaded first.

// ------------------------------------------------------------------ chat
function showChatModels(status) {
  showCommands("chat-command", [status.command]);
  $("chat-status").textContent = t("chat.loaded");
  const had = new Set(state.chatModels);
  state.chatModels = status.models;
  $("chat-models").replaceChildren(...status.models.map((m, i) => el("label", {},
    Object.assign(el("input", {type: "checkbox", value: m}), {checked: had.has(m) || i === status.models.length - 1}),
    " " + m)));
}

async function loadChat() {
  const adapters = [...document.querySelectorAll("#chat-adapters input:checked")].map((x) => x.value);
  $("chat-status").textContent = t("busy");
  try {
    showChatModels(await api("POST", "/api/chat/start", {model: $("chat-model").value.trim(), adapters}));
  } catch (e) { $("chat-status").textContent = ""; throw e; }
}

function chatColumn(model) {
  let col = document.querySelector(`.chat-col[data-model="${CSS.escape(model)}"]`);
  if (!col) {
    col = el("div", {class: "chat-col", "data-model": model}, el("h4", {text: model}));
    $("chat-log").append(col);
  }
  return col;
}

async function sendChat() {
  const text = $("chat-input").value.trim();
  const models = [...document.querySelectorAll("#chat-models input:checked")].map((x) => x.value);
  if (!text || !models.length) return;
  $("chat-input").value = "";
  await Promise.all(models.map((m) => streamTo(m, text)));
}

async function streamTo(model, text) {
  const history = state.histories[model] = state.histories[model] || [];
  history.push({role: "user", content: text});
  const col = chatColumn(model);
  col.append(el("div", {class: "msg user", text}));
  const bubble = el("div", {class: "msg assistant"});
  col.append(bubble);
  const r = await fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model, messages: history, max_tokens: $("chat-max").value})});
  if (!r.ok) {
    const e = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
    bubble.className = "msg error"; bubble.textContent = e.error; history.pop(); return;
  }
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "", answer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const data = JSON.parse(line.slice(6));
        if (data.error) { bubble.className = "msg error"; bubble.textContent = data.error.message || data.error; continue; }
        const delta = (data.choices && data.choices[0].delta && data.choices[0].delta.content) || "";
        answer += delta;
        bubble.textContent = answer;
      }
    }
  }
  bubble.dataset.done = "1";
  history.push({role: "assistant", content: answer});
}

// ------------------------------------------------------------------ evaluate, export
function watchJob(id, logId, statusId, onDone) {
  clearInterval(state.jobPolls[logId]);
  const tick = async () => {
    const j = await api("GET", "/api/jobs/" + id);
    $(logId).textContent = j.log_tail;
    $(statusId).textContent = t("status." + j.status, j.status);
    $(statusId).className = "status " + j.status;
    if (!["running", "waiting"].includes(j.status)) { clearInterval(state.jobPolls[logId]); if (onDone) await onDone(j); }
  };
  state.jobPolls[logId] = setInterval(() => tick().catch((e) => showError(e.message)), 1000);
  return tick();
}

async function startEval() {
  const r = await api("POST", "/api/eval", {run: $("eval-run").value, data: $("eval-data").value,
    limit: $("eval-limit").value, compare_base: $("eval-base").checked, max_new_tokens: $("eval-max").value});
  showCommands("eval-commands", r.commands);
  $("eval-table").replaceChildren();
  await watchJob(r.job.id, "eval-log", "eval-status", async (j) => {
    if (j.status === "done") showMetrics((await api("GET", "/api/evals/" + r.name)).metrics);
  });
}

function showMetrics(m) {
  const systems = Object.keys(m.systems);
  const scores = m.overall.scores, delta = m.overall.delta || {};
  const metrics = Object.keys(scores[systems[0]] || {}).filter((k) => k !== "n");
  const heads = [...systems, ...Object.keys(delta).map((s) => "Δ " + s)];
  $("eval-table").replaceChildren(el("tr", {}, el("th", {text: t("eval.metric")}), ...heads.map((h) => el("th", {text: h}))),
    ...metrics.map((k) => el("tr", {}, el("td", {text: k}),
      ...systems.map((s) => el("td", {class: "num", text: scores[s] ? scores[s][k].toFixed(1) : "-"})),
      ...Object.keys(delta).map((s) => el("td", {class: "num", text: (delta[s][k] >= 0 ? "+" : "") + delta[s][k].toFixed(1)})))),
    el("tr", {}, el("td", {class: "muted", colspan: heads.length + 1, text: `n = ${m.n}`})));
}

async function startExport() {
  const r = await api("POST", "/api/export", {run: $("export-run").value, gguf: $("export-gguf").checked,
                                              quant: $("export-quant").value});
  showCommands("export-commands", r.commands);
  $("export-output").textContent = r.output;
  await watchJob(r.job.id, "export-log", "export-status");
}

