// Per-function charts drawn with uPlot (about 50 kB, canvas): one small chart per measure, all
// fed by one answer of GET /v1/functions/<name>/series (a fixed number of points per window).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export const CHARTS = [
  {id: "invocations", top: 1, title: "Invocations", series: [{key: "invocations", label: "invocations", stroke: "#2563eb"}],
    total: pts => sum(pts, "invocations"), summary: t => `${t} in the window`},
  {id: "errors", top: 1, title: "Errors", series: [{key: "errors", label: "errors", stroke: "#dc2626"}],
    total: pts => sum(pts, "errors"), summary: t => `${t} in the window`},
  {id: "duration", top: 1, sparse: true, title: "Duration (ms)", series: [{key: "p50_ms", label: "p50", stroke: "#059669"},
    {key: "p99_ms", label: "p99", stroke: "#d97706"}],
    total: pts => max(pts, "p99_ms"), summary: t => t === null ? "no calls" : `highest p99 ${t.toFixed(1)} ms`},
  {id: "cold", top: 100, sparse: true, title: "Cold-start rate (%)", series: [{key: "cold_pct", label: "cold %", stroke: "#7c3aed"}],
    total: pts => sum(pts, "cold_starts"), summary: t => `${t} cold start${t === 1 ? "" : "s"}`},
  {id: "instances", top: 1, title: "Instances serving", series: [{key: "instances", label: "instances", stroke: "#475569"}],
    total: pts => max(pts, "instances") || 0, summary: t => `at most ${t} at once`},
  {id: "gbs", top: 0.000001, title: "GB-seconds", series: [{key: "gb_seconds", label: "GB-s", stroke: "#0891b2"}],
    total: pts => Number(sum(pts, "gb_seconds").toFixed(6)), summary: t => `${t} GB-s in the window`},
];

/** An axis label: tiny GB-s values would otherwise all read "0". */
function small(v) { return v === 0 ? "0" : Math.abs(v) < 0.01 ? v.toExponential(0) : String(Number(v.toFixed(2))); }
function sum(pts, k) { return pts.reduce((a, p) => a + (p[k] || 0), 0); }
function max(pts, k) { const v = pts.map(p => p[k]).filter(x => x !== null && x !== undefined); return v.length ? Math.max(...v) : null; }

export class Charts {
  constructor(container) {
    this.container = container;
    this.plots = new Map();
    this.resize = () => { for (const {plot, box} of this.plots.values()) plot.setSize(this._size(box)); };
    window.addEventListener("resize", this.resize);
  }

  _size(box) { return {width: Math.max(240, (box.clientWidth || 300) - 4), height: 150}; }

  /** Draw (or redraw in place) every chart from the API's points. */
  update(series) {
    const pts = series.points.map(p => ({...p, cold_pct: p.cold_start_rate === null ? null : 100 * p.cold_start_rate}));
    const xs = pts.map(p => p.t);
    for (const c of CHARTS) {
      const data = [xs, ...c.series.map(s => pts.map(p => (p[s.key] === undefined ? null : p[s.key])))];
      let entry = this.plots.get(c.id);
      if (!entry) {
        const box = document.createElement("figure");
        box.className = "chart";
        box.id = `chart-${c.id}`;
        const cap = document.createElement("figcaption");
        box.append(cap);
        this.container.append(box);
        const opts = {...this._size(box), title: "", legend: {show: true},
          cursor: {drag: {x: false, y: false}},
          scales: {x: {time: true}, y: {range: (u, lo, hi) => [0, Math.max((hi || 0) * 1.1, c.top)]}},
          axes: [{}, {size: 56, values: (u, vals) => vals.map(small)}],
          series: [{}, ...c.series.map(s => ({label: s.label, stroke: s.stroke, width: 2, spanGaps: c.id === "duration",
            fill: c.series.length === 1 ? s.stroke + "22" : undefined,
            // Buckets without calls have no duration or cold-start rate: a lone bucket between gaps
            // would draw nothing as a line, so those charts mark every point.
            points: {show: c.sparse === true, size: 7, fill: s.stroke}}))]};
        const plot = new uPlot(opts, data, box);
        entry = {plot, box, cap};
        this.plots.set(c.id, entry);
      } else {
        entry.plot.setData(data);
      }
      const total = c.total(pts);
      entry.box.dataset.total = total === null ? "" : String(total);
      entry.cap.replaceChildren(Object.assign(document.createElement("strong"), {textContent: c.title}),
        document.createTextNode(" · " + c.summary(total)));
    }
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    for (const {plot} of this.plots.values()) plot.destroy();
    this.plots.clear();
  }
}
