// The playground's logic: draw the graph from GET /graph, poll the nodes' state, build the parameter form
// from the API's own OpenAPI schema (/docs.json), and stream /generate_score_stream into one column per model.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { info: null, spec: null, controller: null, prev: null, chat: { id: null } };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

// ---- the API key: kept in this tab's session storage, sent as a Bearer token, never logged -------------
const KEY_STORE = "inference-graph-api-key";

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

// Headers for a call to the graph's API: the key (when one is set) and any `extra` headers.
function withKey(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, authorization: `Bearer ${key}` } : { ...extra };
}

function setupKey() {
  const input = $("#api-key");
  input.value = apiKey();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    location.reload(); // every call from here on carries it (or none)
  });
}

class HttpError extends Error {
  constructor(url, status) {
    super(`${url}: HTTP ${status}`);
    this.status = status;
  }
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store", headers: withKey() });
  if (!r.ok) throw new HttpError(url, r.status);
  return r.json();
}

// ---- notices and field errors ---------------------------------------------------------------------
function notice(text, kind = "error") {
  const n = el("div", { class: `notice ${kind}`, role: "alert" }, el("span", { text }));
  n.append(el("button", { type: "button", text: "×", title: "dismiss", onclick: () => n.remove() }));
  $("#notices").append(n);
  return n;
}

function clearErrors() {
  $("#notices").replaceChildren();
  document.querySelectorAll(".field.has-error").forEach((f) => f.classList.remove("has-error"));
  document.querySelectorAll(".field-error").forEach((s) => (s.textContent = ""));
}

// One place turns an error body (graph/errors.py ErrorBody) into what the user sees.
function showError(status, body, retryAfter) {
  const err = Array.isArray(body) ? body[0] : body || {};
  const message = err.message || err.error || `HTTP ${status}`;
  const field = err.field && document.querySelector(`.field[data-field="${CSS.escape(err.field)}"]`);
  if (status === 400 && field) {
    field.classList.add("has-error");
    $(".field-error", field).textContent = message;
    return;
  }
  if (status === 401) {
    notice(`Unauthorized (401): ${message} — enter an API key above`, "warn");
    $("#api-key").focus();
  } else if (status === 429 || err.error === "overloaded" || err.error === "rate_limited") {
    const wait = err.retry_after_s ?? retryAfter;
    const what = err.error === "rate_limited" ? "Rate limited" : "Overloaded";
    notice(`${what} (429): ${message}${wait ? ` — retry in ${wait} s` : ""}`, "warn");
  } else if (err.node) {
    notice(`Node ${err.node} failed (${err.error || status}): ${message}`);
    document.querySelector(`.node[data-node="${CSS.escape(err.node)}"]`)?.classList.add("down");
  } else {
    notice(`Error ${status}${err.error ? ` (${err.error})` : ""}: ${message}`);
  }
}

// ---- the graph ------------------------------------------------------------------------------------
const BOX = { w: 250, h: 96, gap: 18, col: [20, 210, 540, 850], endW: 120 };

function drawGraph(info) {
  const graph = $("#graph");
  const gens = info.generators;
  const height = Math.max(140, gens.length * (BOX.h + BOX.gap) + BOX.gap);
  const mid = (height - BOX.h) / 2;
  const pos = { prompt: [BOX.col[0], mid], classifier: [BOX.col[2], mid], output: [BOX.col[3], mid] };
  gens.forEach((g, i) => (pos[g.name] = [BOX.col[1], BOX.gap + i * (BOX.h + BOX.gap)]));
  graph.style.height = `${height}px`;
  const box = (name, kind, model, extra = "") => {
    const b = el("div", { class: `node ${extra}`, "data-node": name },
      el("span", { class: "kind", text: kind }), el("div", { class: "name", text: name }));
    if (model) b.append(el("div", { class: "model", text: model, title: model }));
    b.append(el("div", { class: "state", text: extra ? "" : "…" }));
    [b.style.left, b.style.top] = pos[name].map((v) => `${v}px`);
    return b;
  };
  graph.append(box("prompt", "request", "", "endpoint"));
  for (const g of gens) graph.append(box(g.name, "generator", g.model + (g.remote_url ? ` @ ${g.remote_url}` : "")));
  const c = info.classifier;
  graph.append(box(c.name, "classifier", `${c.model} (${c.mode}, score = P(${c.score_label}))`));
  graph.append(box("output", "response", "", "endpoint"));
  $(".node[data-node=prompt] .state").textContent = "POST";
  $(".node[data-node=output] .state").textContent = "scored completions";
  const svg = $("#edges");
  svg.setAttribute("width", BOX.col[3] + BOX.endW + 20);
  svg.setAttribute("height", height);
  svg.innerHTML = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
    orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#97a0b3"/></marker></defs>`;
  const width = (n) => (n === "prompt" || n === "output" ? BOX.endW : BOX.w);
  for (const e of info.edges) {
    const [sx, sy] = pos[e.source], [tx, ty] = pos[e.target];
    const x1 = sx + width(e.source), y1 = sy + BOX.h / 2, x2 = tx - 2, y2 = ty + BOX.h / 2, m = (x1 + x2) / 2;
    const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
    p.setAttribute("d", `M${x1},${y1} C${m},${y1} ${m},${y2} ${x2},${y2}`);
    p.setAttribute("marker-end", "url(#arrow)");
    p.dataset.source = e.source;
    p.dataset.target = e.target;
    svg.append(p);
  }
}

async function pollState() {
  const now = performance.now();
  try {
    const ready = await fetch("readyz", { cache: "no-store" });
    const badge = $("#ready");
    badge.textContent = ready.ok ? "all nodes loaded" : "loading…";
    badge.className = `badge ${ready.ok ? "ok" : "bad"}`;
    const cls = $(".node[data-node=classifier]");
    cls.classList.toggle("ready", ready.ok);
    $(".state", cls).textContent = ready.ok ? "loaded" : "loading";
    const r = await fetch("node_stats", { method: "POST", headers: withKey({ "content-type": "application/json" }), body: "{}" });
    if (!r.ok) throw new Error(`node_stats: HTTP ${r.status}`);
    const stats = await r.json();
    for (const [name, s] of Object.entries(stats)) {
      const node = document.querySelector(`.node[data-node="${CSS.escape(name)}"]`);
      if (!node) continue;
      const before = state.prev?.stats[name];
      const dt = state.prev ? (now - state.prev.t) / 1000 : 0;
      const rate = before && dt > 0 ? Math.max(0, s.generated_tokens_total - before.generated_tokens_total) / dt : 0;
      node.classList.remove("down");
      node.classList.add("ready");
      node.classList.toggle("busy", s.active_rows > 0);
      node.dataset.generated = s.generated_tokens_total;
      $(".state", node).textContent = `loaded · queue ${s.queued_requests} · active ${s.active_rows} · ` +
        `${rate.toFixed(1)} tok/s · ${s.generated_tokens_total} tok total`;
      document.querySelectorAll(`#edges path[data-target="${CSS.escape(name)}"]`)
        .forEach((p) => p.classList.toggle("live", s.active_rows > 0));
    }
    state.prev = { t: now, stats };
  } catch (exc) {
    document.querySelectorAll(".node:not(.endpoint)").forEach((n) => {
      if (n.dataset.node !== "classifier") { n.classList.add("down"); $(".state", n).textContent = `unreachable: ${exc.message}`; }
    });
    state.prev = null;
  }
}

// ---- the form, from the API's schema --------------------------------------------------------------
function resolve(schema) {
  // A field's schema may be a $ref, allOf[$ref, ...], or anyOf[one of those, null] (an optional field).
  const option = schema.anyOf?.find((o) => o.$ref || o.allOf) ?? schema;
  const ref = option.$ref || option.allOf?.find((o) => o.$ref)?.$ref;
  return ref ? state.spec.components.schemas[ref.split("/").pop()] : option;
}

function streamSchema() {
  const op = state.spec.paths["/generate_score_stream"].post;
  return resolve(op.requestBody.content["application/json"].schema);
}

function paramInput(name, prop) {
  const s = (prop.anyOf || [prop]).find((x) => x.type !== "null");
  const bounds = [];
  let input;
  if (s.$ref || s.type === "object") {  // e.g. response_format: JSON, as the API takes it
    input = el("textarea", { rows: 1, placeholder: '{"type": "json_object"}' });
    s.type = "json";
  } else if (s.type === "boolean") {
    input = el("select", {}, el("option", { value: "", text: "default" }),
      el("option", { value: "true", text: "true" }), el("option", { value: "false", text: "false" }));
  } else if (s.type === "array") {
    input = el("textarea", { rows: 1, placeholder: "one per line" });
    if (s.maxItems != null) bounds.push(`at most ${s.maxItems}`);
  } else {
    input = el("input", { type: "number", step: s.type === "integer" ? "1" : "any" });
    if (s.minimum != null) { input.min = s.minimum; bounds.push(`≥ ${s.minimum}`); }
    if (s.exclusiveMinimum != null) bounds.push(`> ${s.exclusiveMinimum}`);
    if (s.maximum != null) { input.max = s.maximum; bounds.push(`≤ ${s.maximum}`); }
  }
  input.id = `p-${name}`;
  input.dataset.param = name;
  input.dataset.type = s.type;
  input.title = [prop.description, bounds.join(", ")].filter(Boolean).join(" ");
  return el("div", { class: "field", "data-field": `params.${name}` },
    el("label", { htmlFor: input.id, text: `${name}${bounds.length ? ` (${bounds.join(", ")})` : ""}` }),
    input, el("span", { class: "field-error" }));
}

function buildForm() {
  const req = streamSchema();
  const params = resolve(req.properties.params);
  const box = $("#params");
  for (const [name, prop] of Object.entries(params.properties)) box.append(paramInput(name, prop));
  $("#prompt").value = req.properties.prompt.default ?? "";
  const interval = req.properties.intermediate_result_interval_ms;
  Object.assign($("#intermediate_result_interval_ms"), { min: interval.minimum, max: interval.maximum,
    value: interval.default, title: interval.description });
  for (const g of state.info.generators) $("#model").append(el("option", { value: g.name, text: g.name }));
  $("#model").addEventListener("change", showDefaults);
  for (const g of state.info.graphs) {
    $("#graph-select").append(el("option", { value: g.name, text: `${g.name} (${g.policy}: ${g.nodes.join(", ")})` }));
  }
  $("#graph-select").addEventListener("change", () => {  // a named graph picks its own nodes
    $("#model").disabled = Boolean($("#graph-select").value);
    drawDiagram($("#graph-select").value);
    if ($("#model").disabled) $("#model").value = "";
  });
  showDefaults();
}

// Empty fields show the selected node's default (or each node's, when they differ).
function showDefaults() {
  const chosen = $("#model").value;
  const gens = state.info.generators.filter((g) => !chosen || g.name === chosen);
  document.querySelectorAll("[data-param]").forEach((input) => {
    const values = [...new Set(gens.map((g) => JSON.stringify(g.defaults[input.dataset.param] ?? null)))];
    const text = values.length === 1 ? values[0] : gens.map((g) => `${g.name}: ${JSON.stringify(g.defaults[input.dataset.param])}`).join(", ");
    const limit = input.dataset.param === "max_new_tokens"
      ? `, node limit ${Math.min(...gens.map((g) => g.max_new_tokens_limit))}` : "";
    if (input.tagName === "SELECT") input.options[0].text = `default (${text})`;
    else input.placeholder = `default ${text}${limit}`;
  });
}

function readParams() {
  const params = {};
  document.querySelectorAll("[data-param]").forEach((input) => {
    const raw = input.value.trim();
    if (raw === "") return;
    const t = input.dataset.type;
    params[input.dataset.param] = t === "boolean" ? raw === "true" : t === "array" ? raw.split("\n").filter(Boolean)
      : t === "json" ? parseJSON(raw) : Number(raw);
  });
  return params;
}

function parseJSON(raw) {
  try { return JSON.parse(raw); } catch { return raw; }  // not JSON: sent as typed, the server names the field
}

// ---- a named graph's progress (candidates, pruned rows, gates, the deadline, the decision) ----------------
function policyLine(text, kind) {
  const li = el("li", { class: kind, text });
  $("#policy").append(li);
  return li;
}

function onPolicy(ev) {
  if (ev.type === "candidates") {
    policyLine(`candidates: ${ev.candidates.map((c) => `${c.id} on ${c.model}${c.seed != null ? ` (seed ${c.seed})` : ""}`).join(", ")}`, "candidates");
    // a nested graph's ids carry its prefix (s1.c0, best.c2): the column index is the number after the last "c"
    for (const c of ev.candidates) completion(c.model, Number(c.id.split(".").pop().slice(1))).dataset.candidate = c.id;
    ev.candidates.forEach(lightCandidate);
  } else if (ev.type === "prune") {
    policyLine(`prune round ${ev.round}: leader ${ev.leader}; pruned ${ev.cancelled.join(", ") || "none"}`, "prune");
    for (const id of ev.cancelled) document.querySelector(`.completion[data-candidate="${id}"]`)?.classList.add("pruned");
  } else if (ev.type === "gate") {
    const gate = ev.gate_label_score != null ? ` gate label ${ev.gate_label_score.toFixed(3)}` : "";
    policyLine(`gate on ${ev.model} (${ev.candidate}): score ${ev.score.toFixed(3)}${gate} → ${ev.passed ? "passed" : "failed"}`, "gate");
  } else if (ev.type === "step") {  // a switch, split, fallback, sequence or guard decided (nested: indented)
    const li = policyLine(`${"· ".repeat(ev.depth)}${ev.graph} (${ev.kind}) → ${ev.branch}: ${ev.outcome}` +
      (ev.why ? ` · ${ev.why}` : ""), `step ${ev.outcome}`);
    li.dataset.graph = ev.graph;
    lightStep(ev);
  } else if (ev.type === "decision") {
    const r = ev.result, t = r.trace;
    (r.path || []).forEach(lightStep);  // the leaf steps (best_of, cascade, a node) light up with the decision
    $("#diagram").dataset.done = "true";
    if (r.path && r.path.length > 1) {  // the path taken through a nested graph, lit step by step
      const path = el("li", { class: "path" });
      r.path.forEach((p, i) => {
        if (i) path.append(" › ");
        path.append(el("span", { class: `hop ${p.outcome}`, text: p.branch && p.kind !== "node" && p.kind !== "best_of" && p.kind !== "cascade"
          ? `${p.graph}[${p.kind}]:${p.branch}` : `${p.graph}[${p.kind}]` }));
      });
      $("#policy").append(path);
    }
    const budget = t.budget ? ` · deadline ${t.budget.deadline_ms} ms (generate ${t.budget.generate_ms} ms)` : "";
    policyLine(`decision: ${r.answer.id} on ${r.answer.model}, score ${r.answer.score.toFixed(3)} · finish ${r.finish_reason} · ` +
      `${r.usage.candidates} candidates, ${r.usage.completion_tokens} tokens · ${Math.round(t.elapsed_ms)} ms${budget}`, "decision");
    document.querySelector(`.completion[data-candidate="${r.answer.id}"]`)?.classList.add("winner");
  }
}

// ---- a named graph's diagram (GET /graph's `diagram` tree), lit as the request takes its path -------------
const TAKEN = new Set(["served", "passed"]);  // the other outcomes (failed, refused, hit) mark a branch red

function drawDiagram(name) {
  const box = $("#diagram");
  const g = state.info.graphs.find((x) => x.name === name);
  box.replaceChildren();
  box.hidden = !g;
  delete box.dataset.done;
  if (g) box.append(diagramBox(g.diagram, 0));
}

function diagramBox(d, depth) {
  const leaf = d.kind === "node";
  const b = el("div", { class: `gbox ${leaf ? "gleaf" : "ggraph"}`, "data-name": d.name, "data-kind": d.kind,
    "data-depth": depth });
  if (d.key) b.dataset.key = d.key;
  if (d.scope) b.dataset.scope = d.scope;
  const head = el("div", { class: "ghead" });
  if (d.key) head.append(el("span", { class: "gkey", text: d.note ? `${d.key} · ${d.note}` : d.key }));
  head.append(el("span", { class: "gname", text: d.name }), el("span", { class: "gkind", text: d.kind }));
  b.append(head);
  if (d.detail) b.append(el("div", { class: "gdetail", text: d.detail }));
  if (d.children.length) {
    const row = el("div", { class: `gbranches ${d.kind}` });
    d.children.forEach((c, i) => {
      if (i && d.kind === "sequence") row.append(el("span", { class: "garrow", text: "→" }));
      row.append(diagramBox(c, depth + 1));
    });
    b.append(row);
  }
  b.append(el("div", { class: "gstate" }));
  return b;
}

const kids = (box) => [...box.querySelectorAll(":scope > .gbranches > .gbox")];

// A step of the path (a live step event, or one of the decision's path): its graph's box at its depth
// (the one inside the lit path, when the same graph is drawn twice) lights up, and so does the branch it chose.
function lightStep(p) {
  const boxes = [...document.querySelectorAll(`#diagram .gbox[data-depth="${p.depth}"]`)]
    .filter((b) => b.dataset.name === p.graph);
  const box = boxes.find((b) => p.depth === 0 || b.parentElement.closest(".gbox")?.classList.contains("lit")) || boxes[0];
  if (!box) return;
  box.classList.add("lit");
  box.classList.remove("failed");
  if (!p.branch || p.kind === "node") return;
  $(":scope > .gstate", box).textContent = `→ ${p.branch}: ${p.outcome}${p.why ? ` · ${p.why}` : ""}`;
  const same = kids(box).filter((k) => k.dataset.name === p.branch);
  const kid = same.find((k) => !k.dataset.outcome) || same[0];  // a sequence may run one branch twice
  if (!kid) return;  // a guard's prompt check: no branch of its own, its state line says it
  kid.dataset.outcome = p.outcome;
  kid.classList.toggle("lit", TAKEN.has(p.outcome));
  kid.classList.toggle("failed", !TAKEN.has(p.outcome));
}

// A candidate as it starts: its id's prefixes (f0., s1., b2., a branch's name...) lead to its branch's box,
// which shows as running (dashed) until a step lights it; its node inside a best_of or cascade too.
function lightCandidate(c) {
  let box = $("#diagram > .gbox");
  if (!box) return;
  box.classList.add("running");
  const segments = c.id.split(".");
  segments.pop();  // cN: the candidate's own number
  for (const seg of segments) {
    const kid = kids(box).find((k) => k.dataset.scope && new RegExp(`^(?:${k.dataset.scope})$`).test(seg));
    if (!kid) return;
    kid.classList.add("running");
    box = kid;
  }
  if (box.dataset.kind !== "node") kids(box).find((k) => k.dataset.name === c.model)?.classList.add("running");
}

// ---- running a prompt: one column per model, filled as the SSE events arrive -----------------------
function column(model) {
  let col = document.querySelector(`.column[data-model="${CSS.escape(model)}"]`);
  if (!col) {
    const g = state.info.generators.find((x) => x.name === model);
    col = el("div", { class: "column", "data-model": model },
      el("h3", {}, model, " ", el("small", { text: g ? g.model : "" })));
    $("#columns").append(col);
  }
  return col;
}

function completion(model, index) {
  const col = column(model);
  let c = col.querySelector(`.completion[data-index="${index}"]`);
  if (!c) {
    c = el("div", { class: "completion", "data-index": index },
      el("div", { class: "text" }), el("div", { class: "meta" }), el("div", { class: "score" }));
    c.dataset.chunks = "0";
    col.append(c);
  }
  return c;
}

function onEvent(ev, t0) {
  const now = performance.now();
  if (ev.type === "error") {
    showError(ev.error === "overloaded" ? 429 : 500, ev);
    if (ev.node) column(ev.node).classList.remove("streaming");
    return;
  }
  if (["candidates", "prune", "gate", "step", "decision"].includes(ev.type)) { onPolicy(ev); return; }
  const c = completion(ev.model, ev.index);
  if (ev.type === "token" || ev.type === "final") {
    const text = $(".text", c);
    text.textContent += ev.text;
    text.scrollTop = text.scrollHeight;
    c.dataset.chunks = String(Number(c.dataset.chunks) + 1);
    c.firstAt ??= now;
    column(ev.model).classList.add("streaming");
  }
  if (ev.type === "token") {
    $(".meta", c).textContent = `streaming · first token ${Math.round(c.firstAt - t0)} ms`;
  } else if (ev.type === "final") {
    c.classList.add("done");
    const secs = (now - t0) / 1000;
    const decode = (now - c.firstAt) / 1000;
    const rate = decode > 0 ? ` · ${(ev.usage.completion_tokens / decode).toFixed(1)} tok/s` : "";
    $(".meta", c).textContent = `finish: ${ev.finish_reason} · prompt ${ev.usage.prompt_tokens} tok · ` +
      `completion ${ev.usage.completion_tokens} tok · first token ${Math.round(c.firstAt - t0)} ms · ` +
      `total ${secs.toFixed(2)} s${rate}`;
    const col = column(ev.model);
    if (!col.querySelector(".completion:not(.done)")) col.classList.remove("streaming");
  } else if (ev.type === "score") {
    const s = $(".score", c);
    s.replaceChildren(el("span", { class: "label", text: ev.label }), ` score ${ev.score.toFixed(3)}`,
      el("span", { class: "bar", style: `width:${Math.round(ev.score * 80)}px` }));
    s.title = Object.entries(ev.labels).map(([k, v]) => `${k}: ${v.toFixed(3)}`).join(", ");
    c.classList.add("scored");
  }
}

async function run(event) {
  event.preventDefault();
  clearErrors();
  const body = { prompt: $("#prompt").value, params: readParams() };
  if ($("#model").value) body.model = $("#model").value;
  if ($("#graph-select").value) body.graph = $("#graph-select").value;
  if ($("#deadline_ms").value !== "") body.deadline_ms = Number($("#deadline_ms").value);
  $("#policy").replaceChildren();
  $("#policy").hidden = !body.graph;
  drawDiagram(body.graph);  // drawn afresh: nothing lit yet
  const interval = $("#intermediate_result_interval_ms").value;
  if (interval !== "") body.intermediate_result_interval_ms = Number(interval);
  $("#columns").replaceChildren();
  const controller = new AbortController();
  state.controller = controller;
  setRunning(true);
  const t0 = performance.now();
  try {
    const r = await fetch("generate_score_stream", { method: "POST", signal: controller.signal,
      headers: withKey({ "content-type": "application/json" }), body: JSON.stringify(body) });
    if (!r.ok) {
      const text = await r.text();
      let parsed;
      try { parsed = JSON.parse(text); } catch { parsed = { message: text }; }
      showError(r.status, parsed, r.headers.get("retry-after"));
      return;
    }
    const named = state.info.graphs.find((g) => g.name === body.graph);
    for (const name of body.model ? [body.model] : named ? [...new Set(named.nodes)] : state.info.generators.map((g) => g.name)) column(name);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(0, cut).replace(/^data: ?/, "");
        buffer = buffer.slice(cut + 2);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data), t0);
      }
    }
    notice("The stream ended without [DONE]: the server closed it early.");
  } catch (exc) {
    if (exc.name !== "AbortError") notice(`Request failed: ${exc.message}`);
  } finally {
    if (state.controller === controller) { state.controller = null; setRunning(false); }
  }
}

function stop() {
  if (!state.controller) return;
  state.controller.abort();  // closes the stream; the entry service then cancels the nodes' work
  document.querySelectorAll(".column.streaming").forEach((c) => { c.classList.remove("streaming"); c.classList.add("stopped"); });
  state.controller = null;
  setRunning(false);
}

function setRunning(on) {
  $("#run-button").disabled = on;
  $("#stop-button").disabled = !on;
  document.body.classList.toggle("running", on);
}

// ---- chat tab: only when the server has the conversations API (POST /chat) -------------------------
function setupChat() {
  const op = state.spec.paths["/chat"]?.post;
  if (!op) return;
  const props = resolve(op.requestBody.content["application/json"].schema).properties || {};
  const pick = (...names) => names.find((n) => n in props);
  const keys = { message: pick("message", "content", "text", "prompt"), model: pick("model"),
    id: pick("conversation_id", "session_id", "conversation"), user: pick("user_id") };
  // The server keeps the history per user_id: this page is one user, kept across reloads.
  const newUser = () => `playground-${Math.random().toString(36).slice(2, 10)}`;
  state.chat.user = localStorage.getItem("playground-user") || newUser();
  localStorage.setItem("playground-user", state.chat.user);
  if (!keys.message) return;
  $("#chat-tab").hidden = false;
  for (const g of state.info.generators) $("#chat-model").append(el("option", { value: g.name, text: g.name }));
  const log = $("#chat-log");
  $("#chat-new").onclick = () => {
    state.chat.id = null;
    state.chat.user = newUser();
    localStorage.setItem("playground-user", state.chat.user);
    log.replaceChildren();
  };
  $("#chat-form").onsubmit = async (event) => {
    event.preventDefault();
    clearErrors();
    const text = $("#chat-message").value;
    const body = { [keys.message]: text };
    if (keys.model) body[keys.model] = $("#chat-model").value;
    if (keys.user) body[keys.user] = state.chat.user;
    if (keys.id && state.chat.id) body[keys.id] = state.chat.id;
    log.append(el("div", { class: "msg user", text }));
    const r = await fetch("chat", { method: "POST", headers: withKey({ "content-type": "application/json" }), body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) {
      if (answer.field) answer.field = `chat.${answer.field === keys.model ? "model" : "message"}`;
      showError(r.status, answer, r.headers.get("retry-after"));
      return;
    }
    if (keys.id && answer[keys.id]) state.chat.id = answer[keys.id];
    const reply = ["reply", "text", "content", "message", "completion"].map((k) => answer[k]).find((v) => typeof v === "string");
    log.append(el("div", { class: "msg assistant", text: reply ?? JSON.stringify(answer) }));
    $("#chat-message").value = "";
  };
}

// ---- tools tab: one chat completion with tools through the OpenAI face (POST /v1/chat/completions) -------
const EXAMPLE_TOOLS = [{ type: "function", function: { name: "get_weather", description: "The current weather in a city.",
  parameters: { type: "object", properties: { city: { type: "string", description: "The city, e.g. Paris", maxLength: 40 } },
    required: ["city"], additionalProperties: false } } }];
// the OpenAI error's `param` (first name) → the field in this tab that shows its message
const TOOLS_FIELDS = { tools: "tools.tools", tool_choice: "tools.tool_choice", parallel_tool_calls: "tools.parallel_tool_calls",
  model: "tools.model", messages: "tools.messages", max_tokens: "tools.max_tokens" };

function fieldError(name, message) {
  const field = document.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  field.classList.add("has-error");
  $(".field-error", field).textContent = message;
}

function setupTools() {
  const models = [...state.info.generators.map((g) => g.name), ...state.info.graphs.map((g) => `graph:${g.name}`)];
  for (const m of models) $("#tools-model").append(el("option", { value: m, text: m }));
  $("#tools-json").value = JSON.stringify(EXAMPLE_TOOLS, null, 2);
  $("#tools-form").onsubmit = sendTools;
}

async function sendTools(event) {
  event.preventDefault();
  clearErrors();
  const out = $("#tools-result");
  out.replaceChildren();
  const body = { model: $("#tools-model").value, messages: [{ role: "user", content: $("#tools-message").value }] };
  const raw = $("#tools-json").value.trim();
  if (raw) {  // checked here, before anything is sent: the server would only say "invalid JSON"
    let tools;
    try { tools = JSON.parse(raw); } catch (exc) { fieldError("tools.tools", `Invalid JSON: ${exc.message}`); return; }
    if (!Array.isArray(tools)) { fieldError("tools.tools", 'Not a JSON array: [{"type": "function", "function": {…}}, …]'); return; }
    Object.assign(body, { tools, tool_choice: $("#tool-choice").value, parallel_tool_calls: $("#tools-parallel").checked });
  }
  if ($("#tools-max-tokens").value !== "") body.max_tokens = Number($("#tools-max-tokens").value);
  $("#tools-send").disabled = true;
  const t0 = performance.now();
  try {
    const r = await fetch("v1/chat/completions", { method: "POST", headers: withKey({ "content-type": "application/json" }),
      body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = answer.error || {};
      const field = TOOLS_FIELDS[String(e.param || "").split(/[.[]/)[0]];
      showError(r.status, { message: e.message || `HTTP ${r.status}`, field, error: e.code }, r.headers.get("retry-after"));
      return;
    }
    const ms = Math.round(performance.now() - t0);
    for (const choice of answer.choices) {
      const m = choice.message, box = el("div", { class: "tool-answer", "data-finish": choice.finish_reason });
      if (m.content) box.append(el("div", { class: "text", text: m.content }));
      for (const call of m.tool_calls || []) {
        let args;
        try { args = JSON.stringify(JSON.parse(call.function.arguments), null, 2); } catch { args = call.function.arguments; }
        box.append(el("div", { class: "tool-call", "data-name": call.function.name },
          el("span", { class: "name", text: call.function.name }), el("span", { class: "id", text: call.id }),
          el("pre", { class: "args", text: args })));
      }
      const n = m.tool_calls?.length || 0;
      box.append(el("div", { class: "meta", text: `finish: ${choice.finish_reason} · ${n} tool call${n === 1 ? "" : "s"} · ` +
        `prompt ${answer.usage.prompt_tokens} tok · completion ${answer.usage.completion_tokens} tok · ${ms} ms` }));
      out.append(box);
    }
  } catch (exc) {
    notice(`Request failed: ${exc.message}`);
  } finally {
    $("#tools-send").disabled = false;
  }
}

function showTab(name) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
  $("#run").hidden = name !== "run";
  $("#chat").hidden = name !== "chat";
  $("#tools").hidden = name !== "tools";
}

async function main() {
  setupKey();
  try {
    [state.info, state.spec] = await Promise.all([getJSON("graph"), getJSON("docs.json")]);
  } catch (exc) {
    if (exc.status === 401) notice("This graph needs an API key (401): enter it above.", "warn");
    else notice(`Cannot load the graph: ${exc.message}`);
    $("#api-key").focus();
    return;
  }
  $("#graph-name").textContent = state.info.name;
  drawGraph(state.info);
  buildForm();
  setupChat();
  setupTools();
  document.querySelectorAll(".tab").forEach((t) => (t.onclick = () => showTab(t.dataset.tab)));
  $("#run-form").addEventListener("submit", run);
  $("#stop-button").addEventListener("click", stop);
  document.body.dataset.ready = "true";
  await pollState();
  setInterval(pollState, state.info.refresh_ms);
}

main();
