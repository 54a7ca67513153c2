// The code editor: CodeMirror 6 with Python, JavaScript and JSON highlighting, line numbers,
// search (Ctrl-F) and one editor state per open file, so undo history stays with its file.
import {basicSetup} from "codemirror";
import {EditorView, keymap} from "@codemirror/view";
import {EditorState} from "@codemirror/state";
import {python} from "@codemirror/lang-python";
import {javascript} from "@codemirror/lang-javascript";
import {json} from "@codemirror/lang-json";
import {indentWithTab} from "@codemirror/commands";

function languageOf(path) {
  if (/\.py$/.test(path)) return [python()];
  if (/\.(m|c)?js$/.test(path)) return [javascript()];
  if (/\.ts$/.test(path)) return [javascript({typescript: true})];
  if (/\.json$/.test(path)) return [json()];
  return [];
}

export class CodeEditor {
  constructor(parent, onSave, onChange) {
    this.states = new Map();
    this.saved = new Map();   // path -> text as last loaded or saved: what "modified" compares with
    this.current = null;
    this.onSave = onSave;
    this.onChange = onChange || (() => {});
    this.view = new EditorView({parent, state: EditorState.create({doc: ""}),
      dispatch: (tr, view) => { view.update([tr]); if (tr.docChanged) this.onChange(); }});
  }

  _state(path, text) {
    return EditorState.create({doc: text, extensions: [
      basicSetup, keymap.of([indentWithTab, {key: "Mod-s", preventDefault: true, run: () => { this.onSave(); return true; }}]),
      EditorState.tabSize.of(4), ...languageOf(path),
      EditorView.contentAttributes.of({"aria-label": `Source of ${path}`}),
    ]});
  }

  /** Replace every file (after a load or a deploy); opens ``open``. */
  load(files, open) {
    this.states = new Map(Object.entries(files).map(([p, t]) => [p, this._state(p, t)]));
    this.saved = new Map(Object.entries(files));
    this.current = null;
    this.open(open);
  }

  open(path) {
    if (this.current !== null) this.states.set(this.current, this.view.state);
    if (!this.states.has(path)) this.states.set(path, this._state(path, ""));
    this.current = path;
    this.view.setState(this.states.get(path));
  }

  add(path) { this.open(path); }

  remove(path) {
    this.states.delete(path);
    if (this.current === path) { this.current = null; this.open([...this.states.keys()].sort()[0]); }
  }

  paths() { return [...this.states.keys()].sort(); }

  /** Whether ``path`` differs from what was loaded or last saved (a new file always does). */
  modified(path) {
    const state = path === this.current ? this.view.state : this.states.get(path);
    return !this.saved.has(path) || state.doc.toString() !== this.saved.get(path);
  }

  anyModified() { return this.paths().some(p => this.modified(p)) || [...this.saved.keys()].some(p => !this.states.has(p)); }

  markSaved() { this.saved = new Map(Object.entries(this.files())); }

  files() {
    if (this.current !== null) this.states.set(this.current, this.view.state);
    return Object.fromEntries([...this.states].map(([p, s]) => [p, s.doc.toString()]));
  }

  destroy() { this.view.destroy(); }
}
