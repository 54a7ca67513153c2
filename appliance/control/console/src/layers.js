// Layers (README "Layers"): the Layers page lists every layer version with the functions that list
// it and publishes a new version from a zip; a function's page shows its layers in the order they
// are merged under /opt and changes that list (a PATCH of the function's "layers").
import {AuthNeeded, view, say, api, el, setState, submitting, FieldError} from "./ui.js";
import {when} from "./releases.js";

const LAYER_NAME_RE = /^[a-z](?:[a-z0-9-]{0,58}[a-z0-9])?$/;
/** Layers a function may list (the API's limit, README "Layers"). */
const MAX_LAYERS = 5;

export const kb = (n) => n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : n >= 1024 ? `${(n / 1024).toFixed(1)} kB` : `${n} B`;

/** Layer versions grouped by name, newest version first. */
function byName(layers) {
  const groups = new Map();
  for (const l of layers.slice().sort((a, b) => a.name.localeCompare(b.name) || b.version - a.version)) {
    if (!groups.has(l.name)) groups.set(l.name, []);
    groups.get(l.name).push(l);
  }
  return groups;
}

export async function showLayers(mount) {
  mount("t-layers");
  const state = view.querySelector("#layers-state");
  const list = view.querySelector("#layers-list");
  const load = async () => {
    setState(state, "loading", "Loading layers…");
    try {
      const {data} = await api("GET", "/v1/layers");
      const groups = byName(data.layers);
      list.replaceChildren(...[...groups].map(([name, versions]) => el("section", {class: "layer", "data-layer": name},
        el("h3", {}, name, " ", el("span", {class: "muted"}, `${versions.length} version${versions.length === 1 ? "" : "s"}`)),
        el("div", {class: "table-wrap"}, el("table", {}, el("thead", {}, el("tr", {}, ...["Version", "Size", "Files", "sha256",
          "Published", "Description", "Used by", ""].map(h => el("th", {}, h)))),
        el("tbody", {}, ...versions.map(v => el("tr", {"data-ref": v.ref},
          el("td", {"data-label": "Version"}, el("code", {}, v.ref)),
          el("td", {"data-label": "Size"}, `${kb(v.size)} (${kb(v.unpacked_size)} unpacked)`),
          el("td", {"data-label": "Files"}, v.files),
          el("td", {"data-label": "sha256"}, el("code", {title: v.digest}, v.digest.slice(0, 12))),
          el("td", {"data-label": "Published"}, when(v.created_at)),
          el("td", {"data-label": "Description"}, v.description || "–"),
          el("td", {"data-label": "Used by", class: "used-by"}, ...(v.used_by.length ? v.used_by.map(f =>
            el("a", {href: `#/functions/${f}`, class: "badge"}, f)) : [el("span", {class: "muted"}, "no function")])),
          el("td", {}, el("button", {type: "button", class: "danger", disabled: v.used_by.length > 0,
            title: v.used_by.length ? "used by a function: remove it there first" : null,
            onclick: async (ev) => {
              if (!confirm(`Delete the layer version ${v.ref}?`)) return;
              ev.target.disabled = true;
              try { await api("DELETE", `/v1/layers/${v.name}/versions/${v.version}`); say(`Layer ${v.ref} deleted`); await load(); }
              catch (e) { if (e instanceof AuthNeeded) throw e; say(`${e.message}${e.code ? ` (${e.code})` : ""}`, true); ev.target.disabled = false; }
            }}, "Delete"))))))))));
      setState(state, null);
      view.querySelector("#layers-empty").hidden = groups.size > 0;
    } catch (e) {
      if (e instanceof AuthNeeded) throw e;
      setState(state, "error", `Could not load the layers: ${e.message}`, () => load().catch(() => {}));
    }
  };
  const form = view.querySelector("#layer-publish");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      const name = form.elements.name.value.trim();
      const file = form.elements.package.files[0];
      if (!name) throw new FieldError("name", "name the layer, for example mylibs");
      if (!LAYER_NAME_RE.test(name)) throw new FieldError("name", "lowercase letters, digits and -, starting with a letter (at most 60)");
      if (!file) throw new FieldError("package", "choose a .zip of the files (python/, nodejs/node_modules/, bin/ …)");
      const desc = form.elements.description.value.trim();
      let data;
      try {
        ({data} = await api("POST", `/v1/layers/${name}` + (desc ? `?description=${encodeURIComponent(desc)}` : ""), file,
          {"Content-Type": "application/zip"}));
      } catch (e) { if (e.field === "layer") e.field = "package"; throw e; }
      say(`Published layer ${data.ref}`);
      form.reset();
      await load();
    });
  });
  await load();
}

/** The function's layers, in the order they are merged, with a form to change them. */
export async function setupFunctionLayers(name, fn, refreshFn) {
  const ol = view.querySelector("#fn-layers");
  const form = view.querySelector("#layers-form");
  const select = form.elements.layer;
  let wanted = [...(fn().layers || [])];
  let known = {};
  const render = () => {
    ol.replaceChildren(...wanted.map((ref, i) => {
      const l = known[ref];
      return el("li", {"data-ref": ref}, el("code", {}, ref), " ",
        el("span", {class: "muted"}, l ? `${kb(l.size)}, ${l.files} files${l.description ? ` · ${l.description}` : ""}` : ""),
        el("span", {class: "layer-actions"},
          el("button", {type: "button", title: "merge earlier", "aria-label": `move ${ref} up`, disabled: i === 0,
            onclick: () => { [wanted[i - 1], wanted[i]] = [wanted[i], wanted[i - 1]]; render(); }}, "↑"),
          el("button", {type: "button", class: "x", "aria-label": `remove ${ref}`,
            onclick: () => { wanted.splice(i, 1); render(); }}, "Remove")));
    }));
    view.querySelector("#fn-layers-empty").hidden = wanted.length > 0;
    const saved = JSON.stringify(fn().layers || []) === JSON.stringify(wanted);
    form.querySelector("button[type=submit]").classList.toggle("pending", !saved);
    select.replaceChildren(el("option", {value: ""}, Object.keys(known).length ? "add a layer version…" : "no layer published yet"),
      ...Object.keys(known).filter(r => !wanted.includes(r)).sort().map(r => el("option", {value: r}, r)));
  };
  const state = view.querySelector("#fn-layers-state");
  state.textContent = "Loading the layers…";
  try {
    const {data} = await api("GET", "/v1/layers");
    known = Object.fromEntries(data.layers.map(l => [l.ref, l]));
    state.textContent = "";
  } catch (e) {
    if (e instanceof AuthNeeded) throw e;
    state.textContent = `Could not read the layer list: ${e.message}`;
  }
  select.addEventListener("change", () => {
    if (!select.value) return;
    wanted.push(select.value);
    render();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting(form, async () => {
      if (wanted.length > MAX_LAYERS) throw new FieldError("layers", `at most ${MAX_LAYERS} layers`);
      await api("PATCH", `/v1/functions/${name}`, {layers: wanted});
      say(wanted.length ? `Layers saved: ${wanted.join(", ")}` : "Layers removed");
      await refreshFn();
      wanted = [...(fn().layers || [])];
      saved = JSON.stringify(wanted);
      render();
    });
  });
  // The header re-reads the function every few seconds: redraw only when its layers changed
  // (elsewhere), and keep edits not saved yet.
  let saved = JSON.stringify(fn().layers || []);
  view.addEventListener("function-changed", () => {
    const now = JSON.stringify(fn().layers || []);
    if (now === saved) return;
    if (JSON.stringify(wanted) === saved) wanted = [...(fn().layers || [])];
    saved = now;
    render();
  });
  render();
}
