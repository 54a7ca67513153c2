// The web console: a thin client of the control-plane REST API (/v1). No build step, no
// dependencies: everything it shows or changes goes through the same API the CLI uses.
"use strict";

const view = document.getElementById("view");
const statusEl = document.getElementById("status");
const PHASE_COLOURS = {queue: "#b0bec5", placement: "#90caf9", code_fetch: "#80cbc4", sandbox: "#ce93d8",
  runtime_init: "#ffcc80", user_init: "#ffab91", run: "#a5d6a7", overhead: "#e0e0e0"};

function say(text, isError) {
  statusEl.textContent = text || "";
  statusEl.className = isError ? "error" : "";
}

async function api(method, path, body, headers) {
  const opts = {method, headers: headers || {}};
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer) {
      opts.body = body;
    } else {
      opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json";
    }
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!resp.ok) {
    const err = (data && data.error) || {code: "Http.Error", message: text};
    const where = err.field ? ` (field: ${err.field})` : "";
    throw new Error(`${err.code}: ${err.message}${where}`);
  }
  return {data, resp};
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function mount(templateId) {
  view.replaceChildren(document.getElementById(templateId).content.cloneNode(true));
}

function formValues(form, numeric) {
  const out = {};
  for (const [k, v] of new FormData(form).entries()) {
    if (v === "") continue;
    out[k] = numeric.includes(k) ? Number(v) : v;
  }
  return out;
}

const NUMERIC = ["memory_mb", "timeout_s", "concurrency", "max_instances", "min_instances", "keep_alive_s"];
const STARTERS = {
  "python3.11": ["index.py", "def handler(event, context):\n    return \"Hello Serverless\"\n"],
  "nodejs20": ["index.js", "exports.handler = async (event, context) => {\n  return \"Hello Serverless\";\n};\n"],
  "provided.al2023": ["bootstrap", "#!/bin/sh\n# A custom runtime: poll the Lambda Runtime API, answer each event.\n" +
    "API=\"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime\"\nwhile true; do\n  H=$(mktemp)\n" +
    "  EVENT=$(curl -sS -D \"$H\" \"$API/invocation/next\")\n" +
    "  ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id \"$H\" | tr -d '[:space:]' | cut -d: -f2)\n" +
    "  curl -sS -o /dev/null \"$API/invocation/$ID/response\" -d '\"Hello Serverless\"'\ndone\n"],
};
STARTERS["provided"] = STARTERS["provided.al2023"];

async function showFunctions() {
  mount("t-functions");
  const {data} = await api("GET", "/v1/functions");
  const {data: trig} = await api("GET", "/v1/triggers");
  const tbody = view.querySelector("#functions tbody");
  for (const f of data.functions) {
    const routes = trig.triggers.filter(t => t.function === f.name).map(t => `${t.method} ${t.path}`).join(", ");
    tbody.append(el("tr", {}, el("td", {}, el("a", {href: `#/functions/${f.name}`}, f.name)), el("td", {}, f.runtime),
      el("td", {}, f.version), el("td", {}, f.memory_mb), el("td", {}, f.timeout_s), el("td", {}, f.concurrency),
      el("td", {}, routes)));
  }
  view.querySelector(".empty").hidden = data.functions.length > 0;
  view.querySelector("#create").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const cfg = formValues(ev.target, NUMERIC);
    try {
      await api("POST", "/v1/functions", cfg);
      const [file, source] = STARTERS[cfg.runtime] || STARTERS["python3.11"];
      await api("PUT", `/v1/functions/${cfg.name}/code`, {files: {[file]: source}});
      say(`Created ${cfg.name}`);
      location.hash = `#/functions/${cfg.name}`;
    } catch (e) { say(e.message, true); }
  });
}

async function showUsage() {
  mount("t-usage");
  const {data} = await api("GET", "/v1/usage");
  const tbody = view.querySelector("#usage tbody");
  for (const u of data.usage) {
    tbody.append(el("tr", {}, el("td", {}, u.function), el("td", {}, u.invocations), el("td", {}, u.errors),
      el("td", {}, u.cold_starts), el("td", {}, u.gb_seconds.toFixed(6)), el("td", {}, u.avg_duration_ms.toFixed(2))));
  }
}

function phaseBar(phases) {
  const total = Object.values(phases).reduce((a, b) => a + b, 0) || 1;
  const bar = el("div", {class: "bar"});
  const legend = el("div", {class: "legend"});
  for (const [name, ms] of Object.entries(phases)) {
    if (ms <= 0) continue;
    bar.append(el("span", {style: `width:${(100 * ms / total).toFixed(2)}%;background:${PHASE_COLOURS[name] || "#ccc"}`,
      title: `${name} ${ms.toFixed(2)} ms`}));
    legend.append(`${name} ${ms.toFixed(2)} ms  `);
  }
  return el("div", {}, bar, legend);
}

function parseServerTiming(header) {
  const phases = {};
  let cold = null;
  for (const part of (header || "").split(",")) {
    const [name, ...params] = part.trim().split(";");
    for (const p of params) {
      if (p.startsWith("dur=") && name !== "total") phases[name] = Number(p.slice(4));
      if (p.startsWith("desc=")) cold = p.slice(5).replace(/"/g, "");
    }
  }
  return {phases, cold};
}

async function showFunction(name) {
  mount("t-function");
  const {data: fn} = await api("GET", `/v1/functions/${name}`);
  view.querySelector("#fn-title").textContent = fn.name;
  view.querySelector("#fn-summary").textContent =
    `${fn.runtime} · ${fn.handler} · ${fn.memory_mb} MB · ${fn.timeout_s} s · version ${fn.version}` +
    (fn.code_sha256 ? ` · sha256 ${fn.code_sha256.slice(0, 12)}` : " · no code yet");
  const s = fn.scaling;
  view.querySelector("#fn-scaling").textContent =
    `Instances: ${s.ready} ready, ${s.starting} starting, ${s.waiting} waiting, ${s.inflight} in flight. ` +
    `Autoscaler: ${s.desired === null ? "-" : s.desired} desired (${s.mode || "idle"}): ${s.reason}` +
    (s.decided_by ? ` (decided by ${s.decided_by} from ${s.edges} edge${s.edges === 1 ? "" : "s"})` : "");

  // Code
  let files = {};
  if (fn.version) files = (await api("GET", `/v1/functions/${name}/files`)).data.files;
  if (!Object.keys(files).length) files = {[STARTERS[fn.runtime][0]]: STARTERS[fn.runtime][1]};
  const select = view.querySelector("#file-select");
  const editor = view.querySelector("#editor");
  let current = null;
  const refreshFiles = () => {
    select.replaceChildren(...Object.keys(files).sort().map(f => el("option", {}, f)));
    select.value = current;
  };
  const open = (f) => { if (current !== null) files[current] = editor.value; current = f; editor.value = files[f]; refreshFiles(); };
  select.addEventListener("change", () => open(select.value));
  open(Object.keys(files).sort().find(f => f.startsWith("index.")) || Object.keys(files).sort()[0]);
  view.querySelector("#add-file").addEventListener("click", () => {
    const f = view.querySelector("#new-file").value.trim();
    if (f && !(f in files)) { files[f] = ""; open(f); }
  });
  view.querySelector("#save-code").addEventListener("click", async () => {
    files[current] = editor.value;
    try {
      const {data} = await api("PUT", `/v1/functions/${name}/code`, {files});
      say(`Deployed version ${data.version.version}` + (data.warnings.length ? ` (warning: ${data.warnings[0]})` : ""));
      showFunction(name);
    } catch (e) { say(e.message, true); }
  });
  view.querySelector("#zip").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    try {
      const {data} = await api("PUT", `/v1/functions/${name}/code`, file, {"Content-Type": "application/zip"});
      say(`Deployed version ${data.version.version}`);
      showFunction(name);
    } catch (e) { say(e.message, true); }
  });

  // Settings
  const form = view.querySelector("#settings");
  for (const k of [...NUMERIC, "handler"]) form.elements[k].value = fn[k];
  form.elements.environment.value = JSON.stringify(fn.environment);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const cfg = formValues(form, NUMERIC);
    try {
      cfg.environment = cfg.environment ? JSON.parse(cfg.environment) : {};
      await api("PATCH", `/v1/functions/${name}`, cfg);
      say("Settings saved");
      showFunction(name);
    } catch (e) { say(e.message, true); }
  });
  view.querySelector("#delete").addEventListener("click", async () => {
    if (!confirm(`Delete ${name}, its triggers and its instances?`)) return;
    try { await api("DELETE", `/v1/functions/${name}`); location.hash = "#/"; say(`Deleted ${name}`); }
    catch (e) { say(e.message, true); }
  });

  // Triggers
  const ul = view.querySelector("#triggers");
  for (const t of fn.triggers) {
    const edge = `${location.protocol}//${location.hostname}:${(await edgePort())}${t.path}`;
    ul.append(el("li", {}, `${t.method} ${t.path} `, el("a", {href: edge, target: "_blank"}, "open"), " ",
      el("button", {type: "button", onclick: async () => {
        try { await api("DELETE", `/v1/triggers?method=${encodeURIComponent(t.method)}&path=${encodeURIComponent(t.path)}`); showFunction(name); }
        catch (e) { say(e.message, true); }
      }}, "remove")));
  }
  view.querySelector("#trigger-add").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const t = formValues(ev.target, []);
    try { await api("POST", `/v1/functions/${name}/triggers`, t); say(`Trigger ${t.method} ${t.path} added`); showFunction(name); }
    catch (e) { say(e.message, true); }
  });

  // Invoke
  view.querySelector("#invoke").addEventListener("click", async () => {
    const out = view.querySelector("#result");
    let event;
    try { event = JSON.parse(view.querySelector("#event").value || "{}"); }
    catch (e) { say(`The event is not valid JSON: ${e.message}`, true); return; }
    const resp = await fetch(`/v1/functions/${name}/invocations`, {method: "POST", body: JSON.stringify(event),
      headers: {"Content-Type": "application/json"}});
    const text = await resp.text();
    const timing = parseServerTiming(resp.headers.get("Server-Timing"));
    out.textContent = `HTTP ${resp.status} · request ${resp.headers.get("X-Request-Id")} · ` +
      (timing.cold ? `cold start (${timing.cold})` : "warm") + "\n" + text;
    view.querySelector("#phases").replaceChildren(phaseBar(timing.phases));
    loadInvocations(name);
  });
  loadInvocations(name);
}

let edgePortCache = null;
async function edgePort() {
  if (edgePortCache === null) edgePortCache = (await api("GET", "/v1/health")).data.edge_port || 8080;
  return edgePortCache;
}

async function loadInvocations(name) {
  const {data} = await api("GET", `/v1/functions/${name}/invocations?limit=20`);
  const tbody = view.querySelector("#invocations tbody");
  if (!tbody) return;
  tbody.replaceChildren(...data.invocations.map(r => el("tr", {},
    el("td", {}, new Date(r.started_at * 1000).toLocaleTimeString()), el("td", {}, r.request_id.slice(0, 12)),
    el("td", {}, r.status + (r.error_type ? ` (${r.error_type})` : "")),
    el("td", {class: r.cold ? "cold" : ""}, r.cold ? `cold: ${r.cold_cause}` : "warm"),
    el("td", {}, r.duration_ms.toFixed(2)), el("td", {}, r.billed_gb_s.toFixed(6)), el("td", {}, phaseBar(r.phases)))));
  const logs = await api("GET", `/v1/functions/${name}/logs?limit=20`);
  view.querySelector("#logs").textContent = logs.data.lines.map(l => l.line).join("\n");
}

async function route() {
  say("");
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/functions/")) await showFunction(decodeURIComponent(hash.slice(12)));
    else if (hash === "#/usage") await showUsage();
    else await showFunctions();
  } catch (e) { say(e.message, true); }
}

window.addEventListener("hashchange", route);
route();
