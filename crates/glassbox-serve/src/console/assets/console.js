// Glassbox console: progressive enhancement of server-rendered pages. No framework, no
// inline handlers (the CSP forbids them); every feature finds its elements by id.
"use strict";

const csrf = () => document.querySelector('meta[name="glassbox-csrf"]')?.content;
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const level = (v, max) => Math.max(0, Math.min(5, Math.round((v / (max || 1)) * 5)));

// ---- catalog: search as you type ----------------------------------------------------------
function catalogSearch() {
  const form = document.getElementById("search");
  const results = document.getElementById("results");
  if (!form || !results) return;
  let timer, seq = 0;
  const run = async () => {
    const params = new URLSearchParams(new FormData(form));
    const mine = ++seq;
    const r = await fetch("/console/catalog/results?" + params, { credentials: "same-origin" });
    if (mine !== seq) return; // a newer keystroke won
    if (r.ok) {
      results.innerHTML = await r.text(); // server-rendered, escaped by maud
      history.replaceState(null, "", "/console/catalog?" + params);
    }
  };
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(run, 120); });
  form.addEventListener("change", () => { clearTimeout(timer); run(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement?.tagName !== "INPUT") { e.preventDefault(); document.getElementById("q").focus(); }
  });
}

// ---- live monitor: the server's event stream ----------------------------------------------
function live() {
  const status = document.getElementById("live-status");
  const events = document.getElementById("events");
  if (!status || !events) return;
  const links = JSON.parse(status.dataset.links || "{}");
  const bump = (monitor, cls, by = 1) => {
    let row = document.querySelector(`#counters tr[data-monitor="${CSS.escape(monitor)}"]`);
    if (!row) {
      row = el("tr", { "data-monitor": monitor }, el("td", { text: monitor }), el("td"), el("td"),
        el("td", { class: "num firings", text: "0" }), el("td", { class: "num requests", text: "0" }), el("td", { class: "num blocks", text: "0" }));
      document.getElementById("counters").append(row);
    }
    const cell = row.querySelector("." + cls);
    cell.textContent = String(Number(cell.textContent) + by);
  };
  const add = (cells, cls = "") => {
    const tr = el("tr", { class: "fresh " + cls });
    for (const c of cells) tr.append(c instanceof Node ? el("td", {}, c) : el("td", { text: String(c) }));
    events.prepend(tr);
    while (events.children.length > 500) events.lastChild.remove();
  };
  const src = new EventSource("/v1/events");
  src.onopen = () => { status.textContent = "Connected: events appear as requests are served."; };
  src.onerror = () => { status.textContent = "Event stream interrupted; reconnecting…"; };
  src.addEventListener("firing", (m) => {
    const d = JSON.parse(m.data), f = d.firing;
    const name = links[f.monitor] ? el("a", { href: links[f.monitor], text: f.monitor }) : f.monitor;
    // A sentence rule's firing says which piece tripped it (quoted where texts are stored).
    const e = f.evidence, place = e && (e.piece === 0 ? "whole text" : `sentence ${e.piece}`);
    const value = e ? el("span", { text: `${f.value.toFixed(3)} (${place}, ${e.kind})`, title: e.text || "" }) : f.value.toFixed(3);
    add([new Date().toLocaleTimeString(), d.request_id, d.route, name, f.input, f.position, value, f.action], "firing");
    bump(f.monitor, "firings");
  });
  src.addEventListener("request", (m) => {
    const d = JSON.parse(m.data), r = d.request;
    for (const f of r.firings) bump(f.monitor, "requests");
    if (r.blocked) bump(r.blocked, "blocks");
    const what = el("div", { text: r.blocked ? `blocked by ${r.blocked}` : `${r.firings.length} monitor(s) fired` });
    // Each monitor's rule value per token of the request (first input), shaded to its own max.
    for (const [monitor, values] of Object.entries(r.trace || {})) {
      if (!values.length) continue;
      const max = Math.max(1e-9, ...values.map((v) => Math.abs(v)));
      const strip = el("div", { class: "heat trace", role: "img", "aria-label": `${monitor} per token`, title: monitor });
      values.forEach((v, i) => strip.append(el("span", { class: "a" + level(Math.abs(v), max), title: `${monitor} token ${i}: ${v.toFixed(3)}` })));
      what.append(el("div", { class: "small", text: monitor }), strip);
    }
    add([new Date().toLocaleTimeString(), d.request_id, d.route, what, "", "", "", d.key], "request");
  });
}

// ---- playground -----------------------------------------------------------------------------
function playground() {
  const form = document.getElementById("play");
  if (!form) return;
  const status = document.getElementById("play-status");
  const runs = document.getElementById("runs");
  const detail = document.getElementById("token-detail");
  const search = document.getElementById("feature-search");
  const hits = document.getElementById("feature-hits");
  let timer;
  search?.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const q = new URLSearchParams({ q: search.value, catalog: document.getElementById("dictionary").value });
      const r = await fetch("/console/api/features?" + q, { credentials: "same-origin" });
      if (!r.ok) return;
      hits.replaceChildren(...(await r.json()).features.map((f) => el("option", { value: `${f.id}: ${f.label}` })));
      const m = /^(\d+):/.exec(search.value);
      if (m) document.getElementById("feature").value = m[1];
    }, 150);
  });
  const show = (tok, run) => {
    detail.replaceChildren(el("h2", { text: `“${tok.text}” (${run.title})` }));
    for (const [dict, feats] of tok.features) {
      const ol = el("ol");
      for (const [id, act, label] of feats) {
        ol.append(el("li", {}, el("a", { href: `/console/catalog/${encodeURIComponent(dict)}/features/${id}`, text: `${id}` }), ` ${act.toFixed(2)} `, label));
      }
      detail.append(el("h3", { text: `dictionary ${dict}` }), feats.length ? ol : el("p", { text: "no active features" }));
    }
    if (tok.probes.length) detail.append(el("p", { text: tok.probes.map(([n, v]) => `probe ${n}: ${v.toFixed(3)}`).join(" · ") }));
  };
  const signalOf = () => {
    const heat = document.getElementById("heat").value;
    return (t) => heat ? (t.probes.find(([n]) => n === heat)?.[1] ?? 0) : (t.features[0]?.[1][0]?.[1] ?? 0);
  };
  // A finished run: output, heat strip and clickable tokens, shaded against `max`.
  const runBox = (run, ri, max, signal) => {
    const strip = el("div", { class: "heat", role: "img", "aria-label": "per-token heat strip" });
    const text = el("div", { class: "tokens" });
    for (const t of run.tokens) {
      const v = signal(t);
      strip.append(el("span", { class: "a" + level(v, max), title: `${t.text}: ${v.toFixed(3)}` }));
      const b = el("button", { type: "button", class: `tok a${level(v, max)}${t.generated ? " gen" : ""}`, title: v.toFixed(3), text: t.text });
      b.addEventListener("click", () => { document.querySelectorAll(".tok.selected").forEach((x) => x.classList.remove("selected")); b.classList.add("selected"); show(t, run); });
      text.append(b);
    }
    const box = el("section", { class: "run", "data-run": String(ri) }, el("h2", { text: run.title }),
      el("p", { class: "output" }, el("strong", { text: "Output: " }), run.text));
    if (run.blocked) box.append(el("p", { class: "blocked", text: "Blocked: " + run.blocked }));
    box.append(el("p", { class: "small", text: `${run.firings} monitor firing(s)` }), strip, text);
    return box;
  };
  const maxOf = (views, signal) => Math.max(1e-9, ...views.flatMap((r) => r.tokens.map(signal)));
  const render = (views) => {
    const signal = signalOf(), max = maxOf(views, signal);
    runs.replaceChildren(...views.map((run, ri) => runBox(run, ri, max, signal)));
  };
  // A run still generating: its title and the text so far.
  const liveBox = (title, ri) => el("section", { class: "run streaming", "data-run": String(ri) }, el("h2", { text: title }),
    el("p", { class: "output" }, el("strong", { text: "Output: " }), el("span", { class: "so-far" })));
  let last;
  document.getElementById("heat")?.addEventListener("change", () => last && render(last));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {
      prompt: document.getElementById("prompt").value,
      max_tokens: Number(document.getElementById("max-tokens").value),
      chat: document.getElementById("chat").checked,
      stream: true,
    };
    const feature = document.getElementById("feature")?.value;
    if (feature !== "" && feature !== undefined && !document.getElementById("edit").disabled) {
      body.edit = { dictionary: document.getElementById("dictionary").value, feature: Number(feature),
        mode: document.getElementById("mode").value, value: Number(document.getElementById("value").value) };
    }
    status.textContent = "Running…";
    document.getElementById("run").disabled = true;
    try {
      const headers = { "content-type": "application/json" };
      if (csrf()) headers["x-glassbox-csrf"] = csrf();
      const r = await fetch("/console/api/playground", { method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin" });
      if (!r.ok) { const data = await r.json().catch(() => ({})); status.textContent = "Error: " + (data.error?.message || r.status); return; }
      // One JSON object per line: start, token…, run, (token…, run), done | error.
      const views = [], boxes = [];
      const handle = (m) => {
        if (m.start) {
          boxes.push(...m.start.runs.map((t, i) => liveBox(t, i)));
          runs.replaceChildren(...boxes);
          status.textContent = "Generating…";
        } else if (m.token) {
          boxes[m.token.run]?.querySelector(".so-far")?.append(m.token.text);
        } else if (m.run) {
          const signal = signalOf();
          views[m.run.index] = m.run.view;
          const box = runBox(m.run.view, m.run.index, maxOf([m.run.view], signal), signal);
          boxes[m.run.index]?.replaceWith(box);
          boxes[m.run.index] = box;
        } else if (m.done) {
          last = views.filter(Boolean);
          render(last); // one shading scale for the runs side by side
          status.textContent = `Done (${m.done.id}). Click a token for its features.`;
        } else if (m.error) {
          status.textContent = "Error: " + m.error.message;
        }
      };
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim()) handle(JSON.parse(line));
        }
      }
    } catch (err) {
      status.textContent = "Error: " + err;
    } finally {
      document.getElementById("run").disabled = false;
    }
  });
}

// ---- graph viewer ---------------------------------------------------------------------------
function graph() {
  const svg = document.getElementById("graph");
  if (!svg) return;
  const threshold = document.getElementById("threshold");
  const out = document.getElementById("threshold-value");
  const pathsOnly = document.getElementById("paths-only");
  const detail = document.getElementById("node-detail");
  const prune = () => {
    const t = Number(threshold.value);
    out.textContent = t.toFixed(2);
    const used = new Set();
    for (const e of svg.querySelectorAll("line.edge")) {
      const hide = Number(e.dataset.rel) < t || (pathsOnly.checked && !e.classList.contains("path"));
      e.classList.toggle("hidden", hide);
      if (!hide) { used.add(e.dataset.source); used.add(e.dataset.target); }
    }
    for (const n of svg.querySelectorAll("circle.node")) n.classList.toggle("hidden", !used.has(n.dataset.node) && n.dataset.kind !== "target");
  };
  threshold.addEventListener("input", prune);
  pathsOnly.addEventListener("change", prune);
  const pick = (n) => {
    svg.querySelectorAll("circle.selected").forEach((x) => x.classList.remove("selected"));
    n.classList.add("selected");
    const kids = [el("h2", { text: n.dataset.label }),
      el("p", { text: `${n.dataset.kind} · activation ${n.dataset.activation} · influence on the target ${n.dataset.influence}` })];
    if (n.dataset.link) kids.push(el("p", {}, el("a", { href: n.dataset.link, text: "Open the feature page →" })));
    for (const e of svg.querySelectorAll(`line.edge[data-source="${n.dataset.node}"], line.edge[data-target="${n.dataset.node}"]`)) e.classList.add("path");
    detail.replaceChildren(...kids);
  };
  for (const n of svg.querySelectorAll("circle.node")) {
    n.addEventListener("click", () => pick(n));
    n.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(n); } });
  }
}

// ---- monitors: operators add and delete through /v1/monitors (role and CSRF checked there) ----
function monitors() {
  const status = document.getElementById("monitor-status");
  if (!status) return;
  const send = async (method, url, body) => {
    const headers = { "x-glassbox-csrf": csrf() || "" };
    if (body) headers["content-type"] = "application/json";
    const r = await fetch(url, { method, headers, body: body && JSON.stringify(body), credentials: "same-origin" });
    if (r.ok) { location.reload(); return; }
    const data = await r.json().catch(() => ({}));
    status.textContent = "Error: " + (data.error?.message || r.status);
    status.className = "status broken";
  };
  document.getElementById("add-monitor")?.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(e.target), body = {};
    for (const [k, v] of f.entries()) {
      if (v === "") continue;
      body[k] = ["feature", "value", "strength"].includes(k) ? Number(v) : v;
    }
    send("POST", "/v1/monitors", body);
  });
  for (const b of document.querySelectorAll("button.delete")) {
    b.addEventListener("click", () => {
      if (confirm(`Delete monitor ${b.dataset.name}?`)) send("DELETE", "/v1/monitors/" + encodeURIComponent(b.dataset.name));
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { catalogSearch(); live(); playground(); graph(); monitors(); });
