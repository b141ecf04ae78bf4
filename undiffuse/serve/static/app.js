// undiffuse serve: the page. Plain JavaScript, no library: runs list, run view (config, live loss
// curve, pictures), sampling with live x_t / predicted x0 over server-sent events, cold restoration.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { run: null, info: null, job: null, source: null, logNext: 0, points: [], logTimer: null };

function showMessage(text) {
  const box = $("#message");
  box.textContent = text || "";
  box.hidden = !text;
}

// Every call to the server: JSON back, or the server's message shown in the page (never thrown).
async function api(path, options = {}) {
  let response;
  state.refusal = null;
  try {
    response = await fetch(path, options);
  } catch (e) {
    showMessage("cannot reach the server (" + e.message + "); is `undiffuse serve` still running?");
    return null;
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    showMessage((body && body.error) || ("the server answered " + response.status));
    state.refusal = body;
    return null;
  }
  return body;
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

async function loadRuns() {
  const data = await api("/api/runs");
  if (!data) return;
  $("#root").textContent = data.root;
  const list = $("#runs");
  list.replaceChildren();
  if (!data.runs.length) list.append(el("li", {}, "no runs under this folder yet"));
  for (const run of data.runs) {
    const item = el("li", { "data-name": run.name }, run.name);
    item.append(el("small", {}, run.kind + (run.has_checkpoint ? "" : " (no checkpoint yet)")));
    item.addEventListener("click", () => { location.hash = "run=" + encodeURIComponent(run.name); });
    list.append(item);
  }
}

function runFromHash() {
  const match = /^#run=(.*)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

async function selectRun(name) {
  showMessage("");
  for (const item of document.querySelectorAll("#runs li")) {
    item.classList.toggle("selected", item.dataset.name === name);
  }
  const info = await api("/api/run?name=" + encodeURIComponent(name));
  if (!info) { $("#run").hidden = true; return; }
  state.run = name;
  state.info = info;
  $("#run").hidden = false;
  $("#run-name").textContent = name;
  $("#run-kind").textContent = info.kind + (info.capabilities ? "" : " (no checkpoint yet: nothing to sample)");
  $("#config").textContent = JSON.stringify(info.config, null, 2);
  showPictures(info.pictures);
  setupSampleForm(info);
  setupRestoreForm(info);
  state.logNext = 0;
  state.points = [];
  clearInterval(state.logTimer);
  pollLog();
  state.logTimer = setInterval(pollLog, 2000);
  document.body.dataset.run = name;  // the run shown, once its forms are set up
}

function showPictures(files) {
  const box = $("#pictures");
  box.replaceChildren();
  if (!files.length) box.append(el("p", { class: "note" }, "no pictures yet (samples/ is empty)"));
  for (const file of files) {
    const figure = el("figure");
    const url = "/api/picture?name=" + encodeURIComponent(state.run) + "&file=" + encodeURIComponent(file);
    figure.append(el("img", { src: url, alt: file }), el("figcaption", {}, file));
    box.append(figure);
  }
}

// --- the loss curve, polled from log.jsonl (only the new bytes each time) -----------------------

async function pollLog() {
  const name = state.run;
  const data = await api("/api/log?name=" + encodeURIComponent(name) + "&since=" + state.logNext);
  if (!data || name !== state.run) return;
  if (data.next < state.logNext) state.points = [];
  state.logNext = data.next;
  if (data.points.length || !state.points.length) {
    state.points.push(...data.points);
    drawLoss(state.points);
  }
}

function drawLoss(points) {
  const canvas = $("#loss");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 40;
  ctx.clearRect(0, 0, w, h);
  const finite = points.filter(p => Number.isFinite(p[1]));
  $("#loss-note").textContent = finite.length ? finite.length + " points, last step " + finite[finite.length - 1][0]
    + ", loss " + finite[finite.length - 1][1].toPrecision(4) : "no loss logged yet";
  if (finite.length < 1) return;
  const logY = finite.every(p => p[1] > 0);
  const y = v => (logY ? Math.log10(v) : v);
  const xs = finite.map(p => p[0]), ys = finite.map(p => y(p[1]));
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const px = v => pad + (v - x0) / (x1 - x0) * (w - pad - 10);
  const py = v => h - pad + 10 - (v - y0) / (y1 - y0) * (h - pad);
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad, 10, w - pad - 10, h - pad);
  ctx.fillStyle = "#444";
  ctx.font = "11px sans-serif";
  const label = v => (logY ? Math.pow(10, v) : v).toPrecision(3);
  ctx.fillText(label(y1), 2, 18);
  ctx.fillText(label(y0), 2, h - pad + 10);
  ctx.fillText(String(x0), pad, h - pad + 24);
  ctx.fillText("step " + x1, w - 70, h - pad + 24);
  ctx.strokeStyle = "#2a6fdb";
  ctx.beginPath();
  finite.forEach((p, i) => (i ? ctx.lineTo(px(p[0]), py(y(p[1]))) : ctx.moveTo(px(p[0]), py(y(p[1])))));
  ctx.stroke();
}

// --- sampling ---------------------------------------------------------------------------------

// New options for a select; the choice made for the previous run stays when this run has it too.
function fillSelect(select, options, keepFirst) {
  const first = keepFirst ? select.options[0] : null;
  const chosen = select.value;
  select.replaceChildren();
  if (first) select.append(first);
  for (const [value, text] of options) select.append(el("option", { value: value }, text));
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

function setupSampleForm(info) {
  const form = $("#sample-form");
  const caps = info.capabilities;
  form.hidden = !(caps && caps.can_generate);
  if (form.hidden) return;
  const samplers = info.samplers.map(s => [s, s]);
  fillSelect(form.sampler, samplers, false);
  fillSelect(form.sampler_b, samplers, false);
  const spacings = info.spacings.map(s => [s, s]);
  fillSelect(form.spacing, spacings, true);
  fillSelect(form.spacing_b, spacings, true);
  for (const node of form.querySelectorAll(".gauss")) node.hidden = !info.spacings.length;
  const names = caps.class_names || [];
  const classes = Array.from({ length: caps.num_classes || 0 }, (_, i) => [String(i), names[i] || String(i)]);
  fillSelect(form.class_label, classes, true);
  for (const node of form.querySelectorAll(".labels")) node.hidden = !caps.takes_labels;
  for (const node of form.querySelectorAll(".prompts")) node.hidden = !caps.takes_prompts;
  form.precision.value = info.precision || "float32";  // the CLI's default for this run and machine
  form.steps.max = info.limits.max_steps;
  form.batch.max = info.limits.max_batch;
  for (const i of [0, 1]) $("#panel-" + i).hidden = true;
}

function settings(form) {
  const out = {};
  for (const key of ["sampler", "steps", "spacing", "seed", "guidance", "batch", "precision"]) out[key] = form[key].value;
  if (!form.querySelector(".labels").hidden) out.class_label = form.class_label.value;
  if (!form.querySelector(".prompts").hidden) {
    out.prompt = form.prompt.value;
    out.negative_prompt = form.negative_prompt.value;
  }
  if (form.compare.checked) {
    out.compare = { sampler: form.sampler_b.value, steps: form.steps_b.value, spacing: form.spacing_b.value,
                    guidance: form.guidance_b.value };
  }
  return out;
}

async function startSample(event) {
  event.preventDefault();
  showMessage("");
  setStatus($("#status"), "sending");
  const form = $("#sample-form");
  const reply = await api("/api/sample?name=" + encodeURIComponent(state.run), {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(settings(form)),
  });
  if (!reply) {
    setStatus($("#status"), "");
    // This visitor's job from before a reload: follow it again, so that it can be watched and cancelled.
    if (state.refusal && state.refusal.job && !state.job) follow(state.refusal.job, onSampleEvent, $("#status"));
    return;
  }
  for (const i of [0, 1]) {
    const panel = $("#panel-" + i);
    panel.hidden = !(i === 0 || form.compare.checked);
    for (const img of panel.querySelectorAll("img")) img.removeAttribute("src");
    $(".downloads", panel).replaceChildren();
  }
  follow(reply.job, onSampleEvent, $("#status"));
}

function setStatus(node, text) { node.textContent = text; }

// Follow a job's events until its end; `handle` draws what each event brings.
function follow(jobId, handle, statusNode) {
  if (state.source) state.source.close();
  state.job = jobId;
  $("#go").disabled = true;
  $("#restore-go").disabled = true;
  $("#cancel").disabled = false;
  $("#progress").value = 0;
  const source = new EventSource("/api/jobs/" + jobId + "/events");
  state.source = source;
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "queued") setStatus(statusNode, "waiting in the queue (position " + event.position + ")");
    else if (event.type === "started") setStatus(statusNode, "running");
    else if (["done", "error", "cancelled"].includes(event.type)) {
      source.close();
      finish(event, statusNode);
    } else handle(event, statusNode);
  };
  source.onerror = () => {
    if (state.source === source && source.readyState === EventSource.CLOSED) {
      finish({ type: "error", message: "lost the connection to the server" }, statusNode);
    }
  };
}

function finish(event, statusNode) {
  state.source = null;
  state.job = null;
  $("#go").disabled = false;
  $("#restore-go").disabled = false;
  $("#cancel").disabled = true;
  if (event.type === "done") { $("#progress").value = 1; setStatus(statusNode, "done in " + event.seconds + " s"); }
  if (event.type === "cancelled") setStatus(statusNode, "cancelled");
  if (event.type === "error") { setStatus(statusNode, "failed"); showMessage(event.message); }
}

function onSampleEvent(event, statusNode) {
  const panel = $("#panel-" + event.panel);
  if (event.type === "panel") {
    const s = event.spec;
    $(".spec", panel).textContent = (s.sampler || "default") + ", " + (s.num_inference_steps || "default")
      + " steps, guidance " + s.guidance + ", seed " + s.seed;
  } else if (event.type === "step") {
    if (event.x_t) $(".xt", panel).src = event.x_t;  // a finished job's early steps have no picture
    if (event.x0) $(".x0", panel).src = event.x0;
    $("#progress").value = event.i / event.total;
    setStatus(statusNode, (event.panel ? "B: " : "") + "step " + event.i + " / " + event.total);
  } else if (event.type === "result") {
    $(".final", panel).src = event.image;
    const links = $(".downloads", panel);
    links.replaceChildren(el("a", { href: event.grid, download: "" }, "grid PNG"),
                          el("a", { href: event.trajectory, download: "" }, "trajectory PNG"));
  }
}

async function cancelJob() {
  if (!state.job) return;
  await api("/api/jobs/" + state.job + "/cancel", { method: "POST" });
}

// --- cold runs: the degradation ladder and restoration ----------------------------------------

function setupRestoreForm(info) {
  const form = $("#restore-form");
  const caps = info.capabilities;
  form.hidden = !(caps && caps.can_restore);
  if (form.hidden) return;
  $("#restore-t").max = info.max_severity;
  $("#restore-t").value = info.max_severity;
  $("#restore-steps").max = info.limits.max_steps;
  for (const id of ["#ladder", "#restoration"]) $(id).hidden = true;
}

async function startRestore(event) {
  event.preventDefault();
  showMessage("");
  setStatus($("#restore-status"), "sending");
  const file = $("#restore-file").files[0];
  const limit = state.info.limits.max_upload_bytes;
  if (file && file.size > limit) {
    showMessage("the image is " + file.size + " bytes; the limit is " + limit + " bytes");
    setStatus($("#restore-status"), "");
    return;
  }
  const query = new URLSearchParams({ name: state.run, t: $("#restore-t").value,
                                      steps: $("#restore-steps").value, seed: $("#restore-seed").value });
  const reply = await api("/api/restore?" + query, {
    method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file || new Blob([]),
  });
  if (reply) follow(reply.job, onRestoreEvent, $("#restore-status"));
  else setStatus($("#restore-status"), "");
}

function onRestoreEvent(event, statusNode) {
  if (event.type === "step") {
    $("#progress").value = event.i / event.total;
    setStatus(statusNode, "ladder drawn; restoring");
  } else if (event.type === "restored") {
    $("#ladder").src = event.ladder;
    $("#restoration").src = event.restoration;
    $("#ladder").hidden = false;
    $("#restoration").hidden = false;
    $("#restore-download").replaceChildren(el("a", { href: event.download, download: "" }, "restoration PNG"));
  }
}

// --- wiring -----------------------------------------------------------------------------------

async function route() {
  const name = runFromHash();
  if (name !== null) await selectRun(name);
}

// Panel B of a comparison: a copy of panel A.
function makeSecondPanel() {
  const copy = $("#panel-0").cloneNode(true);
  copy.id = "panel-1";
  $(".letter", copy).textContent = "B";
  $("#panel-0").after(copy);
}

async function main() {
  makeSecondPanel();
  $("#sample-form").addEventListener("submit", startSample);
  $("#restore-form").addEventListener("submit", startRestore);
  $("#cancel").addEventListener("click", cancelJob);
  $("#sample-form").compare.addEventListener("change", (e) => { $("#compare-fields").hidden = !e.target.checked; });
  window.addEventListener("hashchange", route);
  await loadRuns();
  await route();
  document.body.dataset.ready = "1";
}

main();
