// What runs a function besides HTTP calls: its asynchronous events (GET /v1/functions/NAME/events:
// state, attempts, last error, and the destinations the function sends results to) and its schedule
// and queue triggers (next run, queue and poller counts). The events list refreshes by itself only
// while some event is still pending, so an idle page costs nothing.
import {AuthNeeded, view, say, api, el, setState} from "./ui.js";
import {when} from "./releases.js";

/** Least time between two automatic refreshes of the events or the schedules. */
const REFRESH_MS = 5000;
/** Events shown (the API answers at most 1000). */
const EVENTS_LIMIT = 50;
const STATES = ["queued", "running", "retrying", "succeeded", "dead"];
const PENDING = new Set(["queued", "running", "retrying"]);

/** "in 3 min", "12 s ago": how far ``t`` (epoch seconds or ISO) is from ``now`` (ms). */
export function relative(t, now) {
  const ms = (typeof t === "number" ? t * 1000 : Date.parse(t)) - now;
  if (isNaN(ms)) return "";
  const s = Math.round(Math.abs(ms) / 1000);
  const span = s < 60 ? `${s} s` : s < 3600 ? `${Math.round(s / 60)} min` : s < 172800 ? `${Math.round(s / 3600)} h` :
    `${Math.round(s / 86400)} days`;
  return ms >= 0 ? `in ${span}` : `${span} ago`;
}

function destination(d) {
  if (!d) return "none";
  if (d.function) return `function ${d.function}`;
  if (d.url) return `POST ${d.url}`;
  if (d.queue) return `queue ${d.queue}`;
  return JSON.stringify(d);
}

/** The async settings in one line: retries, event age and where results go. */
export function asyncSummary(cfg) {
  const c = cfg || {};
  const age = c.max_event_age_s === undefined ? "6 h" : c.max_event_age_s >= 3600 && c.max_event_age_s % 3600 === 0 ?
    `${c.max_event_age_s / 3600} h` : `${c.max_event_age_s} s`;
  return [el("span", {}, `Retries: ${c.max_retry_attempts ?? 2}`), el("span", {}, `max event age: ${age}`),
    el("span", {"data-destination": "on_success"}, `on success → ${destination(c.on_success)}`),
    el("span", {"data-destination": "on_failure"}, `on failure → ${destination(c.on_failure)}`)];
}

export async function setupEvents(name, fn, onCleanup) {
  const state = view.querySelector("#events-state");
  const table = view.querySelector("#events");
  const status = view.querySelector("#events-status");
  const updated = view.querySelector("#events-updated");
  const counts = view.querySelector("#events-counts");
  const renderSettings = () => view.querySelector("#events-destinations").replaceChildren(...asyncSummary((fn() || {}).async));
  renderSettings();
  view.addEventListener("function-changed", renderSettings);
  let pending = false, busy = false, last = 0;

  const load = async () => {
    if (busy) return;
    busy = true;
    last = Date.now();
    if (table.hidden) setState(state, "loading", "Loading the asynchronous events…");
    try {
      const q = `limit=${EVENTS_LIMIT}` + (status.value ? `&status=${encodeURIComponent(status.value)}` : "");
      const {data} = await api("GET", `/v1/functions/${name}/events?${q}`);
      const now = Date.now();
      counts.replaceChildren(...STATES.map(s => el("span", {class: `badge st-${s}`, "data-state": s}, `${s} ${data.counts[s] || 0}`)));
      table.querySelector("tbody").replaceChildren(...data.events.map(e => el("tr", {"data-event": e.id, "data-state": e.state},
        el("td", {"data-label": "Accepted"}, when(e.created_at)),
        el("td", {"data-label": "Event"}, el("code", {title: e.id}, e.id.length > 14 ? `${e.id.slice(0, 14)}…` : e.id)),
        el("td", {"data-label": "Source"}, e.source || "invoke"),
        el("td", {"data-label": "Status"}, el("span", {class: `badge st-${e.state}`}, e.state)),
        el("td", {"data-label": "Attempts"}, e.attempts),
        el("td", {"data-label": "Next try"}, PENDING.has(e.state) && e.state !== "running" ?
          (e.available_at * 1000 <= now ? "due now" : relative(e.available_at, now)) : "–"),
        el("td", {"data-label": "Last error", class: e.last_error ? "bad wrap" : ""}, e.last_error || "–"),
        el("td", {"data-label": "Updated"}, relative(e.updated_at, now)))));
      pending = STATES.some(s => PENDING.has(s) && data.counts[s] > 0);
      table.hidden = !data.events.length;
      const empty = view.querySelector("#events-empty");
      empty.hidden = data.events.length > 0;
      empty.textContent = status.value ? `No ${status.value} events.` :
        "No asynchronous events yet: tick \u201casynchronously\u201d above and invoke, or run faas invoke " + name + " --async.";
      setState(state, null);
      updated.textContent = `updated ${new Date(now).toLocaleTimeString()}`;
    } catch (e) {
      if (e instanceof AuthNeeded) throw e;
      setState(state, "error", `Could not load the events: ${e.message}`, () => load().catch(() => {}));
    } finally { busy = false; }
  };
  const safe = () => load().catch(e => { if (e instanceof AuthNeeded) say(e.message, true); });
  status.addEventListener("change", safe);
  view.querySelector("#events-refresh").addEventListener("click", safe);
  view.addEventListener("activity", () => { if (Date.now() - last > 500) safe(); else setTimeout(safe, 500); });
  const timer = setInterval(() => { if (pending && !document.hidden && Date.now() - last >= REFRESH_MS) safe(); }, 1000);
  onCleanup(() => clearInterval(timer));
  await load();
}

function scheduleItem(t, onChange) {
  const now = Date.now();
  return el("li", {"data-trigger": t.id, "data-kind": "schedule"},
    el("div", {class: "trigger-head"}, el("span", {class: "badge"}, "schedule"), el("code", {}, t.schedule),
      t.timezone && t.timezone !== "UTC" ? el("span", {class: "muted"}, t.timezone) : null,
      t.enabled === false ? el("span", {class: "badge warn"}, "disabled") : null,
      t.function.includes(":") ? el("span", {class: "badge"}, `→ ${t.function}`) : null),
    el("div", {class: "facts"},
      el("span", {class: "next-run"}, "Next run: ", t.next_run ? el("strong", {}, when(t.next_run)) : "none (disabled)",
        t.next_run ? ` (${relative(t.next_run, now)})` : ""),
      el("span", {}, `Last run: ${t.last_run ? `${when(t.last_run)} (${relative(t.last_run, now)})` : "not yet"}`),
      t.event !== undefined ? el("span", {}, "Event: ", el("code", {}, JSON.stringify(t.event).slice(0, 80))) : null,
      el("span", {class: "muted"}, "id ", el("code", {}, t.id))),
    el("div", {class: "actions"},
      el("button", {type: "button", onclick: (ev) => onChange(ev.target, "PATCH", {enabled: t.enabled === false})},
        t.enabled === false ? "Enable" : "Disable"),
      el("button", {type: "button", class: "danger", onclick: (ev) => onChange(ev.target, "DELETE")}, "Remove")));
}

function queueItem(t, stats, onChange) {
  const s = stats || null;
  return el("li", {"data-trigger": t.id, "data-kind": "queue"},
    el("div", {class: "trigger-head"}, el("span", {class: "badge"}, "queue"), el("code", {class: "queue-name"}, t.queue),
      t.enabled === false ? el("span", {class: "badge warn"}, "disabled") : null,
      t.function.includes(":") ? el("span", {class: "badge"}, `→ ${t.function}`) : null),
    el("div", {class: "facts"},
      el("span", {}, `batch ${t.batch_size ?? 10}, window ${t.batching_window_s ?? 0} s, ${t.max_concurrency ?? 2} pollers`),
      t.report_batch_item_failures ? el("span", {}, "reports batch item failures") : null,
      s ? el("span", {class: "queue-stats"}, `${s.in_flight} in flight · ${s.batches} batches · ${s.messages_deleted} deleted · ` +
        `${s.messages_failed} failed`) : el("span", {class: "muted"}, t.enabled === false ? "not polled" : "no poller here yet"),
      s && s.last_error ? el("span", {class: "bad wrap"}, `last error: ${s.last_error}`) : null,
      el("span", {class: "muted"}, "id ", el("code", {}, t.id))),
    el("div", {class: "actions"},
      el("button", {type: "button", onclick: (ev) => onChange(ev.target, "PATCH", {enabled: t.enabled === false})},
        t.enabled === false ? "Enable" : "Disable"),
      el("button", {type: "button", class: "danger", onclick: (ev) => onChange(ev.target, "DELETE")}, "Remove")));
}

/** ``triggers()`` the function's triggers as last read, ``reload()`` reads them again. */
export function setupEventTriggers(name, fn, triggers, reload, onCleanup) {
  const ul = view.querySelector("#event-triggers");
  const err = view.querySelector("#event-triggers-error");
  let drawn = null;
  const render = () => {
    const list = triggers().filter(t => t.kind === "schedule" || t.kind === "queue");
    const stats = Object.fromEntries(((fn() || {}).queue_sources || []).map(s => [s.id, s]));
    // Redrawn only when something shown changed (the function is re-read every few seconds), so a
    // button is never replaced under the pointer for nothing.
    const now = Date.now();
    const shown = JSON.stringify([list, stats, list.map(t => [t.next_run && relative(t.next_run, now), t.last_run && relative(t.last_run, now)])]);
    if (shown === drawn) return;
    drawn = shown;
    ul.replaceChildren(...list.map(t => {
      const change = async (button, method, body) => {
        if (method === "DELETE" && !confirm(`Remove the ${t.kind} trigger ${t.id}?`)) return;
        button.disabled = true;
        err.textContent = "";
        try {
          await api(method, method === "DELETE" ? `/v1/triggers?id=${encodeURIComponent(t.id)}` : `/v1/triggers/${t.id}`, body);
          say(method === "DELETE" ? `Trigger ${t.id} removed` : `Trigger ${t.id} ${body.enabled ? "enabled" : "disabled"}`);
          await reload();
        } catch (e) {
          if (e instanceof AuthNeeded) throw e;
          err.textContent = `${e.message}${e.code ? ` (${e.code})` : ""}`;
          button.disabled = false;
        }
      };
      return t.kind === "schedule" ? scheduleItem(t, change) : queueItem(t, stats[t.id], change);
    }));
    view.querySelector("#event-triggers-empty").hidden = list.length > 0;
  };
  view.addEventListener("triggers-changed", render);
  view.addEventListener("function-changed", render);
  // A schedule's next run moves on once it fired: read the triggers again when one is due.
  const timer = setInterval(() => {
    if (document.hidden) return;
    const due = triggers().some(t => t.kind === "schedule" && t.next_run && Date.parse(t.next_run) <= Date.now());
    if (due) reload().catch(() => {}); else render();
  }, REFRESH_MS);
  onCleanup(() => clearInterval(timer));
  render();
}
