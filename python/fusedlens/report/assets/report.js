// fusedlens reports: draws the views of one page from the JSON in #fl-data. No network, no library:
// DOM grids, SVG charts. Every view is {type, title, ...}; the Python side (report/page.py) writes them.
(function () {
  "use strict";
  const DTYPES = { f32: Float32Array, i32: Int32Array, u16: Uint16Array };

  function decode(v) {  // {b64, dtype} -> typed array; lists stay lists
    if (v === null || v === undefined || Array.isArray(v) || typeof v !== "object" || !v.b64) return v;
    const bin = atob(v.b64), u8 = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    const a = new DTYPES[v.dtype](u8.buffer);
    // u16: quantised probabilities, one code for NaN
    return v.scale ? Float32Array.from(a, x => x === v.nan ? NaN : x * v.scale) : a;
  }

  const cache = new WeakMap();
  function decoded(v) {  // decode once per array object
    if (!v || typeof v !== "object" || Array.isArray(v)) return v;
    if (!cache.has(v)) cache.set(v, decode(v));
    return cache.get(v);
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function sv(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid) e.append(kid);
    return e;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (Number.isInteger(x) && Math.abs(x) < 1e7) return String(x);
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return x.toFixed(digits === undefined ? 3 : digits);
  }
  // a cell's value to fixed decimals (heatmap value_digits): float noise such as -8e-8 reads 0.00, not -8.25e-8
  function fixed(x, digits) {
    if (!Number.isFinite(x)) return "–";
    const s = x.toFixed(digits);
    return /^-0\.?0*$/.test(s) ? s.slice(1) : s;
  }
  // a token as shown: whitespace made visible
  function shown(t) {
    if (t === null || t === undefined) return "–";
    if (t === "") return "∅";
    // other blanks (no-break, zero-width, ideographic spaces, \r) as one visible mark
    return String(t).replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·").replace(/[\r\u00a0\u1680\u2000-\u200d\u2028\u2029\u202f\u205f\u3000\ufeff]/g, "⍽");
  }

  // colour maps: sequential (viridis stops) and diverging (blue, white, red)
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];
  function ramp(stops, t) {
    t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i, a = stops[i], b = stops[i + 1];
    return a.map((x, j) => Math.round(x + f * (b[j] - x)));
  }
  function extent(values) {  // finite min and max by a loop (spreading 60k values overflows the stack)
    let mn = Infinity, mx = -Infinity;
    for (const v of values) if (Number.isFinite(v)) { if (v < mn) mn = v; if (v > mx) mx = v; }
    return Number.isFinite(mn) ? [mn, mx] : [0, 1];
  }
  function scaler(values, layer) {
    const kind = layer.scale || "linear";
    let lo = layer.vmin, hi = layer.vmax;
    if (lo === undefined || hi === undefined) {
      const [mn, mx] = extent(values);
      if (lo === undefined) lo = mn;
      if (hi === undefined) hi = mx;
    }
    if (kind === "diverging") {
      const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      return v => Number.isFinite(v) ? ramp(DIVERGING, 0.5 + v / (2 * m)) : null;
    }
    if (kind === "log") {  // ranks from 0: log(1 + v)
      const top = Math.log1p(Math.max(hi, 1));
      return v => Number.isFinite(v) ? ramp(VIRIDIS, 1 - Math.log1p(Math.max(v, 0)) / top) : null;
    }
    const span = (hi - lo) || 1;
    return v => Number.isFinite(v) ? ramp(VIRIDIS, (v - lo) / span) : null;
  }
  function paint(cell, rgb) {
    if (!rgb) { cell.style.background = "#eee"; cell.style.color = "#999"; return; }
    cell.style.background = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
    cell.style.color = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) > 140 ? "#000" : "#fff";
  }

  // one tooltip for the page
  let tip = null;
  function showTip(evt, node) {
    if (!tip) { tip = el("div", { id: "fl-tooltip", class: "fl-tooltip" }); document.body.append(tip); }
    tip.replaceChildren(node);
    tip.style.display = "block";
    const x = Math.min(evt.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = Math.min(evt.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
    tip.style.left = Math.max(0, x) + "px";
    tip.style.top = Math.max(0, y) + "px";
  }
  function hideTip() { if (tip) tip.style.display = "none"; }

  // a table cell: a number, a text, or {t: token} (a token: whitespace made visible)
  function cellAttrs(c) {
    if (typeof c === "number") return { text: fmt(c) };
    if (c && typeof c === "object") return { class: "fl-tok", text: shown(c.t) };
    return { text: c === null || c === undefined ? "–" : String(c) };
  }
  function table(head, rows, cls) {
    return el("table", { class: cls || "fl-table" },
      el("thead", {}, el("tr", {}, ...head.map(h => el("th", { text: h })))),
      el("tbody", {}, ...rows.map(r => el("tr", {}, ...r.map(c => el("td", cellAttrs(c)))))));
  }

  // ---- the heatmap: rows x cols of DOM cells, colour layers to switch between, columns paged ----
  // view: rows, cols (labels), layers [{name, values [rows*cols], scale, vmin, vmax}], cell_text [rows*cols]
  // (optional), tips: {name: [rows*cols]} extra numbers in the tooltip, topk {ids, probs, k} token
  // lists per cell, details {"r,c": {title, tables: [{title, head, rows}]}} shown on click,
  // page (columns per page), row_order ("up": first row at the bottom).
  function heatmap(v, ctx) {
    const R = v.rows.length, C = v.cols.length;
    const layers = v.layers.map(l => Object.assign({}, l, { values: decoded(l.values) }));
    const cellText = decoded(v.cell_text);
    const topk = v.topk ? { ids: decoded(v.topk.ids), probs: decoded(v.topk.probs), k: v.topk.k } : null;
    const tips = Object.fromEntries(Object.entries(v.tips || {}).map(([k, x]) => [k, decoded(x)]));
    const vocab = ctx.vocab;
    const page = v.page || C;
    // short labels (and tokens, cut to the cells' width) read across, long ones upward
    const short = v.cols_across || v.cols.every(c => String(c).length <= 4);
    let start = 0, layer = 0;
    // optional `tall_cols`: column heads as tall as their labels (up to the CSS limit), for words, not tokens
    const root = el("div", { class: "fl-heatmap" + (v.tall_cols ? " fl-tall-cols" : ""), "data-view": v.id || "" });
    const controls = el("div", { class: "fl-controls" });
    if (layers.length > 1) {
      const sel = el("select", { class: "fl-layer", onchange: e => { layer = +e.target.value; draw(); } },
        ...layers.map((l, i) => el("option", { value: i, text: l.name })));
      controls.append(el("label", { text: "colour: " }), sel);
    }
    let pager = null;
    if (C > page) {
      pager = el("input", { type: "range", min: 0, max: C - page, step: 1, value: 0, class: "fl-pager",
        oninput: e => { start = +e.target.value; paged(); } });
      controls.append(el("button", { text: "◀", class: "fl-prev", onclick: () => move(-page) }), pager,
        el("button", { text: "▶", class: "fl-next", onclick: () => move(page) }));
    }
    const posLabel = el("span", { class: "fl-position" });
    controls.append(posLabel);
    const grid = el("div", { class: "fl-grid" });
    const legend = el("div", { class: "fl-legend" });
    const detail = el("div", { class: "fl-detail" });
    root.append(controls, grid, legend, detail);
    function move(d) { start = Math.max(0, Math.min(C - page, start + d)); if (pager) pager.value = start; paged(); }
    // grids side by side (ctx.syncPage) page together
    function paged() { if (ctx.syncPage) ctx.syncPage(start); else draw(); }
    if (ctx.registerPager) ctx.registerPager(s => { start = s; if (pager) pager.value = s; draw(); });

    function tipFor(r, c) {
      const idx = r * C + c, l = layers[layer];
      const rows = [[l.name, fmt(l.values[idx], 4)]];
      for (const [name, arr] of Object.entries(tips)) rows.push([name, fmt(arr[idx], 4)]);
      const node = el("div", {}, el("div", { class: "fl-tip-title", text: `${v.row_title || "row"} ${v.rows[r]}, ${v.col_title || "column"} ${c}: ${shown(v.cols[c])}` }),
        table(["", ""], rows, "fl-tip-table"));
      if (topk) {
        const kr = [];
        for (let j = 0; j < topk.k; j++) {
          const id = topk.ids[idx * topk.k + j];
          if (id < 0) continue;
          kr.push([j + 1, { t: vocab[id] !== undefined ? vocab[id] : "#" + id }, fmt(topk.probs[idx * topk.k + j], 4)]);
        }
        node.append(table(["#", "token", "p"], kr, "fl-tip-table fl-topk"));
      }
      return node;
    }
    function showDetail(r, c) {
      const d = v.details && v.details[`${r},${c}`];
      if (!d) return;
      detail.replaceChildren(el("h4", { text: d.title }),
        ...d.tables.map(t => el("div", { class: "fl-detail-table" }, el("div", { class: "fl-sub", text: t.title }), table(t.head, t.rows))));
      if (ctx.onDetail) ctx.onDetail(v, r, c);
    }
    function draw() {
      const l = layers[layer], colour = scaler(l.values, l), end = Math.min(C, start + page);
      const order = [...Array(R).keys()];
      if (v.row_order === "up") order.reverse();
      const t = el("table", { class: "fl-cells" });
      const head = el("tr", {}, el("th", { class: "fl-corner", text: v.corner || "" }));
      for (let c = start; c < end; c++) {
        head.append(el("th", { class: short ? "fl-col fl-col-short" : "fl-col", "data-c": c, title: String(v.cols[c]),
          text: v.cols_across ? shown(v.cols[c]).slice(0, v.cell_chars || 7) : shown(v.cols[c]),
          onclick: () => { if (ctx.onColumn) ctx.onColumn(v, c); } }));
      }
      t.append(head);
      for (const r of order) {
        const tr = el("tr", {}, el("th", { class: "fl-row", text: v.rows[r] }));
        for (let c = start; c < end; c++) {
          const idx = r * C + c;
          let text = null;  // null: nothing to write; "" is an empty token (shown as ∅)
          if (v.cell_text_topk && topk) text = vocab[topk.ids[idx * topk.k]] ?? "";  // the top-1 token
          else if (cellText) text = typeof cellText[idx] === "number" ? (vocab[cellText[idx]] ?? "") : cellText[idx];
          else if (v.show_values && v.value_digits !== undefined) text = fixed(l.values[idx], v.value_digits);
          else if (v.show_values) text = fmt(l.values[idx], 2);
          const td = el("td", { class: "fl-cell", "data-r": r, "data-c": c, text: text === null ? "" : shown(text).slice(0, v.cell_chars || 7),
            onmousemove: e => showTip(e, tipFor(r, c)), onmouseleave: hideTip, onclick: () => showDetail(r, c) });
          paint(td, colour(l.values[idx]));
          tr.append(td);
        }
        t.append(tr);
      }
      grid.replaceChildren(t);
      posLabel.textContent = C > page ? ` ${v.col_title || "columns"} ${start}–${end - 1} of ${C}` : "";
      const [mn, mx] = extent(l.values);
      const lo = fmt(l.vmin ?? mn);
      legend.replaceChildren(el("span", { text: `${l.name}: ` }),
        el("span", { class: "fl-ramp " + (l.scale === "diverging" ? "fl-div" : "fl-seq") }),
        el("span", { text: l.scale === "log" ? " bright = rank 0, dark = high rank" : ` ${lo} … ${fmt(l.vmax ?? mx)}` }));
    }
    draw();
    return root;
  }

  // ---- line chart: x labels, series [{name, y}] (NaN breaks a line) ----
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  function lines(v) {
    const W = v.width || 640, H = v.height || 260, L = 56, B = 58, T = 12, Rm = 36;
    const series = v.series.map(s => Object.assign({}, s, { y: Array.from(decoded(s.y)) }));
    const xs = v.x, n = xs.length;
    let lo = v.ymin, hi = v.ymax;
    const [mn, mx] = extent(series.flatMap(s => s.y));
    if (lo === undefined) lo = Math.min(mn, 0);
    if (hi === undefined) hi = Math.max(mx, lo + 1e-9);
    if (v.log) { lo = Math.max(lo, 1e-6); }
    const tf = v.log ? (y => Math.log10(Math.max(y, 1e-6))) : (y => y);
    const ylo = tf(lo), yhi = tf(hi) === ylo ? ylo + 1 : tf(hi);
    const X = i => L + (n === 1 ? (W - L - Rm) / 2 : i * (W - L - Rm) / (n - 1));
    const Y = y => T + (H - T - B) * (1 - (tf(y) - ylo) / (yhi - ylo));
    const svg = sv("svg", { width: W, height: H, class: "fl-lines" });
    for (let k = 0; k <= 4; k++) {
      const yv = ylo + k * (yhi - ylo) / 4, y = T + (H - T - B) * (1 - k / 4);
      svg.append(sv("line", { x1: L, x2: W - Rm, y1: y, y2: y, class: "fl-gridline" }),
        sv("text", { x: L - 4, y: y + 4, "text-anchor": "end", class: "fl-axis", text: fmt(v.log ? 10 ** yv : yv, 2) }));
    }
    const every = Math.max(1, Math.ceil(n / 24));
    xs.forEach((x, i) => {
      if (i % every) return;
      svg.append(sv("text", { x: X(i), y: H - B + 12, transform: `rotate(45 ${X(i)} ${H - B + 12})`, class: "fl-axis", text: shown(x) }));
    });
    series.forEach((s, si) => {
      const colour = s.colour || PALETTE[si % PALETTE.length];
      let d = "", pen = false;
      s.y.forEach((y, i) => {
        if (!Number.isFinite(y) || (v.log && y <= 0)) { pen = false; return; }
        d += (pen ? "L" : "M") + X(i).toFixed(1) + "," + Y(y).toFixed(1); pen = true;
      });
      svg.append(sv("path", { d, stroke: colour, fill: "none", "stroke-width": 1.8, class: "fl-series", "data-name": s.name }));
      s.y.forEach((y, i) => {
        if (!Number.isFinite(y)) return;
        svg.append(sv("circle", { cx: X(i), cy: Y(y), r: 2.6, fill: colour }, sv("title", { text: `${s.name} · ${shown(xs[i])}: ${fmt(y, 4)}` })));
      });
    });
    const legend = el("div", { class: "fl-series-legend" },
      ...series.map((s, si) => el("span", { class: "fl-key" }, el("span", { class: "fl-swatch", style: `background:${s.colour || PALETTE[si % PALETTE.length]}` }), s.name)));
    return el("div", { class: "fl-chart" }, v.ylabel ? el("div", { class: "fl-sub", text: v.ylabel }) : null, svg, legend);
  }

  // ---- bars: labels, values (signed), optional click details keyed by label ----
  function bars(v, ctx) {
    const vals = Array.from(decoded(v.values)), m = Math.max(extent(vals.map(Math.abs))[1], 1e-12);
    const detail = el("div", { class: "fl-detail" });
    const rows = v.labels.map((lab, i) => {
      const w = Number.isFinite(vals[i]) ? 50 * Math.abs(vals[i]) / m : 0;
      const bar = el("div", { class: "fl-bar " + (vals[i] < 0 ? "fl-neg" : "fl-pos"),
        style: vals[i] < 0 ? `width:${w}%;margin-left:${50 - w}%` : `width:${w}%;margin-left:50%` });
      return el("div", { class: "fl-bar-row", "data-label": lab, onclick: () => {
        const d = v.details && v.details[lab];
        if (d) detail.replaceChildren(el("h4", { text: d.title }), ...d.tables.map(t => el("div", { class: "fl-detail-table" }, el("div", { class: "fl-sub", text: t.title }), table(t.head, t.rows))));
      } }, el("span", { class: "fl-bar-label", text: lab }), el("div", { class: "fl-bar-track" }, bar), el("span", { class: "fl-bar-value", text: fmt(vals[i]) }));
    });
    return el("div", { class: "fl-bars" }, ...rows, detail);
  }

  // ---- tokens: a text as tokens coloured by one of several series (select) ----
  function tokens(v) {
    const series = v.series.map(s => Object.assign({}, s, { values: Array.from(decoded(s.values)) }));
    let cur = Math.min(Math.max(v.selected | 0, 0), series.length - 1);  // optional `selected`: the series shown first
    const box = el("div", { class: "fl-tokens" });
    const controls = el("div", { class: "fl-controls" });
    if (series.length > 1) controls.append(el("label", { text: (v.select_label || "series") + ": " }),
      el("select", { class: "fl-series-select", onchange: e => { cur = +e.target.value; draw(); } }, ...series.map((s, i) => el("option", Object.assign({ value: i, text: s.name }, i === cur ? { selected: "" } : {})))));
    function draw() {
      const s = series[cur], colour = scaler(s.values, { scale: s.scale || "diverging", vmin: s.vmin, vmax: s.vmax });
      box.replaceChildren(...v.tokens.map((t, i) => {
        const span = el("span", { class: "fl-token" + (s.mark === i ? " fl-mark" : ""), "data-i": i, text: shown(t),
          onmousemove: e => showTip(e, el("div", {}, el("div", { class: "fl-tip-title", text: `${i}: ${shown(t)}` }), el("div", { text: `${s.name}: ${fmt(s.values[i], 4)}` }))),
          onmouseleave: hideTip });
        paint(span, colour(s.values[i]));
        return span;
      }));
    }
    draw();
    return el("div", {}, controls, box);
  }

  // ---- samples side by side: columns [{title, texts: [..]}] ----
  function samples(v) {
    return el("div", { class: "fl-samples" }, ...v.columns.map(c => el("div", { class: "fl-sample-col" },
      el("div", { class: "fl-sub", text: c.title }), ...c.texts.map(t => el("pre", { class: "fl-sample", text: t })))));
  }

  function tableView(v) { return table(v.head, v.rows); }
  function text(v) { return el("p", { class: "fl-text", text: v.text }); }

  // ---- the lens: one heatmap per lens (side by side), a token's per-site curves on click ----
  function lens(v, ctx) {
    const curves = el("div", { class: "fl-curves" });
    const pagers = [];
    const inner = Object.assign({}, ctx, {
      registerPager: f => pagers.push(f),
      syncPage: start => pagers.forEach(f => f(start)),
      onColumn: (hv, c) => {
        // the clicked token's values at every site, one chart per unit (rank, probability, nats)
        const S = v.sites.length, T = v.tokens.length, units = {};
        const column = a => { const y = []; for (let s = 0; s < S; s++) y.push(a[s * T + c]); return y; };
        for (const L of v.lenses) {
          const prefix = v.lenses.length > 1 ? L.name + ": " : "";
          for (const layer of L.grid.layers) {
            const y = column(decoded(layer.values)).map(x => layer.unit === "rank" ? x + 1 : x);
            (units[layer.unit] = units[layer.unit] || []).push({ name: prefix + layer.name, y });
          }
          const ids = decoded(L.grid.topk.probs), k = L.grid.topk.k, y = [];
          for (let s = 0; s < S; s++) y.push(ids[(s * T + c) * k]);
          (units.probability = units.probability || []).push({ name: prefix + "p(lens top-1)", y });
        }
        curves.replaceChildren(el("h4", { text: `token ${c}: ${shown(v.tokens[c])} → next ${shown(v.next[c])}` }),
          el("div", { class: "fl-row-of-charts" }, ...Object.entries(units).map(([unit, series]) => lines({ x: v.sites, series, log: unit === "rank",
            ymin: unit === "rank" ? 1 : 0, ymax: unit === "probability" ? 1 : undefined,
            ylabel: unit === "rank" ? "1 + rank of the final top-1 (log)" : unit, width: 420 }))));
        curves.setAttribute("data-c", c);
      } });
    const maps = v.lenses.map(L => el("div", { class: "fl-lens" }, el("h4", { text: L.name }),
      heatmap(Object.assign({ rows: v.sites, cols: v.tokens, row_order: "up", row_title: "site", col_title: "token", cols_across: true,
        // side by side: each grid pages fewer tokens so that both fit across the window
        page: v.lenses.length > 1 ? Math.max(8, Math.floor(v.page / v.lenses.length)) : v.page,
        corner: "site \\ token", id: "lens-" + L.name }, L.grid), inner)));
    return el("div", {}, el("div", { class: "fl-lenses" }, ...maps),
      el("p", { class: "fl-hint", text: "Hover a cell for that site's top tokens; click a token (column head) for its curves over the sites." }), curves);
  }

  function tabs(v, ctx) {
    const bar = el("div", { class: "fl-tabbar" }), body = el("div", { class: "fl-tabbody" });
    const panes = v.tabs.map(() => null);
    function open(i) {
      if (!panes[i]) panes[i] = el("div", { class: "fl-pane" }, ...v.tabs[i].views.map(w => render(w, ctx)));
      body.replaceChildren(panes[i]);
      [...bar.children].forEach((b, j) => b.classList.toggle("fl-active", i === j));
    }
    v.tabs.forEach((t, i) => bar.append(el("button", { class: "fl-tab", "data-tab": t.label, text: t.label, onclick: () => open(i) })));
    open(0);
    return el("div", {}, bar, body);
  }

  const VIEWS = { heatmap, lines, bars, tokens, samples, table: tableView, text, lens, tabs };
  function render(v, ctx) {
    const make = VIEWS[v.type];
    if (!make) throw new Error("fusedlens report: unknown view type " + v.type);
    const body = make(v, ctx);
    return el("section", { class: "fl-view fl-view-" + v.type }, v.title ? el("h3", { text: v.title }) : null,
      v.note ? el("p", { class: "fl-note", text: v.note }) : null, body);
  }

  function main() {
    const data = JSON.parse(document.getElementById("fl-data").textContent);
    const ctx = { vocab: data.vocab || {} };
    const root = document.getElementById("fl-root");
    root.append(el("h2", { text: data.title }));
    if (data.meta && Object.keys(data.meta).length)
      root.append(el("div", { class: "fl-meta", text: Object.entries(data.meta).map(([k, v]) => `${k}: ${v}`).join(" · ") }));
    for (const v of data.views) root.append(render(v, ctx));
    document.body.setAttribute("data-ready", "1");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main); else main();
})();
