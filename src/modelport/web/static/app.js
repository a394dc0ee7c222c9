// modelport console: small progressive enhancements over server-rendered pages. No build step.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

// An API refusal, with the envelope's machine code and the field it is about.
class ApiError extends Error {
  constructor(message, code = null, param = null) { super(message); this.code = code; this.param = param; }
}

async function api(method, path, body, extra = {}) {
  const headers = { "X-CSRF-Token": csrf(), ...extra };
  if (body !== undefined && !(body instanceof Blob)) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : body instanceof Blob ? body : JSON.stringify(body),
  });
  if (!resp.ok) throw await apiError(resp);
  return resp.status === 204 ? null : resp.json();
}

async function apiError(resp) {
  try {
    const body = await resp.json();
    if (body.error) return new ApiError(body.error.message, body.error.code, body.error.param);
    return new ApiError(JSON.stringify(body.detail || body));
  } catch (_) {
    return new ApiError(`${resp.status} ${resp.statusText}`);
  }
}

function human(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

// --- forms that ask first ---------------------------------------------------------------------
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// --- Add custom model: check first, then upload a picked file in resumable parts -----------------
// A picked file never goes through the form post: the page asks the preflight, sends the parts, then
// creates the model through the JSON API, so a refusal at any step leaves the page (and the chosen
// file) as it was. Repo and URL sources post the form; the server shows its errors the same way.
const PART_BYTES = 8 * 1024 * 1024;

function setupUploadForm(form) {
  const sections = form.querySelectorAll("[data-source]");
  const fileInput = form.querySelector("#file");
  const show = () => {
    const kind = form.querySelector('input[name="source_kind"]:checked').value;
    sections.forEach((s) => { s.hidden = s.dataset.source !== kind; });
  };
  form.querySelectorAll('input[name="source_kind"]').forEach((r) => r.addEventListener("change", show));
  show();
  fileInput.addEventListener("change", () => { form.file_id.value = ""; }); // another file: send it
  form.addEventListener("submit", async (event) => {
    const kind = form.querySelector('input[name="source_kind"]:checked').value;
    if (kind !== "file") return;
    event.preventDefault();
    clearFormErrors(form);
    const file = fileInput.files[0];
    if (!file) { showFormError(form, "source", "Choose a file to upload."); return; }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    const fields = modelFields(form);
    let step = "check";
    try {
      await api("POST", "/api/v1/models/preflight", fields); // before the first part is sent
      step = "upload";
      if (!form.file_id.value) form.file_id.value = await uploadFile(file, form);
      step = "create";
      const description = form.description.value.trim() || null;
      const made = await api("POST", "/v1/models", { ...fields, model_source: form.file_id.value, description });
      window.location.assign(`/jobs/${encodeURIComponent(made.data.job_id)}`);
    } catch (err) {
      if (step === "upload") {
        const text = err.code ? err.message : `The upload stopped (${err.message}). Select Upload again to resume it.`;
        showFormError(form, "source", text);
      } else {
        const { field, text } = explain(form, err);
        showFormError(form, field, text);
      }
      if (step === "create") form.querySelector("#upload-status").textContent = `Uploaded ${human(file.size)}; it is not sent again.`;
      button.disabled = false;
    }
  });
}

function modelFields(form) {
  const type = form.querySelector('input[name="model_type"]:checked').value;
  const base = type === "adapter" ? form.base_model.value || null : null;
  return { model_name: form.model_name.value.trim(), model_type: type, base_model: base };
}

// The page's words for an API refusal (the same table the server uses when the form posts).
function explain(form, err) {
  const words = JSON.parse(document.getElementById("form-words").textContent);
  const type = form.querySelector('input[name="model_type"]:checked').value;
  const key = err.code === "model_type_mismatch" ? `${err.code}:${type}` : err.code;
  const template = key ? words.messages[key] : undefined;
  const text = template
    ? template.replaceAll("{name}", form.model_name.value.trim()).replaceAll("{base}", form.base_model.value)
    : err.message;
  return { field: words.fields[err.param] || null, text };
}

const FIELD_FOCUS = {
  model_name: "#model_name", base_model: "#base_model", source: "#file",
  model_type: 'input[name="model_type"]:checked',
};
const FIELD_BOX = { model_name: "#model_name", base_model: "#base_model", source: "#source-group", model_type: "#type-group" };

function showFormError(form, field, text) {
  const slot = field ? document.getElementById(`${field}-error`) : null;
  const target = slot || document.getElementById("form-error");
  target.textContent = text;
  target.hidden = false;
  if (slot) {
    form.querySelector(FIELD_BOX[field]).setAttribute("aria-invalid", "true");
    const focus = form.querySelector(FIELD_FOCUS[field]);
    if (focus && !focus.closest("[hidden]")) focus.focus();
  }
}

function clearFormErrors(form) {
  document.querySelectorAll(".field-error, #form-error").forEach((p) => { p.hidden = true; p.textContent = ""; });
  form.querySelectorAll('[aria-invalid="true"]').forEach((e) => e.removeAttribute("aria-invalid"));
}

async function sha256Hex(buffer) {
  if (!(window.crypto && crypto.subtle)) return null; // only on https or localhost
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ", about 3 min left": what is left at the rate so far (nothing once it is done or before any rate).
function eta(left, rate) {
  if (left <= 0 || !(rate > 0)) return "";
  const seconds = Math.ceil(left / rate);
  if (seconds < 90) return `, about ${seconds} s left`;
  if (seconds < 5400) return `, about ${Math.round(seconds / 60)} min left`;
  return `, about ${(seconds / 3600).toFixed(1)} h left`;
}

async function uploadFile(file, form) {
  const bar = form.querySelector("#upload-bar");
  const status = form.querySelector("#upload-status");
  form.querySelector(".upload-progress").hidden = false;
  const memo = `modelport-upload:${file.name}:${file.size}:${file.lastModified}`;
  let upload = null;
  const known = localStorage.getItem(memo);
  if (known) {
    try { upload = await api("GET", `/api/v1/uploads/${known}`); } catch (_) { upload = null; }
    if (upload && upload.status !== "receiving") upload = null;
  }
  if (!upload) {
    const partSize = Math.min(PART_BYTES, file.size);
    upload = await api("POST", "/api/v1/uploads", { filename: file.name, bytes: file.size, part_size: partSize });
    localStorage.setItem(memo, upload.id);
  }
  const part = upload.part_size;
  let sent = upload.received.reduce((n, p) => n + Math.min(part, file.size - (p - 1) * part), 0);
  const started = performance.now();
  const startBytes = sent;
  for (const number of upload.missing) {
    const blob = file.slice((number - 1) * part, Math.min(number * part, file.size));
    const digest = await sha256Hex(await blob.arrayBuffer());
    const headers = digest ? { "X-Part-SHA256": digest, "Content-Type": "application/octet-stream" } : { "Content-Type": "application/octet-stream" };
    for (let attempt = 1; ; attempt++) {
      try { await api("PUT", `/api/v1/uploads/${upload.id}/parts/${number}`, blob, headers); break; }
      catch (err) { if (attempt >= 3) throw err; }
    }
    sent += blob.size;
    const rate = (sent - startBytes) / Math.max(0.001, (performance.now() - started) / 1000);
    bar.value = (100 * sent) / file.size;
    status.textContent = `${human(sent)} of ${human(file.size)} sent, ${human(Math.round(rate))}/s${eta(file.size - sent, rate)}`;
  }
  status.textContent = "Checking the file…";
  await api("POST", `/api/v1/uploads/${upload.id}/complete`);
  localStorage.removeItem(memo);
  status.textContent = `Uploaded ${human(file.size)}.`;
  return upload.id;
}

// --- Job page: live progress over server-sent events ---------------------------------------------
function setupJob(section) {
  const id = section.dataset.jobId;
  const source = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events`);
  source.addEventListener("job", (event) => renderJob(section, JSON.parse(event.data)));
  source.onerror = () => { if (section.dataset.done) source.close(); };
  section.addEventListener("job-done", () => source.close());
}

function renderJob(section, job) {
  const badge = section.querySelector("#job-status");
  badge.textContent = job.status;
  badge.className = `badge ${job.status.toLowerCase()}`;
  const progress = job.progress || {};
  const last = job.status_updates[job.status_updates.length - 1];
  section.querySelector("#job-stage").textContent = progress.stage || (last ? last.status : job.status);
  const bar = section.querySelector("#job-bar");
  const bytes = section.querySelector("#job-bytes");
  if (progress.bytes_total) {
    bar.hidden = false;
    bar.value = (100 * progress.bytes_done) / progress.bytes_total;
    const rate = progress.bytes_per_second ? `, ${human(progress.bytes_per_second)}/s` : "";
    const eta = progress.eta_seconds != null ? `, about ${Math.ceil(progress.eta_seconds)} s left` : "";
    bytes.textContent = `${human(progress.bytes_done)} of ${human(progress.bytes_total)}${rate}${eta}`;
  } else {
    bar.hidden = true;
    bytes.textContent = progress.bytes_done ? human(progress.bytes_done) : "";
  }
  const list = section.querySelector("#job-updates");
  list.replaceChildren(...job.status_updates.map((u) => {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = u.timestamp.replace("T", " ").slice(0, 19);
    const strong = document.createElement("strong");
    strong.textContent = u.status;
    li.append(time, " ", strong, " ", u.message);
    return li;
  }));
  if (job.status === "Complete" || job.status === "Failed") {
    section.dataset.done = "1";
    section.querySelector(job.status === "Complete" ? "#job-done" : "#job-failed").hidden = false;
    if (job.status === "Failed") {
      const problems = job.status_updates.filter((u) => u.status === "Failed").map((u) => u.message);
      section.querySelector("#job-problems").replaceChildren(...problems.map((p) => {
        const li = document.createElement("li"); li.textContent = p; return li;
      }));
    }
    section.dispatchEvent(new Event("job-done"));
  }
}

// --- Playground: streaming chat ------------------------------------------------------------------
function setupPlayground(form) {
  const log = form.querySelector("#pg-log");
  const error = form.querySelector("#pg-error");
  const stop = form.querySelector("#pg-stop");
  const send = form.querySelector("#pg-send");
  const regen = form.querySelector("#pg-regen");
  const code = form.querySelector("#pg-code-text");
  let history = [];
  let controller = null;
  const bubble = (role, text) => {
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : form.model.value;
    const body = document.createElement("p");
    body.textContent = text;
    div.append(who, body);
    log.append(div);
    log.scrollTop = log.scrollHeight;
    return body;
  };
  const conversation = () => (form.system.value.trim()
    ? [{ role: "system", content: form.system.value.trim() }, ...history] : history);
  const params = () => ({
    temperature: Number(form.temperature.value), top_p: Number(form.top_p.value), max_tokens: Number(form.max_tokens.value),
  });
  // "View code": the request this page would send next, as Python with the openai SDK.
  const showCode = () => {
    const p = params();
    const messages = JSON.stringify(conversation(), null, 4).replace(/\n/g, "\n    ");
    code.textContent = "import os\nfrom openai import OpenAI\n\n"
      + `client = OpenAI(base_url="${location.origin}/v1", api_key=os.environ["MODELPORT_API_KEY"])\n`
      + `reply = client.chat.completions.create(\n    model=${JSON.stringify(form.model.value)},\n`
      + `    messages=${messages},\n    temperature=${p.temperature},\n    top_p=${p.top_p},\n    max_tokens=${p.max_tokens},\n)\n`
      + "print(reply.choices[0].message.content)";
  };
  const answered = () => history.length > 0 && history[history.length - 1].role === "assistant";
  const settle = () => {
    regen.disabled = controller !== null || !answered();
    showCode();
  };
  // Max tokens can never exceed the chosen model's context (its prompt needs room as well).
  const bound = () => {
    const context = Number(form.model.selectedOptions[0]?.dataset.context || 0);
    const hint = form.querySelector("#pg-context");
    if (context) {
      form.max_tokens.max = context - 1;
      if (Number(form.max_tokens.value) > context - 1) form.max_tokens.value = context - 1;
      hint.textContent = `context ${context} tokens`;
    } else { form.max_tokens.removeAttribute("max"); hint.textContent = ""; }
  };
  bound();
  settle();
  form.querySelector("#pg-clear").addEventListener("click", () => { history = []; log.replaceChildren(); settle(); });
  form.model.addEventListener("change", () => { history = []; log.replaceChildren(); bound(); settle(); });
  for (const field of [form.system, form.temperature, form.top_p, form.max_tokens]) field.addEventListener("input", showCode);
  stop.addEventListener("click", () => controller && controller.abort());
  form.message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });

  // One reply to the conversation as it stands. ``asked``/``text``: the message just sent, which a
  // refusal takes back out of the conversation and puts back into the box (nothing typed is lost).
  async function answer(asked, text) {
    error.hidden = true;
    const reply = bubble("assistant", "");
    const started = performance.now();
    let first = null;
    controller = new AbortController();
    send.disabled = true; stop.disabled = false; regen.disabled = true;
    try {
      const usage = await streamChat({
        model: form.model.value, messages: conversation(), stream: true, stream_options: { include_usage: true }, ...params(),
      }, controller.signal, (chunk) => {
        first = first ?? performance.now();
        reply.textContent += chunk; log.scrollTop = log.scrollHeight;
      });
      history.push({ role: "assistant", content: reply.textContent });
      replyStats(reply, usage, started, first);
    } catch (err) {
      if (err.name === "AbortError") {
        history.push({ role: "assistant", content: reply.textContent });
      } else {
        error.textContent = err.message; error.hidden = false;
        reply.parentElement.remove();
        if (asked) { history.pop(); asked.parentElement.remove(); form.message.value = text; }
      }
    } finally {
      controller = null; send.disabled = false; stop.disabled = true; settle(); form.message.focus();
    }
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = form.message.value.trim();
    if (!text || controller) return;
    form.message.value = "";
    const asked = bubble("user", text);
    history.push({ role: "user", content: text });
    await answer(asked, text);
  });
  // Regenerate: the last reply goes, and the same conversation is asked again.
  regen.addEventListener("click", async () => {
    if (controller || !answered()) return;
    history.pop();
    log.querySelector(".msg.assistant:last-child")?.remove();
    await answer(null, null);
  });
}

// Under a reply: its tokens, the prompt's, time to first token and the rate after it.
function replyStats(reply, usage, started, first) {
  const stats = document.createElement("span");
  stats.className = "stats";
  const now = performance.now();
  const parts = [];
  if (usage) {
    // A conversation's earlier turns are usually in the engine's prefix cache: say how much was reused.
    const cached = (usage.prompt_tokens_details || {}).cached_tokens || 0;
    parts.push(`${usage.completion_tokens} tokens`, `prompt ${usage.prompt_tokens} tokens${cached ? ` (${cached} cached)` : ""}`);
  }
  if (first !== null) {
    parts.push(`first token ${Math.round(first - started)} ms`);
    if (usage && usage.completion_tokens > 1 && now > first) {
      parts.push(`${((usage.completion_tokens - 1) / ((now - first) / 1000)).toFixed(1)} tokens/s`);
    }
  }
  stats.textContent = parts.join(" · ");
  reply.parentElement.append(stats);
}

async function streamChat(body, signal, onText) {
  const resp = await fetch("/v1/chat/completions", {
    method: "POST", credentials: "same-origin", signal,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify(body),
  });
  if (!resp.ok) {
    const err = await apiError(resp);
    // The API's words are the same for every client; this page names its own way to start one.
    if (err.code === "endpoint_not_running") err.message += ". Start it on the Endpoints page.";
    throw err;
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return usage;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) if (choice.delta && choice.delta.content) onText(choice.delta.content);
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const uploadForm = document.querySelector("[data-upload-form]");
  if (uploadForm) setupUploadForm(uploadForm);
  const job = document.querySelector("[data-job-id]");
  if (job && !["Complete", "Failed"].includes(job.querySelector("#job-status").textContent)) setupJob(job);
  const chat = document.querySelector("#chat-form");
  if (chat) setupPlayground(chat);
  const regions = [...document.querySelectorAll("[data-live]")];
  if (regions.length) setupLive(regions);
  const charts = document.querySelector("[data-timeline]");
  if (charts) setupCharts(charts);
});

// --- copy buttons: data-copy names the element whose text goes to the clipboard ------------------
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  const status = document.getElementById("copy-status");
  try {
    await navigator.clipboard.writeText(source.textContent);
    button.textContent = "Copied";
    if (status) status.textContent = "Copied to the clipboard.";
  } catch (_) {  // no clipboard (an insecure origin, a denied permission): select it for Ctrl+C
    window.getSelection().selectAllChildren(source);
    button.textContent = "Selected: press Ctrl+C";
    if (status) status.textContent = "Selected; press Ctrl+C to copy.";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
});

// --- tables as cards on narrow screens (app.css): each cell learns its column's name ------------
function labelCells(table) {
  const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  table.setAttribute("role", "table");
  for (const row of table.querySelectorAll("tr")) {
    row.setAttribute("role", "row");
    [...row.children].forEach((cell, i) => {
      const header = cell.tagName === "TH";
      cell.setAttribute("role", header ? (row.parentElement.tagName === "THEAD" ? "columnheader" : "rowheader") : "cell");
      if (!header && heads[i]) cell.dataset.label = heads[i];
    });
  }
}
document.querySelectorAll("table.cards").forEach(labelCells);

// --- live regions: the endpoint list and an endpoint's tables follow the server without a reload ----
// The page itself is fetched again and each [data-live] region swapped in (one rendering, the server's).
// Every 3 s while something is on its way (starting, stopping), every 15 s when all is settled, backing
// off to a minute while the server does not answer, and not at all while the tab is hidden.
const BUSY = /\b(STARTING|PENDING|STOPPING|PROVISIONING|SCALING)\b|>starting</;

function setupLive(regions) {
  let wait = 3000;
  const status = document.getElementById("live-status");
  async function refresh() {
    if (document.hidden) return schedule(3000);
    try {
      const response = await fetch(location.pathname, { headers: { Accept: "text/html" } });
      if (!response.ok) throw new Error(String(response.status));
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      let text = "";
      for (const region of regions) {
        const next = fresh.querySelector(`[data-live="${region.dataset.live}"]`);
        if (!next) continue;
        region.replaceChildren(...next.childNodes);
        region.querySelectorAll("table.cards").forEach(labelCells);
        text += region.innerHTML;
      }
      wait = BUSY.test(text) ? 3000 : 15000;
      if (status) status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (_) {
      wait = Math.min(wait * 2, 60000);
      if (status) status.textContent = "The server does not answer; retrying.";
    }
    schedule(wait);
  }
  function schedule(ms) { setTimeout(refresh, ms); }
  schedule(wait);
}

// --- charts of an endpoint's last hour (uPlot, vendored under /static/vendor) ------------------------
const CHARTS = {
  requests: { series: [["requests_per_s", "requests/s"]], unit: "req/s" },
  tokens: { series: [["tokens_per_s", "tokens/s"]], unit: "tok/s" },
  ttft: { series: [["ttft_ms_p50", "p50"], ["ttft_ms_p95", "p95"]], unit: "ms" },
  latency: { series: [["latency_ms_p50", "p50"], ["latency_ms_p95", "p95"], ["latency_ms_p99", "p99"]], unit: "ms" },
};
const COLOURS = ["#2457a5", "#b3541e", "#4d7c0f"];

function setupCharts(box) {
  const model = box.dataset.timeline;
  const plots = {};
  async function draw() {
    try {
      const url = `/api/v1/timeline?model=${encodeURIComponent(model)}&minutes=60`;
      const response = await fetch(url);
      if (!response.ok) throw new Error(String(response.status));
      render(await response.json());
      box.dataset.points = "1";
    } catch (_) { /* the next round tries again */ }
    setTimeout(draw, 10000);
  }
  function render(data) {
    const xs = data.points.map((p) => p.t);
    const latest = [...data.points].reverse().find((p) => p.requests > 0);  // what each chart's text states
    for (const [id, chart] of Object.entries(CHARTS)) {
      const figure = box.querySelector(`#chart-${id}`);
      const ys = chart.series.map(([key]) => data.points.map((p) => p[key]));
      const now = latest
        ? chart.series.map(([key, label]) => `${label} ${latest[key] ?? "-"} ${chart.unit}`).join(", ")
        : "no requests in the last hour";
      figure.querySelector(".chart-now").textContent = now;
      const plot = figure.querySelector(".plot");
      plot.setAttribute("aria-label", `${figure.querySelector("figcaption").textContent}: ${now}`);
      plot.dataset.points = String(ys[0].filter((y) => y != null && y > 0).length);
      if (!window.uPlot) continue;  // the script did not load: the text above still says it
      if (!plots[id]) {
        plots[id] = new uPlot({
          width: Math.max(240, plot.clientWidth || 480),
          height: 160,
          legend: { show: chart.series.length > 1 },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: true } },
          // Points as well as lines: a lone busy bucket between quiet ones is a point, not a line.
          series: [{}, ...chart.series.map(([, label], i) => ({
            label, stroke: COLOURS[i], width: 2, spanGaps: false, points: { show: true, size: 5, fill: COLOURS[i] },
          }))],
          axes: [{}, { size: 50 }],
        }, [xs, ...ys], plot);
      } else {
        plots[id].setData([xs, ...ys]);
      }
    }
  }
  draw();
}
