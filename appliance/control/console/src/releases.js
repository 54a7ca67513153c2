// A function's published versions and aliases (POST .../publish, .../published, .../aliases): publish freezes the
// current code and settings as version N; an alias names a version, optionally with a second one
// taking a weighted share of the calls. Moving an alias back to an older version is the rollback,
// so the form that creates an alias also moves one, and each alias has a button that fills it in.
import {AuthNeeded, view, say, api, el, setState, clearErrors, submitting, FieldError} from "./ui.js";

/** Lambda's alias names: letters, digits, - and _, not all digits (those are versions), not $LATEST. */
const ALIAS_RE = /^[A-Za-z0-9_-]{1,128}$/;
/** Published versions shown on the page (newest first); older ones stay reachable through the API. */
const MAX_SHOWN = 100;

/** A time the API gives as epoch seconds or ISO 8601, in the reader's locale. */
export function when(t) {
  if (t === null || t === undefined || t === "") return "–";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

/** The alias's traffic as [version, share] pairs, the alias's own version first. */
export function split(alias) {
  const extra = Object.entries(alias.weights || {}).map(([v, w]) => [Number(v), Number(w)]);
  const rest = extra.reduce((a, [, w]) => a - w, 1);
  return [[alias.version, rest], ...extra];
}

const pct = (share) => `${Number((share * 100).toFixed(1))}%`;

/** The frozen settings of a published version in a few words (the full set: GET .../published/N). */
function settings(c) {
  if (!c) return "–";
  const layers = (c.layers || []).length;
  return `${c.memory_mb} MB · ${c.timeout_s} s` + (layers ? ` · ${layers} layer${layers === 1 ? "" : "s"}` : "");
}

/** The split as a bar with each version's share written on it (and in words beside it, for screen readers). */
function splitBar(alias) {
  const parts = split(alias);
  const bar = el("div", {class: "split", role: "img", "aria-label": parts.map(([v, s]) => `version ${v} ${pct(s)}`).join(", ")});
  parts.forEach(([v, s], i) => bar.append(el("span", {class: `share s${i}`, style: `flex-grow:${Math.max(s, 0.0001)}`,
    "data-version": v, title: `version ${v}: ${pct(s)} of the calls`}, `v${v} ${pct(s)}`)));
  return bar;
}

/** Triggers whose target is ``fn:qualifier``. */
function boundTo(triggers, name, qualifier) {
  return triggers.filter(t => t.function === `${name}:${qualifier}`);
}

export function triggerLabel(t) {
  if (t.kind === "schedule") return `schedule ${t.schedule}`;
  if (t.kind === "queue") return `queue ${t.queue}`;
  return `${t.method} ${t.path}`;
}

/** ``triggers()`` gives every trigger of the page's function (also those bound to an alias). */
export async function setupReleases(name, triggers) {
  const state = view.querySelector("#published-state");
  const table = view.querySelector("#published");
  const tbody = table.querySelector("tbody");
  const aliasList = view.querySelector("#aliases");
  const publishForm = view.querySelector("#publish-form");
  const form = view.querySelector("#alias-form");
  let versions = [];
  let aliases = [];

  const options = (select, blank) => {
    const keep = select.value;
    select.replaceChildren(...(blank ? [el("option", {value: ""}, blank)] : []),
      ...versions.map(v => el("option", {value: String(v.version)},
        `${v.version}${v.description ? ` – ${v.description.slice(0, 40)}` : ""} (code ${v.code_version})`)));
    if ([...select.options].some(o => o.value === keep)) select.value = keep;
  };

  const render = () => {
    const shown = versions.slice(0, MAX_SHOWN);
    const byVersion = {};
    for (const a of aliases) for (const [v, s] of split(a)) (byVersion[v] = byVersion[v] || []).push([a.name, s]);
    tbody.replaceChildren(...shown.map(v => el("tr", {"data-version": v.version},
      el("td", {"data-label": "Version"}, el("strong", {}, v.version)),
      el("td", {"data-label": "Code version"}, v.code_version, v.code_sha256 ? el("code", {class: "muted"}, ` ${v.code_sha256.slice(0, 12)}`) : null),
      el("td", {"data-label": "Description"}, v.description || el("span", {class: "muted"}, "–")),
      el("td", {"data-label": "Settings", class: "muted"}, settings(v.config)),
      el("td", {"data-label": "Published"}, when(v.created_at)),
      el("td", {"data-label": "Aliases"}, ...(byVersion[v.version] || []).map(([a, s]) =>
        el("span", {class: "badge"}, s < 1 ? `${a} ${pct(s)}` : a)), (byVersion[v.version] || []).length ? null : "–"),
      el("td", {}, el("button", {type: "button", class: "danger", onclick: (ev) => removeVersion(v.version, ev.target)}, "Delete")))));
    table.hidden = !versions.length;
    view.querySelector("#published-empty").hidden = versions.length > 0;
    view.querySelector("#published-more").hidden = versions.length <= MAX_SHOWN;

    const all = triggers();
    aliasList.replaceChildren(...aliases.map(a => {
      const bound = boundTo(all, name, a.name);
      const err = el("p", {class: "form-error", role: "alert"});
      return el("li", {"data-alias": a.name},
        el("div", {class: "alias-head"}, el("strong", {class: "alias-name"}, a.name),
          el("span", {class: "muted"}, `→ version ${a.version}` + (Object.keys(a.weights || {}).length ?
            `, ${Object.entries(a.weights).map(([v, w]) => `${pct(w)} to version ${v}`).join(", ")}` : "")),
          a.updated_at ? el("span", {class: "muted"}, `moved ${when(a.updated_at)}`) : null),
        a.description ? el("p", {class: "alias-desc"}, a.description) : null,
        splitBar(a),
        el("div", {class: "muted bound"}, bound.length ? "Triggers: " : `No trigger targets ${name}:${a.name} yet.`,
          ...bound.map(t => el("span", {class: "badge"}, triggerLabel(t)))),
        el("div", {class: "actions"},
          el("button", {type: "button", onclick: () => edit(a)}, "Move / roll back"),
          el("button", {type: "button", class: "danger", onclick: (ev) => removeAlias(a, ev.target, err)}, "Delete")),
        err);
    }));
    view.querySelector("#aliases-empty").hidden = aliases.length > 0;
    options(form.elements.version, versions.length ? null : "publish a version first");
    options(form.elements.extra_version, "none");
    form.querySelector("fieldset").disabled = !versions.length;
    form.elements.version.dispatchEvent(new Event("input"));
    view.querySelector("#alias-names").replaceChildren(...aliases.map(a => el("option", {value: a.name})));
  };

  const load = async () => {
    setState(state, "loading", "Loading the published versions and aliases…");
    try {
      const [{data: p}, {data: al}] = await Promise.all([api("GET", `/v1/functions/${name}/published`),
        api("GET", `/v1/functions/${name}/aliases`)]);
      versions = p.versions.slice().sort((a, b) => b.version - a.version);
      aliases = al.aliases.slice().sort((a, b) => a.name.localeCompare(b.name));
      setState(state, null);
      view.querySelector("#releases-body").hidden = false;
      render();
      view.dispatchEvent(new CustomEvent("releases-changed", {detail: {versions, aliases}}));
    } catch (e) {
      if (e instanceof AuthNeeded) throw e;
      view.querySelector("#releases-body").hidden = true;
      setState(state, "error", `Could not load the published versions: ${e.message}`, () => load().catch(() => {}));
    }
  };

  const edit = (a) => {
    clearErrors(form);
    form.elements.name.value = a.name;
    form.elements.version.value = String(a.version);
    const [extra] = Object.entries(a.weights || {});
    form.elements.extra_version.value = extra ? extra[0] : "";
    form.elements.weight.value = extra ? String(Number((extra[1] * 100).toFixed(2))) : "";
    form.elements.weight.disabled = !extra;
    form.elements.version.dispatchEvent(new Event("input"));
    form.elements.description.value = a.description || "";
    form.scrollIntoView({behavior: "smooth", block: "center"});
    form.elements.version.focus();
  };

  const removeAlias = async (a, button, err) => {
    if (!confirm(`Delete the alias ${a.name}? Calls to ${name}:${a.name} will fail.`)) return;
    button.disabled = true;
    err.textContent = "";
    try {
      await api("DELETE", `/v1/functions/${name}/aliases/${encodeURIComponent(a.name)}`);
      say(`Alias ${a.name} deleted`);
      await load();
    } catch (e) {
      if (e instanceof AuthNeeded) throw e;
      err.textContent = `${e.message}${e.code ? ` (${e.code})` : ""}`;
      button.disabled = false;
    }
  };

  const removeVersion = async (n, button) => {
    if (!confirm(`Delete published version ${n}? Its code version stays.`)) return;
    button.disabled = true;
    try {
      await api("DELETE", `/v1/functions/${name}/published/${n}`);
      say(`Published version ${n} deleted`);
      await load();
    } catch (e) {
      if (e instanceof AuthNeeded) throw e;
      say(`${e.message}${e.code ? ` (${e.code})` : ""}`, true);
      button.disabled = false;
    }
  };

  publishForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(publishForm, async () => {
      const description = publishForm.elements.description.value.trim();
      const {data, resp} = await api("POST", `/v1/functions/${name}/publish`, description ? {description} : {});
      say(resp.status === 201 ? `Published version ${data.version}` :
        `Nothing changed since version ${data.version}: it stays the newest`);
      publishForm.elements.description.value = "";
      await load();
    });
  });

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const f = form.elements;
      const alias = f.name.value.trim();
      if (!alias) throw new FieldError("name", "name the alias, for example live");
      if (!ALIAS_RE.test(alias)) throw new FieldError("name", "letters, digits, - and _ (at most 128)");
      if (/^\d+$/.test(alias)) throw new FieldError("name", "not only digits: a number names a version");
      if (!f.version.value) throw new FieldError("version", "publish a version first");
      const body = {version: Number(f.version.value), weights: {}, description: f.description.value.trim()};
      const weight = f.weight.value.trim();
      if (f.extra_version.value) {
        if (f.extra_version.value === f.version.value) throw new FieldError("extra_version", "pick a version other than the alias's own");
        if (!weight) throw new FieldError("weight", "the share of calls (1 to 99 %) the second version gets");
        if (!/^\d+(\.\d+)?$/.test(weight) || Number(weight) <= 0 || Number(weight) >= 100)
          throw new FieldError("weight", "a percentage above 0 and below 100");
        body.weights[f.extra_version.value] = Number((Number(weight) / 100).toFixed(4));
      } else if (weight) throw new FieldError("extra_version", "pick the version that gets this share of the calls");
      const moved = aliases.some(a => a.name === alias);
      try { await api("PUT", `/v1/functions/${name}/aliases/${encodeURIComponent(alias)}`, body); }
      catch (e) {  // the API names its fields; the form's differ for the weights
        if (e.field && /^weights/.test(e.field)) e.field = "weight";
        else if (e.field === "alias") e.field = "name";
        throw e;
      }
      say(`${moved ? "Moved" : "Created"} ${name}:${alias} → version ${body.version}` +
        (f.extra_version.value ? ` (${weight}% to version ${f.extra_version.value})` : ""));
      form.reset();
      await load();
    });
  });
  // What the form would do, drawn as the alias's bar would be (nothing while it is incomplete).
  const preview = () => {
    const f = form.elements;
    const w = Number(f.weight.value);
    const extra = f.extra_version.value && f.extra_version.value !== f.version.value && w > 0 && w < 100;
    const box = view.querySelector("#alias-preview");
    box.replaceChildren(...(f.version.value ? [splitBar({version: Number(f.version.value),
      weights: extra ? {[f.extra_version.value]: w / 100} : {}})] : []));
  };
  for (const k of ["version", "extra_version", "weight"]) form.elements[k].addEventListener("input", preview);
  form.addEventListener("reset", () => setTimeout(preview));
  form.elements.extra_version.addEventListener("change", () => {
    form.elements.weight.disabled = !form.elements.extra_version.value;
    if (!form.elements.extra_version.value) form.elements.weight.value = "";
    preview();
  });
  form.addEventListener("reset", () => setTimeout(() => { form.elements.weight.disabled = true; }));
  form.elements.weight.disabled = true;
  view.addEventListener("triggers-changed", () => render());
  await load();
}
