"use strict";
// InstructGLM Board, second part: Chat (streamed from the `instructglm serve` child), Evaluate and Export
// (queued jobs). Shares the helpers and `state` of board.js, which is loaded first.

// ------------------------------------------------------------------ chat
function showChatModels(status) {
  showCommands("chat-command", [status.command]);
  $("chat-status").textContent = t("chat.loaded");
  $("chat-status").dataset.i18n = "chat.loaded";  // so a language switch rewrites it
  const had = new Set(state.chatModels);
  state.chatModels = status.models;
  $("chat-models").replaceChildren(...status.models.map((m, i) => el("label", {},
    Object.assign(el("input", {type: "checkbox", value: m}), {checked: had.has(m) || i === status.models.length - 1}),
    " " + m)));
}

async function loadChat() {
  const adapters = [...document.querySelectorAll("#chat-adapters input:checked")].map((x) => x.value);
  $("chat-status").textContent = t("busy");
  $("chat-status").dataset.i18n = "busy";
  try {
    showChatModels(await api("POST", "/api/chat/start", {model: $("chat-model").value.trim(), adapters}));
  } catch (e) { $("chat-status").textContent = ""; delete $("chat-status").dataset.i18n; throw e; }
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
    bubble.className = "msg error"; bubble.replaceChildren(...errorNodes(e)); history.pop(); return;
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
        if (data.error) {  // the board's relay sends {error, key|kind}; the model server {error: {message}}
          bubble.className = "msg error";
          bubble.replaceChildren(...errorNodes(typeof data.error === "string" ? data : {error: data.error.message}));
          continue;
        }
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
// A job's progress (which command of how many, infer's answered rows), what it wrote, and why it failed.
function showProgress(prefix, j) {
  const box = $(prefix + "-progress"), p = j.progress;
  box.hidden = false;
  box.querySelector("progress").value = p.fraction;
  const stage = fill(t("progress.stage"), {i: Math.max(1, p.stage), n: p.stages, name: "instructglm " + p.name});
  const rows = p.total ? " · " + fill(t("progress.rows"), {done: p.done, total: p.total}) : "";
  const time = p.elapsed_s !== null && p.elapsed_s !== undefined ? " · " + fill(t("progress.elapsed"), {s: p.elapsed_s}) : "";
  box.querySelector(".text").textContent = `${Math.round(100 * p.fraction)}% · ` +
    (j.status === "running" ? stage + rows : t("status." + j.status, j.status)) + time;
  box.className = "progress " + j.status;
  const size = (n) => n >= 2 ** 30 ? (n / 2 ** 30).toFixed(2) + " GB" : n >= 2 ** 20 ? (n / 2 ** 20).toFixed(1) + " MB"
    : n >= 1024 ? (n / 1024).toFixed(1) + " KB" : n + " B";
  $(prefix + "-written").replaceChildren(...(j.outputs.length ? [el("div", {class: "muted", text: t("progress.written")}),
    ...j.outputs.map((o) => el("div", {}, el("code", {text: o.path + (o.dir ? "/" : "")}), " ", el("span", {class: "muted", text: size(o.bytes)})))] : []));
}

function watchJob(id, prefix, onDone) {
  clearInterval(state.jobPolls[prefix]);
  state.jobViews = state.jobViews || {};
  const tick = async () => {
    const j = await api("GET", "/api/jobs/" + id);
    state.jobViews[prefix] = j;
    $(prefix + "-log").textContent = j.log_tail;
    $(prefix + "-log").scrollTop = $(prefix + "-log").scrollHeight;
    $(prefix + "-status").textContent = t("status." + j.status, j.status);
    $(prefix + "-status").dataset.i18n = "status." + j.status;
    $(prefix + "-status").className = "status " + j.status;
    showProgress(prefix, j);
    if (!["running", "waiting"].includes(j.status)) {
      clearInterval(state.jobPolls[prefix]);
      if (j.failure) showError(j.failure);
      if (onDone) await onDone(j);
    }
  };
  state.jobPolls[prefix] = setInterval(() => tick().catch(fail), 1000);
  return tick();
}

async function startEval() {
  const r = await api("POST", "/api/eval", {run: $("eval-run").value, data: $("eval-data").value,
    limit: $("eval-limit").value, compare_base: $("eval-base").checked, max_new_tokens: $("eval-max").value});
  showCommands("eval-commands", r.commands);
  $("eval-table").replaceChildren();
  state.metrics = null;
  $("eval-legend").hidden = true;
  await watchJob(r.job.id, "eval", async (j) => {
    if (j.status === "done") showMetrics((await api("GET", "/api/evals/" + r.name)).metrics);
  });
}

// The metrics table: each metric's readable name in the chosen language, what it measures as a tooltip,
// and its key (as in metrics.json and the CLI's table) in small print, so the two can be matched.
function showMetrics(m) {
  state.metrics = m;
  const systems = Object.keys(m.systems);
  const scores = m.overall.scores, delta = m.overall.delta || {};
  const metrics = Object.keys(scores[systems[0]] || {}).filter((k) => k !== "n");
  const heads = [...systems, ...Object.keys(delta).map((s) => "Δ " + s)];
  const num = (v, k, signed) => typeof v !== "number" ? "-"  // scores are % with one decimal; a margin is not
    : (signed && v >= 0 ? "+" : "") + v.toFixed(k === "mean_margin" ? 4 : 1);
  $("eval-table").replaceChildren(el("tr", {}, el("th", {text: t("eval.metric")}), ...heads.map((h) => el("th", {text: h}))),
    ...metrics.map((k) => el("tr", {"data-metric": k},
      el("td", {title: `${t("metric_help." + k, "")} (${k})`}, el("span", {class: "metric-name", text: t("metric." + k, k)}),
         " ", el("code", {class: "metric-key", text: k})),
      ...systems.map((s) => el("td", {class: "num", text: num(scores[s] && scores[s][k], k)})),
      ...Object.keys(delta).map((s) => el("td", {class: "num", text: num(delta[s][k], k, true)})))),
    el("tr", {}, el("td", {class: "muted", colspan: heads.length + 1, text: `n = ${m.n}`})));
  $("eval-legend").hidden = false;
}

async function startExport() {
  const r = await api("POST", "/api/export", {run: $("export-run").value, gguf: $("export-gguf").checked,
                                              quant: $("export-quant").value});
  showCommands("export-commands", r.commands);
  $("export-output").textContent = r.output;
  await watchJob(r.job.id, "export");
}

// After a language switch: the parts these pages drew themselves.
function redrawTools() {
  if (state.metrics) showMetrics(state.metrics);
  for (const [prefix, j] of Object.entries(state.jobViews || {})) showProgress(prefix, j);
}
