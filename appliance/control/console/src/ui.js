// Helpers every view of the console shares: the API client (token in sessionStorage, sent as a
// Bearer header), the status line, DOM building and forms whose errors sit next to their field.

export const TOKEN_KEY = "faas.token";
export const token = () => sessionStorage.getItem(TOKEN_KEY);

export class AuthNeeded extends Error {}
export class ApiError extends Error {
  constructor(err, status) { super(err.message); this.code = err.code; this.field = err.field; this.status = status; }
}

export const view = document.getElementById("view");
const statusEl = document.getElementById("status");

/** What a form does when the API says the token is gone (main.js shows the login). */
let onAuthNeeded = () => {};
export function setAuthHandler(fn) { onAuthNeeded = fn; }

let statusTimer = null;
export function say(text, isError) {
  statusEl.textContent = text || "";
  statusEl.className = isError ? "error" : "ok";
  clearTimeout(statusTimer);
  if (text && !isError) statusTimer = setTimeout(() => { statusEl.textContent = ""; }, 6000);
}

export function statusIsError() { return statusEl.className === "error"; }

export function authHeaders(headers) {
  const out = Object.assign({}, headers || {});
  if (token()) out["Authorization"] = `Bearer ${token()}`;
  return out;
}

export async function api(method, path, body, headers) {
  const opts = {method, headers: authHeaders(headers), credentials: "omit"};
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer) {
      opts.body = body;
    } else {
      opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json";
    }
  }
  let resp;
  try { resp = await fetch(path, opts); }
  catch (e) { throw new ApiError({code: "Network.Unreachable", message: "the appliance did not answer; is it running?"}, 0); }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new AuthNeeded((data && data.error && data.error.message) || "log in with a token");
  }
  if (!resp.ok) throw new ApiError((data && data.error) || {code: `HTTP.${resp.status}`, message: String(text).slice(0, 200)}, resp.status);
  return {data, resp};
}

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export function setState(node, kind, message, retry) {
  node.hidden = !kind;
  node.className = `state ${kind || ""}`;
  node.replaceChildren(message || "");
  if (retry) node.append(" ", el("button", {type: "button", onclick: retry}, "Retry"));
}

// -- validation next to the field --------------------------------------------------------

export function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error, .form-error")) p.textContent = "";
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
}

export function fieldError(form, field, message) {
  const slot = field && form.querySelector(`.field-error[data-for="${field}"]`);
  if (slot) {
    slot.textContent = message;
    const input = form.elements[field];
    if (input && input.setAttribute) { input.setAttribute("aria-invalid", "true"); input.focus(); }
    return;
  }
  const box = form.querySelector(".form-error");
  if (box) box.textContent = message; else say(message, true);
}

/** Run ``action`` for ``form``: errors with a field go next to it, others under the form. */
export async function submitting(form, action) {
  clearErrors(form);
  const buttons = form.querySelectorAll("button");
  buttons.forEach(b => { b.disabled = true; });
  try { await action(); }
  catch (e) {
    if (e instanceof AuthNeeded) { onAuthNeeded(e.message); return; }
    fieldError(form, e.field, e.code ? `${e.message} (${e.code})` : e.message);
  } finally { buttons.forEach(b => { b.disabled = false; }); }
}

export class FieldError extends Error { constructor(field, message) { super(message); this.field = field; } }

export function formValues(form, numeric) {
  const out = {};
  for (const [k, v] of new FormData(form).entries()) {
    if (v === "" || typeof v !== "string") continue;
    if (numeric.includes(k)) {
      if (!/^-?\d+(\.\d+)?$/.test(v.trim())) throw new FieldError(k, "must be a number");
      out[k] = Number(v);
    } else out[k] = v;
  }
  return out;
}

