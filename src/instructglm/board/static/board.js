"use strict";
// InstructGLM Board: one small script, no framework. Every action asks the board's JSON API, which
// runs an `instructglm` command and answers with the command line it ran; errors come back as
// {"error": "one line", "key"+"params" | "kind"} and are shown at the top of the page in the chosen
// language: the board's own message from its key, or a CLI error's kind explained above its own line.
const $ = (id) => document.getElementById(id);
const state = {lang: localStorage.getItem("board-lang") || "en", texts: {en: {}, zh: {}}, schema: null,
               current: null, poll: null, jobPolls: {}, chatModels: [], histories: {}, lastCommand: ""};
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

function t(key, fallback) {
  const own = state.texts[state.lang] || {};
  return own[key] !== undefined ? own[key] : (fallback !== undefined ? fallback : (state.texts.en[key] || key));
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// An error as the page shows it: {text} for the board's own messages (its template filled in the chosen
// language), {text, line} for the CLI's (what its kind of mistake means, then the CLI's line verbatim,
// which names the file, line or flag).
function fill(template, params) {
  return template.replace(/\{(\w+)\}/g, (m, k) => params[k] === undefined ? m
    : k === "what" ? t("what." + params[k], params[k]) : params[k]);
}

function errorParts(p) {
  if (typeof p === "string") return {text: p};
  if (p.key) return {text: fill(t("err." + p.key, p.error), p.params || {})};
  return {text: t("why." + (p.kind || "other"), t("why.other")), line: p.error};
}

function errorNodes(p) {
  const parts = errorParts(p);
  const nodes = [el("div", {class: "why"}, el("strong", {text: t("error")}), parts.text)];
  if (parts.line) nodes.push(el("div", {class: "why-head", text: t("why.head")}),
                             el("code", {class: "verbatim", text: parts.line}));
  return nodes;
}

function showError(p) {
  state.lastError = p || null;  // shown again in the other language when it is switched
  const box = $("error");
  box.replaceChildren(...(p ? errorNodes(p) : []));
  box.hidden = !p;
}

const fail = (e) => showError(e.payload || e.message);
const boardError = (key, params) => Object.assign(new Error(fill(t("err." + key), params || {})),
                                                  {payload: {key, params: params || {}}});

async function api(method, path, body, raw) {
  const init = {method, headers: {}};
  if (raw !== undefined) { init.body = raw; init.headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  let r;
  try { r = await fetch(path, init); } catch (e) { throw boardError("network"); }
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok || (data && data.error && !Array.isArray(data))) {
    const payload = data && data.error ? data : {error: `HTTP ${r.status}`};
    throw Object.assign(new Error(payload.error), {payload});
  }
  return data;
}

async function act(button, fn) {
  showError("");
  if (button) button.disabled = true;
  try { return await fn(); } catch (e) { fail(e); } finally { if (button) button.disabled = false; }
}

function showCommands(id, lines) {
  $(id).replaceChildren(...lines.map((c) => el("code", {text: "$ " + c})));
}

// ------------------------------------------------------------------ language and tabs
function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  if (state.schema) buildForm(collectValues());
  showError(state.lastError);
  showChosenFile();
  if (state.commandError) showCommandError(state.commandError);
  if (typeof redrawTools === "function") redrawTools();
  if (state.run) showRun(state.run);
  if (state.prepared) showData(state.prepared);
  if (!$("page-runs").hidden) refreshRuns().catch(fail);
}

function showTab(name) {
  showError("");  // an error belongs to the page whose action made it
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + name;
  if (name === "runs") refreshRuns();
  if (name === "chat" || name === "eval" || name === "export") refreshChoices();
}

// ------------------------------------------------------------------ charts
function drawChart(svg, series, w, h) {
  w = w || 480; h = h || 200;
  const pad = {l: 48, r: 10, t: 10, b: 22};
  const pts = series.flatMap((s) => s.points);
  svg.replaceChildren();
  if (!pts.length) return;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * (w - pad.l - pad.r);
  const Y = (y) => h - pad.b - (y - y0) / (y1 - y0) * (h - pad.t - pad.b);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  add("line", {x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: "#999"});
  add("line", {x1: pad.l, y1: pad.t, x2: pad.l, y2: h - pad.b, stroke: "#999"});
  const fmt = (v) => Math.abs(v) < 0.01 && v !== 0 ? v.toExponential(1) : v.toPrecision(3);
  add("text", {x: 2, y: pad.t + 8}, fmt(y1));
  add("text", {x: 2, y: h - pad.b}, fmt(y0));
  add("text", {x: pad.l, y: h - 6}, String(x0));
  add("text", {x: w - pad.r - 24, y: h - 6}, String(x1));
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    add("polyline", {points: s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none",
                     stroke: color, "stroke-width": 2, "class": "series"});
    for (const p of s.points) add("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color, "class": "point"});
  });
}

// ------------------------------------------------------------------ data
async function prepareData() {
  const file = $("data-file").files[0];
  let source = $("data-path").value.trim();
  if (!file && !source) throw boardError("no_file");
  if (file) {
    const up = await api("POST", "/api/data/upload?name=" + encodeURIComponent(file.name), undefined,
                         await file.arrayBuffer());
    source = up.path;
  }
  $("data-prepare").textContent = t("busy");
  try {
    const r = await api("POST", "/api/data/prepare", {source, name: $("data-name").value.trim(),
      model: $("data-model").value.trim(), template: $("data-template").value, max_seq_length: $("data-maxlen").value});
    showData(r);
  } finally { $("data-prepare").textContent = t("data.prepare"); }
}

function showChosenFile() {
  const file = $("data-file").files[0];
  $("data-file-name").textContent = file ? file.name : t("data.no_file");
}

function showData(r) {
  state.prepared = r;
  $("data-result").hidden = false;
  showCommands("data-commands", r.commands);
  $("data-format").textContent = r.format;
  const c = r.counts;
  $("data-counts").replaceChildren(el("div", {class: "big", text: String(c.records ?? "?")}),
    el("div", {class: "muted", text: `${c.converted} ${t("data.converted")} · ${c.rejected} ${t("data.rejected")} · ` +
      `${c.duplicates} ${t("data.duplicates")}`}),
    el("div", {class: "muted", text: `${r.stats.rows_out} ${t("data.rows_out")} · ${r.stats.rows_skipped} ` +
      t("data.rows_skipped")}));
  const h = r.histogram, top = Math.max(1, ...h.counts);
  $("data-lengths").replaceChildren(...h.counts.map((n, i) => el("div", {class: "bar-row"},
    el("span", {class: "bar-label", text: h.edges[i + 1] - h.edges[i] > 1 ? `${h.edges[i]}–${h.edges[i + 1] - 1}` : String(h.edges[i])}),
    el("span", {class: "bar", style: `width:${10 * n / top}em`}), el("span", {class: "muted", text: String(n)}))),
    el("div", {class: "muted", text: ["p50", "p90", "max"].map((k) => `${k} ${(r.stats.length_after || {})[k]}`).join(" · ")}));
  $("data-rejects").replaceChildren(...r.rejects.map((x) => el("tr", {}, el("td", {}, el("code", {text: x.where})),
                                                                  el("td", {text: x.reason}))));
  $("data-preview").replaceChildren(...r.examples.map((ex) => el("div", {class: "example"},
    el("div", {class: "head", text: ex.head}),
    el("pre", {}, ...ex.segments.map((s) => s.trained ? el("mark", {class: "trained", text: s.text}) : s.text)))));
}

// ------------------------------------------------------------------ train form
function fieldInput(f, value) {
  const id = "opt-" + f.key;
  if (f.kind === "bool") {
    const box = el("input", {type: "checkbox", id, "data-key": f.key});
    box.checked = value === true || value === "true";
    return box;
  }
  if (f.kind === "choice") {
    const sel = el("select", {id, "data-key": f.key}, ...f.choices.map((c) => el("option", {value: c, text: c})));
    sel.value = value ?? f.default;
    return sel;
  }
  const input = el("input", {type: "text", id, "data-key": f.key, placeholder: f.required ? t("train.required") : ""});
  input.value = value === null || value === undefined ? "" : String(value);
  return input;
}

// Option groups that do nothing with the chosen method or stage start folded (a click on the title opens them).
function relevant(group, values) {
  if (["lora", "ptuning", "freeze"].includes(group)) return values.method === group;
  if (group === "preference") return values.stage !== undefined && values.stage !== "sft";
  return true;
}

function foldGroups() {
  const values = collectValues();
  for (const fs of document.querySelectorAll("#train-form fieldset"))
    fs.classList.toggle("folded", !relevant(fs.dataset.group, values));
}

function buildForm(values) {
  const form = $("train-form");
  form.replaceChildren(...state.schema.groups.map((g) => el("fieldset", {"data-group": g.name},
    el("legend", {text: t("group." + g.name, g.help || g.name),
                  onclick: (e) => e.target.parentNode.classList.toggle("folded")}),
    ...g.fields.map((f) => {
      const help = state.lang === "zh" ? t("help." + f.key, f.help) : f.help;
      const shown = f.default === null || f.default === "" ? "" : fill(t("train.default"), {value: f.default});
      return el("div", {class: "field", "data-field": f.key},
        el("label", {class: "key", for: "opt-" + f.key, text: f.flag}),
        fieldInput(f, values[f.key] !== undefined ? values[f.key] : f.default),
        el("div", {class: "help", text: help + shown}));
    }))));
  markChanged();
  foldGroups();
}

function collectValues() {
  const values = {};
  for (const node of document.querySelectorAll("#train-form [data-key]"))
    values[node.dataset.key] = node.type === "checkbox" ? node.checked : node.value;
  return values;
}

function markChanged() {
  const defaults = Object.fromEntries(state.schema.groups.flatMap((g) => g.fields.map((f) => [f.key, f.default])));
  for (const [k, v] of Object.entries(collectValues()))
    document.querySelector(`[data-field="${k}"]`).classList.toggle("changed", String(v) !== String(defaults[k] ?? ""));
}

let previewTimer = null;
function schedulePreview(e) {
  markChanged();
  if (e && e.target && ["method", "stage"].includes(e.target.dataset.key)) foldGroups();
  clearTimeout(previewTimer);
  previewTimer = setTimeout(previewCommand, 250);
}

async function previewCommand() {
  try {
    const r = await api("POST", "/api/train/preview", {values: collectValues()});
    $("train-command").textContent = r.command;
    $("train-yaml").textContent = r.yaml;
    $("train-command").classList.remove("invalid");
    state.commandError = null;
    $("train-why").replaceChildren();
  } catch (e) {
    showCommandError(e.payload || e.message);
  }
}

// What the form says that the CLI refuses: the CLI's (or the form's) line in the command box, and what it
// means, in the chosen language, above it.
function showCommandError(p) {
  state.commandError = p;
  $("train-command").textContent = typeof p === "string" ? p : p.error;
  $("train-command").classList.add("invalid");
  $("train-why").textContent = errorParts(p).text;
}

async function loadSchema() {
  state.schema = await api("GET", "/api/train/schema");
  const presets = state.schema.presets;
  $("train-preset").replaceChildren(el("option", {value: "", "data-i18n": "train.none", text: t("train.none")}),
    ...Object.keys(presets).map((n) => el("option", {value: n, text: n})));
  buildForm({output_dir: state.schema.runs_dir + "/run1"});
  previewCommand();
}

function usePreset() {
  const p = state.schema.presets[$("train-preset").value] || {};
  const keep = collectValues();
  const values = {};
  for (const g of state.schema.groups) for (const f of g.fields) values[f.key] = f.default;
  Object.assign(values, p, {dataset: keep.dataset, output_dir: keep.output_dir});
  buildForm(values);
  schedulePreview();
}

// ------------------------------------------------------------------ train: launch, watch, stop, resume
async function launch() {
  const r = await api("POST", "/api/train/launch", {values: collectValues()});
  $("train-command").textContent = r.command;
  watchRun(r.job.title);
}

function watchRun(name) {
  state.current = name;
  $("train-live").hidden = false;
  clearInterval(state.poll);
  state.poll = setInterval(() => refreshRun().catch(fail), 1000);
  return refreshRun();
}

async function refreshRun() {
  if (!state.current) return;
  const r = await api("GET", "/api/runs/" + encodeURIComponent(state.current));
  state.run = r;
  showRun(r);
  const running = r.status === "running" || r.status === "waiting";
  if (!running) { clearInterval(state.poll); state.poll = null; }
  if (r.status === "failed" && r.failure) showError(r.failure);
}

// The watched run's status, curves, numbers and log (drawn again in the other language on a switch).
function showRun(r) {
  const status = $("train-status");
  status.textContent = `${r.name}: ${t("status." + r.status, r.status)}`;
  status.className = "status " + r.status;
  const losses = r.logs.filter((x) => x.loss !== undefined);
  drawChart($("train-loss"), [{name: "loss", points: losses.map((x) => [x.step, x.loss])},
    {name: "eval", color: "#dc2626", points: r.logs.filter((x) => x.eval_loss !== undefined).map((x) => [x.step, x.eval_loss])}]);
  drawChart($("train-lr"), [{name: "lr", points: losses.filter((x) => x.lr !== undefined).map((x) => [x.step, x.lr])}], 480, 120);
  const last = r.last || {};
  const total = (/(\d+) rows, (\d+) steps/.exec(r.log_tail || "") || [])[2];
  let eta = "";
  if (total && last.step && r.job && r.status === "running") {
    const spent = Date.now() / 1000 - r.job.created;
    eta = ` · ${t("train.eta")} ` + fill(t("progress.elapsed"), {s: Math.max(0, Math.round(spent / last.step * (total - last.step)))});
  }
  $("train-stats").textContent = last.step ? `${t("train.step")} ${last.step}${total ? "/" + total : ""} · ` +
    `${t("train.loss")} ${last.loss.toFixed(4)} · ${last.tokens_per_s ?? "-"} ${t("train.tokens_s")}${eta}` : "";
  $("train-log").textContent = r.log_tail || "";
  $("train-log").scrollTop = $("train-log").scrollHeight;
  const running = r.status === "running" || r.status === "waiting";
  $("train-stop").disabled = !running || !r.job;
  $("train-resume").disabled = running || !r.checkpoints.length || r.status === "finished";
}

async function stopRun() {
  if (state.run && state.run.job) await api("POST", `/api/jobs/${state.run.job.id}/stop`);
  await refreshRun();
}

async function resumeRun() {
  const r = await api("POST", "/api/train/resume", {run: state.current});
  $("train-command").textContent = r.command;
  watchRun(state.current);
}

// ------------------------------------------------------------------ runs
async function refreshRuns() {
  const list = await api("GET", "/api/runs");
  const head = el("tr", {}, ...["runs.name", "runs.status", "runs.steps", "runs.loss", "runs.checkpoints", "runs.config", "runs.report"]
    .map((k) => el("th", {text: t(k)})));
  const rows = list.map((r, i) => el("tr", {"data-run": r.name},
    el("td", {}, el("a", {href: "#", text: r.name, style: `color:${COLORS[i % COLORS.length]}`,
                          onclick: (e) => { e.preventDefault(); showTab("train"); watchRun(r.name); }})),
    el("td", {class: "status " + r.status, text: t("status." + r.status, r.status)}),
    el("td", {class: "num", text: String(r.last.step ?? "-")}),
    el("td", {class: "num", text: r.last.loss !== undefined ? r.last.loss.toFixed(4) : "-"}),
    el("td", {text: r.checkpoints.join(", ")}),
    el("td", {}, el("details", {}, el("summary", {text: r.config.method ? `${r.config.method}, ${r.config.model}` : "-"}),
      el("pre", {text: Object.entries(r.config).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("\n")}))),
    el("td", {}, r.has_report ? el("a", {href: `/api/runs/${r.name}/report.html`, target: "_blank", text: t("runs.open")})
                 : r.status === "finished" ? el("button", {class: "write-report", text: t("runs.write_report"),
                     onclick: (e) => act(e.target, () => writeReport(r.name))}) : "")));
  $("runs-table").replaceChildren(head, ...(rows.length ? rows : [el("tr", {}, el("td", {text: t("runs.empty")}))]));
  drawChart($("runs-chart"), list.map((r) => ({name: r.name, points: r.logs.filter((x) => x.loss !== undefined)
    .map((x) => [x.step, x.loss])})));
  $("runs-legend").replaceChildren(...list.map((r, i) => el("span", {style: `color:${COLORS[i % COLORS.length]}`,
                                                                     text: "● " + r.name})));
}

async function writeReport(name) {
  const r = await api("POST", `/api/runs/${encodeURIComponent(name)}/report`);
  for (let i = 0; i < 600; i++) {
    const j = await api("GET", "/api/jobs/" + r.job.id);
    if (!["running", "waiting"].includes(j.status)) {
      if (j.status !== "done") throw Object.assign(new Error(j.status), {payload: j.failure || j.status});
      break;
    }
    await new Promise((ok) => setTimeout(ok, 500));
  }
  await refreshRuns();
}

// ------------------------------------------------------------------ choices for chat, eval, export
async function refreshChoices() {
  const s = await api("GET", "/api/state");
  const finished = s.runs.filter((r) => r.finished);
  const checked = new Set([...document.querySelectorAll("#chat-adapters input:checked")].map((x) => x.value));
  $("chat-adapters").replaceChildren(...finished.map((r) => el("label", {},
    Object.assign(el("input", {type: "checkbox", value: r.name}), {checked: checked.has(r.name)}), " " + r.name)));
  const keepRun = $("eval-run").value, keepData = $("eval-data").value, keepExport = $("export-run").value;
  $("eval-run").replaceChildren(el("option", {value: "", text: t("eval.base")}),
    ...finished.map((r) => el("option", {value: r.name, text: r.name})));
  $("eval-data").replaceChildren(...s.data_files.map((f) => el("option", {value: f.path, text: f.name})));
  $("export-run").replaceChildren(...finished.map((r) => el("option", {value: r.name, text: r.name})));
  if (keepRun) $("eval-run").value = keepRun;
  if (keepData) $("eval-data").value = keepData;
  if (keepExport) $("export-run").value = keepExport;
  if (!$("chat-model").value && state.prepared) $("chat-model").value = state.prepared.model;
  if (s.chat.running) showChatModels(s.chat);
}

// ------------------------------------------------------------------ start
async function start() {
  const [texts, s] = await Promise.all([api("GET", "/api/i18n"), api("GET", "/api/state")]);
  state.texts = texts;
  $("workdir").textContent = s.workdir;
  $("workdir").parentNode.title = s.workdir;
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("lang").addEventListener("click", () => { state.lang = state.lang === "en" ? "zh" : "en";
    localStorage.setItem("board-lang", state.lang); applyLanguage(); });
  $("data-prepare").addEventListener("click", (e) => act(e.target, prepareData));
  $("data-choose").addEventListener("click", () => $("data-file").click());  // the page's words, not the browser's
  $("data-file").addEventListener("change", showChosenFile);
  $("data-use").addEventListener("click", () => {
    const v = collectValues();
    buildForm({...v, dataset: state.prepared.dataset, model: state.prepared.model});
    showTab("train"); previewCommand();
  });
  $("train-form").addEventListener("input", schedulePreview);
  $("train-form").addEventListener("change", schedulePreview);
  $("train-preset").addEventListener("change", usePreset);
  $("train-copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("train-command").textContent); } catch (e) { /* no clipboard: select it */ }
    $("train-copy").textContent = t("copied");
  });
  $("train-launch").addEventListener("click", (e) => act(e.target, launch));
  $("train-stop").addEventListener("click", (e) => act(e.target, stopRun));
  $("train-resume").addEventListener("click", (e) => act(e.target, resumeRun));
  $("chat-load").addEventListener("click", (e) => act(e.target, loadChat));
  $("chat-send").addEventListener("click", (e) => act(e.target, sendChat));
  $("chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault();
    act($("chat-send"), sendChat); } });
  $("chat-clear").addEventListener("click", () => { state.histories = {}; $("chat-log").replaceChildren(); });
  $("eval-start").addEventListener("click", (e) => act(e.target, startEval));
  $("export-start").addEventListener("click", (e) => act(e.target, startExport));
  await loadSchema();
  applyLanguage();
  const running = s.jobs.find((j) => j.kind === "train" && ["running", "waiting"].includes(j.status));
  if (running) watchRun(running.title);  // re-attach to a run in progress
  document.body.dataset.ready = "1";
}

window.addEventListener("DOMContentLoaded", () => start().catch(fail));
