// The web console: a client of the control-plane REST API (/v1), the same API the CLI uses.
// It logs in with an API token kept in this tab's sessionStorage (gone when the tab closes) and
// sent as a Bearer header: no cookie, so no other page can make the browser use it.
// Built by esbuild into ../dist (make console); CodeMirror and uPlot come from package-lock.json.
import {CodeEditor} from "./editor.js";
import {Charts} from "./charts.js";
import {AuthNeeded, TOKEN_KEY, token, view, say, statusIsError, setAuthHandler, authHeaders, api, el, setState,
  clearErrors, fieldError, submitting, FieldError, formValues} from "./ui.js";
import {setupReleases, triggerLabel} from "./releases.js";
import {setupEvents, setupEventTriggers} from "./events.js";
import {showLayers, setupFunctionLayers} from "./layers.js";

/** How often the open function page asks for new log lines; the least time between two chart queries. */
const TAIL_MS = 1000;
const CHART_MS = 5000;
/** Log lines kept on the page: a long tail must not grow the tab without bound. */
const MAX_LOG_LINES = 2000;
const NAME_RE = /^[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?$/;

const PHASE_COLOURS = {queue: "#b0bec5", placement: "#90caf9", code_fetch: "#80cbc4", sandbox: "#ce93d8",
  runtime_init: "#ffcc80", user_init: "#ffab91", run: "#a5d6a7", overhead: "#e0e0e0"};
let cleanup = [];
let pageFn = null;  // the function the page shows, as last read
let unsaved = () => false;  // whether leaving the page would lose edits
let shownHash = location.hash;   // what the current page started (timers, editors, charts), stopped on leaving it

function mount(templateId) {
  for (const stop of cleanup) stop();
  cleanup = [];
  view.replaceChildren(document.getElementById(templateId).content.cloneNode(true));
}

const NUMERIC = ["memory_mb", "timeout_s", "concurrency", "max_instances", "min_instances", "keep_alive_s"];
const STARTERS = {
  "python3.11": ["index.py", "def handler(event, context):\n    return \"Hello Serverless\"\n"],
  "nodejs20": ["index.js", "exports.handler = async (event, context) => {\n  return \"Hello Serverless\";\n};\n"],
};

// -- functions list ------------------------------------------------------------------------

async function showFunctions() {
  mount("t-functions");
  const state = view.querySelector("#functions-state");
  const table = view.querySelector("#functions");
  const load = async () => {
    setState(state, "loading", "Loading functions…");
    try {
      const [{data}, {data: trig}, recent] = await Promise.all([api("GET", "/v1/functions"), api("GET", "/v1/triggers"),
        api("GET", "/v1/usage?since=-3600").then(r => r.data.usage, () => null)]);  // a token may not read records
      const lastHour = Object.fromEntries((recent || []).map(u => [u.function, u]));
      const hourly = (f, k) => recent === null ? "–" : (lastHour[f.name] ? lastHour[f.name][k] : 0);
      const tbody = table.querySelector("tbody");
      tbody.replaceChildren(...data.functions.map(f => {
        const routes = trig.triggers.filter(t => t.function === f.name || t.function.startsWith(`${f.name}:`))
          .map(t => triggerLabel(t) + (t.function === f.name ? "" : ` (${t.function.slice(f.name.length + 1)})`)).join(", ");
        return el("tr", {}, el("td", {"data-label": "Name"}, el("a", {href: `#/functions/${f.name}`}, f.name)),
          el("td", {"data-label": "Runtime"}, f.runtime), el("td", {"data-label": "Version"}, f.version || "no code"),
          el("td", {"data-label": "Memory"}, `${f.memory_mb} MB`), el("td", {"data-label": "Calls (1 h)"}, hourly(f, "invocations")),
          el("td", {"data-label": "Errors (1 h)", class: hourly(f, "errors") > 0 ? "bad" : ""}, hourly(f, "errors")),
          el("td", {"data-label": "Triggers"}, routes || "–"));
      }));
      setState(state, null);
      table.hidden = !data.functions.length;
      view.querySelector(".empty").hidden = data.functions.length > 0;
    } catch (e) {
      if (e instanceof AuthNeeded) throw e;
      setState(state, "error", `Could not load the functions: ${e.message}`, load);
    }
  };
  const form = view.querySelector("#create");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const cfg = formValues(form, NUMERIC);
      if (!cfg.name) throw new FieldError("name", "give the function a name, for example hello");
      if (!NAME_RE.test(cfg.name)) throw new FieldError("name", "use lowercase letters, digits and -, starting with a letter (at most 60)");
      await api("POST", "/v1/functions", cfg);
      const [file, source] = STARTERS[cfg.runtime] || STARTERS["python3.11"];
      await api("PUT", `/v1/functions/${cfg.name}/code`, {files: {[file]: source}});
      say(`Created ${cfg.name}`);
      location.hash = `#/functions/${cfg.name}`;
    });
  });
  await load();
}

// -- usage -----------------------------------------------------------------------------------

async function showUsage() {
  mount("t-usage");
  const state = view.querySelector("#usage-state");
  const load = async () => {
    setState(state, "loading", "Loading usage…");
    try {
      const {data} = await api("GET", "/v1/usage");
      const tbody = view.querySelector("#usage tbody");
      tbody.replaceChildren(...data.usage.map(u => el("tr", {}, el("td", {"data-label": "Function"}, u.function),
        el("td", {"data-label": "Invocations"}, u.invocations), el("td", {"data-label": "Errors"}, u.errors),
        el("td", {"data-label": "Cold starts"}, u.cold_starts), el("td", {"data-label": "GB-s"}, u.gb_seconds.toFixed(6)),
        el("td", {"data-label": "Avg ms"}, u.avg_duration_ms.toFixed(2)))));
      setState(state, null);
      view.querySelector("#usage").hidden = !data.usage.length;
      view.querySelector(".empty").hidden = data.usage.length > 0;
    } catch (e) {
      if (e instanceof AuthNeeded) throw e;
      setState(state, "error", `Could not load usage: ${e.message}`, load);
    }
  };
  await load();
}

// -- one function ------------------------------------------------------------------------------

function phaseBar(phases) {
  const total = Object.values(phases).reduce((a, b) => a + b, 0) || 1;
  const bar = el("div", {class: "bar"});
  const legend = el("div", {class: "legend"});
  for (const [name, ms] of Object.entries(phases)) {
    if (ms <= 0) continue;
    bar.append(el("span", {style: `width:${(100 * ms / total).toFixed(2)}%;background:${PHASE_COLOURS[name] || "#ccc"}`,
      title: `${name} ${ms.toFixed(2)} ms`}));
    legend.append(el("span", {}, el("i", {style: `background:${PHASE_COLOURS[name] || "#ccc"}`}), `${name} ${ms.toFixed(2)} ms`));
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

let edgeBaseCache = null;
/** Where triggers answer: this host, on the edge port the API reports. */
async function edgeBase() {
  if (edgeBaseCache === null) {
    const port = (await api("GET", "/v1/health")).data.edge_port || 8080;
    edgeBaseCache = `${location.protocol}//${location.hostname}:${port}`;
  }
  return edgeBaseCache;
}

async function copy(text, button) {
  try { await navigator.clipboard.writeText(text); }
  catch (e) {  // no clipboard API (plain http on another host): select and copy
    const ta = el("textarea", {style: "position:fixed;opacity:0"}); ta.value = text; document.body.append(ta);
    ta.select(); document.execCommand("copy"); ta.remove();
  }
  const before = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = before; }, 1500);
}

function pathParams(path) { return [...path.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\+?\}/g)].map(m => m[1]); }

function triggerItem(t, base, onRemove) {
  const params = pathParams(t.path);
  const values = Object.fromEntries(params.map(p => [p, p]));
  const url = () => base + t.path.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\+?\}/g, (_, p) => encodeURIComponent(values[p] || p));
  const urlText = el("code", {class: "url"}, url());
  const open = el("a", {href: url(), target: "_blank", rel: "noopener", class: "button"}, "Open");
  const copyBtn = el("button", {type: "button", class: "copy"}, "Copy URL");
  copyBtn.addEventListener("click", () => copy(url(), copyBtn));
  const inputs = params.map(p => el("label", {class: "inline param"}, `{${p}}`, el("input", {value: p, "aria-label": `value of ${p}`,
    oninput: (ev) => { values[p] = ev.target.value; urlText.textContent = url(); open.href = url(); }})));
  const auth = t.auth && t.auth.type && t.auth.type !== "none" ? el("span", {class: "badge warn"}, `auth: ${t.auth.type}`) : null;
  const canOpen = t.method === "GET" || t.method === "ANY";
  return el("li", {"data-method": t.method, "data-path": t.path},
    el("div", {class: "trigger-head"}, el("span", {class: "badge"}, t.method), el("code", {}, t.path), auth,
      t.function.includes(":") ? el("span", {class: "badge alias", title: "calls go to this alias or version"}, `→ ${t.function}`) : null),
    el("div", {class: "trigger-url"}, urlText),
    inputs.length ? el("div", {class: "params"}, ...inputs) : null,
    el("div", {class: "actions"}, copyBtn, canOpen ? open : el("span", {class: "muted"}, `call it with ${t.method}`),
      el("button", {type: "button", class: "danger", onclick: onRemove}, "Remove")));
}

async function showFunction(name) {
  mount("t-function");
  let fn;
  const title = view.querySelector("#fn-title");
  title.textContent = name;
  try { fn = (await api("GET", `/v1/functions/${name}`)).data; }
  catch (e) {
    if (e instanceof AuthNeeded) throw e;
    view.replaceChildren(el("section", {class: "card"}, el("div", {class: "state error"},
      e.status === 404 ? `There is no function called ${name}. ` : `Could not load ${name}: ${e.message} `,
      el("a", {href: "#/"}, "Back to the functions"))));
    return;
  }
  const renderHeader = () => {
    pageFn = fn;
    view.querySelector("#fn-version").textContent = fn.version ? `version ${fn.version}` : "no code yet";
    view.querySelector("#fn-summary").textContent =
      `${fn.runtime} · ${fn.handler} · ${fn.memory_mb} MB · ${fn.timeout_s} s · version ${fn.version}` +
      (fn.code_sha256 ? ` · sha256 ${fn.code_sha256.slice(0, 12)}` : "");
    view.querySelector("#fn-description").textContent = fn.description || "";
    view.querySelector("#fn-description").hidden = !fn.description;
    const s = fn.scaling;
    view.querySelector("#fn-scaling").textContent = s ?
      `Instances: ${s.ready} ready, ${s.starting} starting, ${s.waiting} waiting, ${s.inflight} in flight. ` +
      `Autoscaler: ${s.desired === null || s.desired === undefined ? "-" : s.desired} desired (${s.mode || "idle"})` +
      (s.reason ? `: ${s.reason}` : "") : "";
  };
  renderHeader();
  const refreshFn = async () => {
    fn = (await api("GET", `/v1/functions/${name}`)).data;
    renderHeader();
    view.dispatchEvent(new CustomEvent("function-changed"));
  };
  // Every trigger of the function: HTTP routes, schedules and queues, also those bound to one of
  // its aliases or versions ("NAME:live"), which the API's ?function= filter would leave out.
  let triggers = [];
  const ofThis = (t) => t.function === name || t.function.startsWith(`${name}:`);
  const reloadTriggers = async () => {
    triggers = (await api("GET", "/v1/triggers")).data.triggers.filter(ofThis);
    view.dispatchEvent(new CustomEvent("triggers-changed"));
  };
  try { await reloadTriggers(); } catch (e) { if (e instanceof AuthNeeded) throw e; triggers = fn.triggers || []; }
  const onCleanup = (stop) => cleanup.push(stop);
  // The instance counts and the autoscaler's decision change by themselves: keep them current.
  const headerTimer = setInterval(() => { if (!document.hidden) refreshFn().catch(() => {}); }, CHART_MS);
  cleanup.push(() => clearInterval(headerTimer));

  setupEventTriggers(name, () => fn, () => triggers, reloadTriggers, onCleanup);
  await Promise.all([setupCode(name, fn, refreshFn), setupCharts(name), setupTriggers(name, () => triggers, reloadTriggers),
    setupLogs(name), setupVersions(name, fn, refreshFn), setupReleases(name, () => triggers),
    setupFunctionLayers(name, () => fn, refreshFn), setupEvents(name, () => fn, onCleanup)]);
  setupInvoke(name);
  setupSettings(name, fn, refreshFn);
}

async function setupCode(name, fn, refreshFn) {
  const state = view.querySelector("#code-state");
  const form = view.querySelector("#code-form");
  const tree = view.querySelector("#file-tree");
  const fileLabel = view.querySelector("#editor-file");
  let marked = null;
  const markModified = () => {  // the tree's dots and the save button follow the edits
    const now = JSON.stringify(editor.paths().map(p => editor.modified(p)));
    if (now === marked) return;
    marked = now;
    for (const li of tree.querySelectorAll("li[data-path]")) li.classList.toggle("modified", editor.modified(li.dataset.path));
    view.querySelector("#save-code").classList.toggle("pending", editor.anyModified());
  };
  const editor = new CodeEditor(view.querySelector("#editor"), () => save(), markModified);
  const leaving = (ev) => { if (editor.anyModified()) { ev.preventDefault(); ev.returnValue = ""; } };
  window.addEventListener("beforeunload", leaving);
  unsaved = () => editor.anyModified();
  cleanup.push(() => { window.removeEventListener("beforeunload", leaving); unsaved = () => false; });
  cleanup.push(() => editor.destroy());
  let omitted = [];

  const renderTree = () => {
    const paths = editor.paths();
    tree.replaceChildren(...paths.map(p => {
      const depth = p.split("/").length - 1;
      const item = el("li", {role: "treeitem", "aria-selected": String(p === editor.current), "data-path": p,
        class: p === editor.current ? "selected" : "", style: `padding-left:${0.5 + depth}rem`},
        el("button", {type: "button", class: "file", onclick: () => { editor.open(p); renderTree(); }},
          depth ? p.split("/").pop() : p),
        paths.length > 1 ? el("button", {type: "button", class: "x", title: `remove ${p}`, "aria-label": `remove ${p}`,
          onclick: () => { editor.remove(p); renderTree(); }}, "×") : null);
      if (depth) item.title = p;
      return item;
    }), ...omitted.map(p => el("li", {class: "omitted", title: "binary or large: kept, not editable here"}, p)));
    // folders as headings: a path a/b.py shows under "a/"
    let lastDir = null;
    for (const li of [...tree.querySelectorAll("li[data-path]")]) {
      const dir = li.dataset.path.includes("/") ? li.dataset.path.slice(0, li.dataset.path.lastIndexOf("/") + 1) : null;
      if (dir && dir !== lastDir) li.before(el("li", {class: "dir", role: "presentation"}, dir));
      lastDir = dir;
    }
    fileLabel.textContent = editor.current || "";
    marked = null;
    markModified();
  };

  const load = async () => {
    state.textContent = "Loading the code…";
    let files = {};
    fn = pageFn || fn;
    if (fn.version) {
      const {data} = await api("GET", `/v1/functions/${name}/files`);
      files = data.files;
      omitted = data.omitted || [];
    }
    if (!Object.keys(files).length) files = {[STARTERS[fn.runtime][0]]: STARTERS[fn.runtime][1]};
    const paths = Object.keys(files).sort();
    editor.load(files, paths.find(f => f.startsWith(fn.handler.split(".")[0] + ".")) || paths.find(f => f.startsWith("index.")) || paths[0]);
    renderTree();
    state.textContent = omitted.length ? `${omitted.length} file(s) not editable here are kept on save only if you upload a zip` : "";
  };

  const save = () => submitting(form, async () => {
    if (omitted.length) throw new FieldError("files", `this version has files the editor cannot show (${omitted.join(", ")}); saving here would drop them: upload a zip instead`);
    const {data} = await api("PUT", `/v1/functions/${name}/code`, {files: editor.files()});
    editor.markSaved();
    marked = null;
    markModified();
    say(`Deployed version ${data.version.version}` + (data.warnings.length ? ` (warning: ${data.warnings[0]})` : ""));
    await refreshFn();
    view.dispatchEvent(new CustomEvent("deployed"));
  });

  view.querySelector("#save-code").addEventListener("click", save);
  view.addEventListener("deployed", (ev) => {  // another version's code became current: show it
    if (ev.detail && ev.detail.reload) load().catch(e => { state.textContent = `Could not load the code: ${e.message}`; });
  });
  const addForm = view.querySelector("#file-add");
  addForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors(addForm);
    const p = addForm.elements.path.value.trim();
    if (!p) return fieldError(addForm, "path", "type a file path, for example lib/util.py");
    if (p.startsWith("/") || p.split("/").includes("..") || p.endsWith("/")) return fieldError(addForm, "path", "a path inside the package, like lib/util.py");
    if (editor.paths().includes(p)) return fieldError(addForm, "path", `${p} is already there`);
    editor.add(p);
    addForm.elements.path.value = "";
    renderTree();
  });
  view.querySelector("#zip").addEventListener("change", (ev) => submitting(form, async () => {
    const file = ev.target.files[0];
    if (!file) return;
    const {data} = await api("PUT", `/v1/functions/${name}/code`, file, {"Content-Type": "application/zip"});
    say(`Deployed version ${data.version.version}`);
    await refreshFn();
    await load();
    view.dispatchEvent(new CustomEvent("deployed"));
  }));
  try { await load(); } catch (e) { if (e instanceof AuthNeeded) throw e; state.textContent = `Could not load the code: ${e.message}`; }
}

/** Seconds per chart bucket of each window (the API answers 60 buckets). */
const WINDOW_STEP_S = {"15m": 15, "1h": 60, "6h": 360, "24h": 1440, "7d": 10080};

async function setupCharts(name) {
  const state = view.querySelector("#charts-state");
  const charts = new Charts(view.querySelector("#charts"));
  const select = view.querySelector("#window");
  select.value = sessionStorage.getItem("faas.window") || "1h";
  // One query at a time and at most one every CHART_MS: a day's window reads every record of the
  // day, so new calls and the timer ask for a redraw and this coalesces the asks.
  let busy = false, again = false, last = 0, soon = null;
  const run = async () => {
    busy = true;
    last = Date.now();
    try {
      const {data} = await api("GET", `/v1/functions/${name}/series?window=${encodeURIComponent(select.value)}`);
      setState(state, null);
      charts.update(data);
      const calls = data.points.reduce((a, p) => a + p.invocations, 0);
      if (!calls) setState(state, "empty", "No invocations in this window yet: the charts fill in as the function is called.");
    } catch (e) {
      if (e instanceof AuthNeeded) { showLogin(e.message); return; }
      setState(state, "error", `Could not load the metrics: ${e.message}`, () => request());
    } finally {
      busy = false;
      if (again) { again = false; request(); }
    }
  };
  const request = () => {
    if (busy) { again = true; return; }
    clearTimeout(soon);
    soon = setTimeout(run, Math.max(0, last + CHART_MS - Date.now()));
  };
  // Unprompted redraws every half bucket (at least CHART_MS): a 24-hour chart moves every 12 minutes.
  let timer = null;
  const every = () => {
    clearInterval(timer);
    timer = setInterval(() => { if (!document.hidden) request(); }, Math.max(CHART_MS, WINDOW_STEP_S[select.value] * 500));
  };
  select.addEventListener("change", () => { sessionStorage.setItem("faas.window", select.value); last = 0; request(); every(); });
  every();
  cleanup.push(() => { clearInterval(timer); clearTimeout(soon); charts.destroy(); });
  view.addEventListener("activity", request);
  await run();
}

/** Keep ``select`` listing what a call may target: the latest code, an alias or a published version. */
function qualifiers(select) {
  view.addEventListener("releases-changed", (ev) => {
    const keep = select.value;
    select.replaceChildren(el("option", {value: ""}, "$LATEST"),
      ...ev.detail.aliases.map(a => el("option", {value: a.name}, `alias ${a.name}`)),
      ...ev.detail.versions.map(v => el("option", {value: String(v.version)}, `version ${v.version}`)));
    if ([...select.options].some(o => o.value === keep)) select.value = keep;
  });
}

async function setupTriggers(name, triggers, reloadTriggers) {
  const ul = view.querySelector("#triggers");
  const form = view.querySelector("#trigger-add");
  qualifiers(form.elements.target);
  const base = await edgeBase();
  const render = (triggers) => {
    ul.replaceChildren(...triggers.map(t => triggerItem(t, base, async () => {
      if (!confirm(`Remove the trigger ${t.method} ${t.path}?`)) return;
      try {
        await api("DELETE", `/v1/triggers?method=${encodeURIComponent(t.method)}&path=${encodeURIComponent(t.path)}`);
        say(`Trigger ${t.method} ${t.path} removed`);
        await reload();
      } catch (e) { say(e.message, true); }
    })));
    view.querySelector("#triggers-empty").hidden = triggers.length > 0;
  };
  const reload = reloadTriggers;
  const http = () => triggers().filter(t => !t.kind || t.kind === "http");
  view.addEventListener("triggers-changed", () => render(http()));
  render(http());
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const {target, ...t} = formValues(form, []);
      if (!t.path) throw new FieldError("path", "give a path, for example /hello or /hello/{name}");
      if (!t.path.startsWith("/")) throw new FieldError("path", "a path starts with /");
      if (target) {  // bound to an alias or a published version: NAME:live, NAME:3
        try { await api("POST", "/v1/triggers", {...t, function: `${name}:${target}`}); }
        catch (e) { if (e.field === "function") e.field = "target"; throw e; }
      } else await api("POST", `/v1/functions/${name}/triggers`, t);
      say(`Trigger ${t.method} ${t.path} added` + (target ? ` for ${name}:${target}` : ""));
      form.elements.path.value = "";
      await reload();
    });
  });
}

function setupInvoke(name) {
  const form = view.querySelector("#invoke-form");
  qualifiers(form.elements.qualifier);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const out = view.querySelector("#result");
      let event;
      try { event = JSON.parse(form.querySelector("#event").value || "{}"); }
      catch (e) { throw new FieldError("event", `not valid JSON: ${e.message}`); }
      out.hidden = false;
      out.className = "";
      out.textContent = "Invoking…";
      const later = form.elements.async.checked;  // Lambda's Event invocation type: 202 once queued
      const q = form.elements.qualifier.value;
      const resp = await fetch(`/v1/functions/${name}${q ? `:${encodeURIComponent(q)}` : ""}/invocations`, {method: "POST", body: JSON.stringify(event),
        headers: authHeaders({"Content-Type": "application/json", ...(later ? {"X-Amz-Invocation-Type": "Event"} : {})}),
        credentials: "omit"});
      const text = await resp.text();
      const timing = parseServerTiming(resp.headers.get("Server-Timing"));
      out.className = resp.ok ? "ok" : "error";
      const executed = resp.headers.get("X-Amz-Executed-Version");
      out.textContent = `HTTP ${resp.status} · request ${resp.headers.get("X-Request-Id")} · ` +
        (later ? (resp.status === 202 ? "queued: see Async events below" : "not queued") :
          (timing.cold ? `cold start (${timing.cold})` : "warm") + (executed ? ` · version ${executed}` : "")) + "\n" + text;
      view.querySelector("#phases").replaceChildren(phaseBar(timing.phases));
      view.dispatchEvent(new CustomEvent("activity"));
    });
  });
}

function setupLogs(name) {
  const pre = view.querySelector("#logs");
  const empty = view.querySelector("#logs-empty");
  const live = view.querySelector("#tail-live");
  const dot = view.querySelector("#tail-dot");
  const tbody = view.querySelector("#invocations tbody");
  const filter = view.querySelector("#log-filter");
  const shows = (span) => !filter.value || span.textContent.toLowerCase().includes(filter.value.toLowerCase());
  filter.addEventListener("input", () => { for (const span of pre.children) span.hidden = !shows(span); });
  let cursor = null;
  let lines = 0;
  let busy = false;

  const append = (rows) => {
    if (!rows.length) return;
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    const frag = document.createDocumentFragment();
    for (const l of rows) {
      const cls = /^(START|END) RequestId/.test(l.line) ? "meta" : /error|Traceback|Exception/i.test(l.line) ? "err" : "";
      const span = el("span", {class: `line ${cls}`}, `${new Date(l.ts * 1000).toLocaleTimeString()}  ${l.line}\n`);
      span.hidden = !shows(span);
      frag.append(span);
    }
    pre.append(frag);
    lines += rows.length;
    while (lines > MAX_LOG_LINES && pre.firstChild) { pre.firstChild.remove(); lines -= 1; }
    empty.hidden = true;
    pre.hidden = false;
    if (stick) pre.scrollTop = pre.scrollHeight;
  };

  const loadInvocations = async () => {
    const {data} = await api("GET", `/v1/functions/${name}/invocations?limit=20`);
    tbody.closest("table").hidden = view.querySelector("#invocations-title").hidden = !data.invocations.length;
    tbody.replaceChildren(...data.invocations.map(r => el("tr", {},
      el("td", {"data-label": "Time"}, new Date(r.started_at * 1000).toLocaleTimeString()),
      el("td", {"data-label": "Request"}, el("code", {}, r.request_id.slice(0, 12))),
      el("td", {"data-label": "Status", class: r.status === "ok" ? "" : "bad"}, r.status + (r.error_type ? ` (${r.error_type})` : "")),
      el("td", {"data-label": "Version", title: `code version ${r.version}`},
        (r.executed_version || "$LATEST") + (r.alias ? ` (${r.alias})` : "")),
      el("td", {"data-label": "Start", class: r.cold ? "cold" : ""}, r.cold ? `cold: ${r.cold_cause}` : "warm"),
      el("td", {"data-label": "Duration"}, r.duration_ms.toFixed(2)), el("td", {"data-label": "GB-s"}, r.billed_gb_s.toFixed(6)),
      el("td", {"data-label": "Phases"}, phaseBar(r.phases)))));
  };

  /** One step of the tail: lines after the cursor (the first step: the latest ones). */
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      const q = cursor === null ? "limit=100" : `after=${encodeURIComponent(cursor)}&limit=500`;
      const {data} = await api("GET", `/v1/functions/${name}/logs?${q}`);
      const first = cursor === null;
      cursor = data.next;
      append(data.lines);
      if (first && !data.lines.length) { empty.hidden = false; pre.hidden = true; }
      if (data.lines.length || first) {
        await loadInvocations();
        if (!first) view.dispatchEvent(new CustomEvent("activity"));
      }
      dot.className = "dot on";
    } catch (e) {
      dot.className = "dot off";
      dot.title = e.message;
      if (e instanceof AuthNeeded) { showLogin(e.message); }
    } finally { busy = false; }
  };
  const timer = setInterval(() => { if (live.checked && !document.hidden) tick(); }, TAIL_MS);
  live.addEventListener("change", () => { dot.className = live.checked ? "dot on" : "dot"; });
  view.addEventListener("activity", () => { if (live.checked) setTimeout(tick, 200); });
  cleanup.push(() => clearInterval(timer));
  return tick();
}

async function setupVersions(name, fn, refreshFn) {
  const tbody = view.querySelector("#versions tbody");
  const render = async () => {
    const {data} = await api("GET", `/v1/functions/${name}/versions`);
    const versions = data.versions.slice().sort((a, b) => b.version - a.version).slice(0, 50);
    view.querySelector("#versions-empty").hidden = versions.length > 0;
    tbody.replaceChildren(...versions.map(v => el("tr", {"data-version": v.version},
      el("td", {"data-label": "Version"}, v.version, " ", v.version === pageFn.version ? el("span", {class: "badge"}, "current") : null),
      el("td", {"data-label": "Uploaded"}, new Date(v.created_at * 1000).toLocaleString()),
      el("td", {"data-label": "sha256"}, el("code", {}, v.digest.slice(0, 12))),
      el("td", {"data-label": "Files"}, v.files), el("td", {"data-label": "Size"}, `${(v.size / 1024).toFixed(1)} kB`),
      el("td", {}, v.version === pageFn.version ? "" : el("button", {type: "button", onclick: async (ev) => {
        if (!confirm(`Deploy the code of version ${v.version} again, as a new version?`)) return;
        ev.target.disabled = true;
        try {
          const zip = await fetch(`/v1/functions/${name}/code?version=${v.version}`, {headers: authHeaders(), credentials: "omit"});
          if (!zip.ok) throw new Error(`could not read version ${v.version} (HTTP ${zip.status})`);
          const {data: up} = await api("PUT", `/v1/functions/${name}/code`, await zip.blob(), {"Content-Type": "application/zip"});
          say(`Version ${v.version} redeployed as version ${up.version.version}`);
          await refreshFn();
          view.dispatchEvent(new CustomEvent("deployed", {detail: {reload: true}}));
        } catch (e) { say(e.message, true); ev.target.disabled = false; }
      }}, "Redeploy")))));
  };
  view.addEventListener("deployed", () => render().catch(e => say(e.message, true)));
  await render();
}

// What became of each version's snapshot template on this host: ready (with its memory), or why not.
function snapshotText(templates) {
  return templates.map((t) => {
    const v = t.published ? `version ${t.published}` : `code version ${t.version}`;
    if (t.state === "ready") return `${v}: ready, ${(t.memory_bytes / 1048576).toFixed(1)} MB, ${t.forks} cold starts forked`;
    return `${v}: ${t.state}${t.reason ? ` (${t.reason})` : ""}`;
  }).join("; ");
}

function setupSettings(name, fn, refreshFn) {
  const form = view.querySelector("#settings");
  const fill = () => {
    for (const k of [...NUMERIC, "handler", "network", "description"]) form.elements[k].value = fn[k] ?? "";
    form.elements.snapshot.value = fn.snapshot || "off";
    const state = view.querySelector("#s-snapshot-state");
    if (state) state.textContent = snapshotText(fn.snapshots || []);
    form.elements.environment.value = JSON.stringify(fn.environment || {});
    // Secrets are write-only: the API shows "****", and "****" sent back keeps the stored value.
    form.elements.secrets.value = JSON.stringify(fn.secrets || {});
    form.elements.expose_errors.checked = !!fn.expose_errors;
  };
  fill();
  view.addEventListener("deployed", fill);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const cfg = formValues(form, NUMERIC);
      for (const k of ["environment", "secrets"]) {
        try { cfg[k] = cfg[k] ? JSON.parse(cfg[k]) : {}; } catch (e) { throw new FieldError(k, `not valid JSON: ${e.message}`); }
        if (typeof cfg[k] !== "object" || Array.isArray(cfg[k]) || cfg[k] === null) throw new FieldError(k, 'a JSON object, like {"KEY": "value"}');
      }
      for (const k of Object.keys(fn.secrets || {})) if (!(k in cfg.secrets)) cfg.secrets[k] = null;  // removed here
      cfg.expose_errors = form.elements.expose_errors.checked;
      cfg.description = form.elements.description.value;  // emptied on purpose: sent as ""
      await api("PATCH", `/v1/functions/${name}`, cfg);
      say("Settings saved");
      await refreshFn();
      fill();
    });
  });
  view.querySelector("#delete").addEventListener("click", async () => {
    if (!confirm(`Delete ${name}, its triggers and its instances?`)) return;
    try { await api("DELETE", `/v1/functions/${name}`); location.hash = "#/"; say(`Deleted ${name}`); }
    catch (e) { fieldError(form, null, e.message); }
  });
}

// -- login and routing ---------------------------------------------------------------------------

function showLogin(message) {
  mount("t-login");
  document.getElementById("nav-logout").hidden = true;
  const form = view.querySelector("#login");
  if (message) fieldError(form, "token", message);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const value = form.elements.token.value.trim();
      if (!value) throw new FieldError("token", "paste a token");
      sessionStorage.setItem(TOKEN_KEY, value);
      try { await api("GET", "/v1/functions"); }
      catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        if (e instanceof AuthNeeded) throw new FieldError("token", `this token was refused: ${e.message}`);
        if (e.status === 403) throw new FieldError("token", `${e.message}: the console needs a token of scope read, deploy or admin`);
        throw e;
      }
      form.elements.token.value = "";
      await route();
    });
  });
  form.elements.token.focus();
}

async function route() {
  if (statusIsError()) say("");  // an error belongs to the page it happened on
  if (!token()) { showLogin(); return; }
  document.getElementById("nav-logout").hidden = false;
  const hash = location.hash || "#/";
  shownHash = location.hash;
  for (const a of document.querySelectorAll("header nav a:not(#nav-logout)")) a.classList.toggle("current", a.getAttribute("href") === hash);
  try {
    if (hash.startsWith("#/functions/")) await showFunction(decodeURIComponent(hash.slice(12)));
    else if (hash === "#/usage") await showUsage();
    else if (hash === "#/layers") await showLayers(mount);
    else await showFunctions();
  } catch (e) {
    if (e instanceof AuthNeeded) showLogin(e.message); else say(e.message, true);
  }
}

document.getElementById("nav-logout").addEventListener("click", (ev) => {
  ev.preventDefault();
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
});

// In-page links (#code, #metrics …) scroll without changing the route in the address bar.
document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest('a[href^="#"]');
  if (!a || a.getAttribute("href").startsWith("#/")) return;
  ev.preventDefault();
  const target = document.getElementById(a.getAttribute("href").slice(1));
  if (target) target.scrollIntoView({behavior: "smooth", block: "start"});
});

window.addEventListener("hashchange", () => {
  if (location.hash === shownHash) return;  // put back below
  if (unsaved() && !confirm("The code has changes that are not deployed. Leave this page and lose them?")) {
    const back = shownHash;
    shownHash = back;
    history.replaceState(null, "", back || "#/");
    return;
  }
  shownHash = location.hash;
  route();
});
setAuthHandler(showLogin);
route();
