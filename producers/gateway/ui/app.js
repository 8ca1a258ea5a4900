// llmqueue's browser job view: plain DOM, no dependencies, no build. Everything it shows comes from
// the gateway's /v1/ API with the token the user gives (kept in sessionStorage, this tab only).
// Message text is neither requested (?text=0) nor shown unless the gateway says content: true.
"use strict";

const TOKEN_KEY = "llmq-token";
const ui = { token: sessionStorage.getItem(TOKEN_KEY), content: false, stream: null, before: null, timer: null, run: null };
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

const when = (ts) => (ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "");
const usd = (v) => (v === null || v === undefined ? "" : "$" + Number(v).toFixed(6));
const textParam = () => (ui.content ? "" : "text=0");

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { authorization: "Bearer " + ui.token });
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) throw new Unauthorized("the token was not accepted");
  return response;
}

function show(view) {
  for (const id of ["login", "list-view", "job-view"]) $(id).hidden = id !== view;
  $("open-form").hidden = $("logout").hidden = view === "login";
}

function forget(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  ui.token = null;
  stopStream();
  show("login");
  $("login-error").textContent = message || "";
}

// --- the list ---------------------------------------------------------------------------------

function filters() {
  const params = new URLSearchParams({ limit: "50" });
  for (const [name, id] of [["status", "f-status"], ["error", "f-error"], ["model", "f-model"], ["since", "f-since"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

async function loadJobs(append) {
  const params = filters();
  if (append && ui.before !== null) params.set("before", String(ui.before));
  const response = await api("/v1/jobs?" + params.toString());
  const body = await response.json();
  const tbody = $("jobs-table").tBodies[0];
  if (!append) tbody.replaceChildren();
  if (!response.ok) {
    $("jobs-empty").hidden = false;
    $("jobs-empty").textContent = body.error ? body.error.message : "could not list jobs";
    return;
  }
  for (const job of body.data) {
    const link = el("a", job.id);
    link.href = "#/job/" + encodeURIComponent(job.id);
    const tr = row([when(job.finished_at), link, el("span", job.status, "badge " + job.status), job.model_used || job.model,
      job.error ? job.error.type : "", usd(job.cost_usd), (job.attempts || []).length]);
    tr.dataset.id = job.id;
    tbody.appendChild(tr);
  }
  ui.before = body.next_before;
  $("more").hidden = body.next_before === null;
  $("jobs-empty").hidden = tbody.rows.length > 0;
  $("jobs-empty").textContent = "No jobs match.";
}

async function loadPanels() {
  const queues = await (await api("/v1/queues")).json();
  const qbody = $("queues-table").tBodies[0];
  qbody.replaceChildren(...(queues.data || []).map((q) => row([q.queue, q.class || "all", q.tenant || "all",
    q.depth + (q.parked ? ` (${q.parked} parked)` : "") + (q.at_limit ? " at limit" : ""),
    q.running ?? "", q.oldest_wait_s == null ? "" : `${q.oldest_wait_s.toFixed(1)} s`])));
  const budget = await (await api("/v1/budget")).json();
  const bbody = $("budget-table").tBodies[0];
  bbody.replaceChildren(...(budget.scopes || []).map((s) =>
    row([s.scope, usd(s.spent_usd), usd(s.reserved_usd), usd(s.limit_usd), usd(s.remaining_usd), s.state])));
  $("budget-none").hidden = budget.available;
  $("budget-month").textContent = budget.month || "";
}

async function listView() {
  show("list-view");
  ui.before = null;
  await Promise.all([loadJobs(false), loadPanels()]);
  clearInterval(ui.timer);
  ui.timer = setInterval(() => { if (!$("list-view").hidden) { loadPanels().catch(() => {}); } }, 5000);
}

// --- one job ------------------------------------------------------------------------------------

function stopStream() {
  if (ui.stream) ui.stream.abort();
  ui.stream = null;
}

function fact(dl, name, value) {
  if (value === null || value === undefined || value === "") return;
  dl.append(el("dt", name), el("dd", value));
}

async function loadJob(id) {
  const query = textParam();
  const response = await api("/v1/jobs/" + encodeURIComponent(id) + (query ? "?" + query : ""));
  if (response.status === 404) return null;
  return response.json();
}

function renderJob(job) {
  const summary = job.history || {};
  const result = job.result || {};
  $("job-status").textContent = job.status || "";
  $("job-status").className = "badge " + (job.status || "");
  const dl = $("job-facts");
  dl.replaceChildren();
  fact(dl, "tenant", summary.tenant);
  fact(dl, "model", summary.model);
  fact(dl, "model used", summary.model_used || result.model_used);
  fact(dl, "submitted", when(job.submitted_at));
  fact(dl, "ended", when(summary.finished_at));
  fact(dl, "runs", job.runs);
  const usage = summary.usage || result.usage;
  if (usage) fact(dl, "tokens", (usage.prompt_tokens || 0) + " prompt + " + (usage.completion_tokens || 0) + " completion");
  fact(dl, "cost", usd(summary.cost_usd ?? result.cost_usd));
  const error = summary.error || result.error;
  if (error) fact(dl, "error", error.type + ": " + error.message);
  fact(dl, "trace id", summary.trace_id);
  if (summary.request) {
    const r = summary.request;
    fact(dl, "request", (r.prompt ? "prompt " + r.prompt : (r.messages || 0) + " messages") + ", max_tokens " + r.max_tokens);
  }
  fact(dl, "replay of", summary.replay_of);
  fact(dl, "replayed as", summary.replayed_as);
  const attempts = summary.attempts || result.attempts || [];
  $("attempts-table").tBodies[0].replaceChildren(...attempts.map((a, i) =>
    row([i + 1, a.model, a.status, a.error_type || "", a.http_status || "", a.wait_s ? a.wait_s + " s" : ""])));
  const calls = result.tool_calls || [];
  const list = $("tool-calls");
  for (const call of calls) {
    if (!list.querySelector(`[data-call="${CSS.escape(call.id)}"]`)) {
      const item = el("li", call.function.name + (ui.content && call.function.arguments ? " " + call.function.arguments : ""));
      item.dataset.call = call.id;
      list.appendChild(item);
    }
  }
  const hook = job.webhook;
  $("webhook-none").hidden = Boolean(hook);
  $("webhook-log").replaceChildren();
  if (hook) {
    $("webhook-log").appendChild(el("li", hook.target + ": " + hook.state + " after " + hook.attempts + " attempt(s)"));
    for (const a of hook.log || []) {
      $("webhook-log").appendChild(el("li", "#" + a.attempt + " " + when(a.at) + " " + a.outcome + " " + (a.status || a.error || "")));
    }
  }
  $("replay-line").hidden = !(summary.replayable && !summary.replayed_as);
}

function onEvent(event) {
  const item = el("li", "#" + event.seq + " " + event.type);
  item.dataset.type = event.type;
  // the answer starts over at a repair (it failed its format) and at a new run (its worker was lost
  // and another runs the job from the beginning): the text before is superseded, not continued
  const newRun = ui.run !== null && event.run > ui.run;
  if (ui.run === null || event.run > ui.run) ui.run = event.run;
  let restart = "";
  if (newRun || event.type === "repair") {
    $("answer").textContent = "";
    item.dataset.restart = "1";
    restart = event.type === "repair"
      ? " (the answer failed its format: it starts over)"
      : " (run " + event.run + ": its worker was lost; the answer starts over)";
  }
  if (event.type === "delta") {
    $("delta-count").textContent = String(Number($("delta-count").textContent) + 1);
    if (ui.content) $("answer").textContent += event.text;
    else item.textContent += " (text hidden)";
  } else if (event.type === "start") {
    item.textContent += " " + event.model;
  } else if (event.type === "tool_call") {
    item.textContent += " " + event.tool_call.function.name;
    const call = el("li", event.tool_call.function.name + (ui.content ? " " + event.tool_call.function.arguments : ""));
    call.dataset.call = event.tool_call.id;
    $("tool-calls").appendChild(call);
  } else if (event.type === "tool_result") {
    item.textContent += " " + event.name + (event.ok ? " ok" : " failed: " + (event.error || ""));
  } else if (event.type === "usage") {
    item.textContent += " " + event.usage.prompt_tokens + "+" + event.usage.completion_tokens + " tokens";
  } else if (event.type === "error") {
    item.textContent += " " + event.error.type;
  }
  item.textContent += restart;
  $("events").appendChild(item);
}

function parseFrame(frame) {
  let type = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return data.length ? { type, data: data.join("\n") } : null;
}

async function follow(id) {
  stopStream();
  const controller = new AbortController();
  ui.stream = controller;
  const query = textParam();
  const response = await api("/v1/jobs/" + encodeURIComponent(id) + "/events" + (query ? "?" + query : ""), { signal: controller.signal });
  if (!response.ok) return;
  $("live-state").textContent = "live";
  $("live-state").className = "badge live";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let ended = false;
  while (!ended) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = parseFrame(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (!frame || frame.type === "gateway_error") continue;
      const event = JSON.parse(frame.data);
      onEvent(event);
      if (["done", "error", "cancelled"].includes(event.type)) ended = true;
    }
  }
  if (ui.stream === controller) {
    $("live-state").textContent = ended ? "ended" : "disconnected";
    $("live-state").className = "badge";
    const job = await loadJob(id);
    if (job) renderJob(job);
  }
}

async function jobView(id) {
  show("job-view");
  clearInterval(ui.timer);
  $("job-id").textContent = id;
  for (const node of ["events", "tool-calls", "webhook-log"]) $(node).replaceChildren();
  $("attempts-table").tBodies[0].replaceChildren();
  $("job-facts").replaceChildren();
  $("delta-count").textContent = "0";
  $("answer").textContent = "";
  ui.run = null;
  $("answer").hidden = !ui.content;
  $("live-state").textContent = "";
  $("replay-result").textContent = "";
  const job = await loadJob(id);
  $("job-missing").hidden = Boolean(job);
  if (!job) { $("job-status").textContent = ""; return; }
  renderJob(job);
  await follow(id);
}

async function replay() {
  const id = $("job-id").textContent;
  const response = await api("/v1/jobs/" + encodeURIComponent(id) + "/replay", { method: "POST" });
  const body = await response.json();
  if (!response.ok) { $("replay-result").textContent = body.error ? body.error.message : "refused"; return; }
  const link = el("a", body.copy);
  link.href = "#/job/" + encodeURIComponent(body.copy);
  $("replay-result").replaceChildren(el("span", body.outcome.replace("_", " ") + ": "), link);
}

// --- routing and start ----------------------------------------------------------------------------

async function route() {
  if (!ui.token) { show("login"); return; }
  try {
    const who = await (await api("/v1/whoami")).json();
    $("who").textContent = "tenant " + who.tenant;
    const match = location.hash.match(/^#\/job\/(.+)$/);
    if (match) await jobView(decodeURIComponent(match[1]));
    else { stopStream(); await listView(); }
  } catch (error) {
    if (error instanceof Unauthorized) forget("That token was not accepted.");
    else if (error.name !== "AbortError") console.error(error);
  }
}

async function start() {
  try { ui.content = (await (await fetch("/ui/config.json")).json()).content === true; } catch (e) { ui.content = false; }
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    ui.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, ui.token);
    $("token").value = "";
    route();
  });
  $("logout").addEventListener("click", () => forget(""));
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); ui.before = null; loadJobs(false).catch(() => {}); });
  $("more").addEventListener("click", () => loadJobs(true).catch(() => {}));
  $("replay").addEventListener("click", () => replay().catch(() => {}));
  $("open-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("open-id").value.trim();
    if (id) location.hash = "#/job/" + encodeURIComponent(id);
  });
  window.addEventListener("hashchange", route);
  await route();
}

document.addEventListener("DOMContentLoaded", start);
