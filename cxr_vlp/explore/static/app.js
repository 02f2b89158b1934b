// cxr_vlp explorer page: talks to the local JSON API (live) or reads the answers embedded by the static export.
"use strict";

const EMBEDDED = document.getElementById("explorer-data");
const STATIC = EMBEDDED ? JSON.parse(EMBEDDED.textContent) : null;
const state = { info: null, query: null };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function fmt(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

// ------------------------------------------------------------------ the API, live or from the export
async function api(path, body) {
  if (STATIC) return fromExport(path, body);
  const options = body === undefined ? {} : {
    method: "POST", body: body instanceof Blob ? body : JSON.stringify(body),
    headers: body instanceof Blob ? { "Content-Type": body.type || "application/octet-stream",
                                      "X-File-Name": body.name || "upload" }
                                  : { "Content-Type": "application/json" },
  };
  const response = await fetch(path, options);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || response.statusText);
  return payload;
}

function fromExport(path, body) {
  const missing = (what) => { throw new Error(what + " is not part of this static export"); };
  if (path === "/api/info") return STATIC.info;
  if (path.startsWith("/api/studies")) return STATIC.studies;
  if (path === "/api/query/image") return STATIC.image[String(body.index)] || missing("this study");
  if (path === "/api/explain") {
    const answer = (STATIC.explain[String(body.index)] || {})[body.target];
    return answer || missing("Grad-CAM for '" + body.target + "'");
  }
  if (path === "/api/query/text") return STATIC.text[body.text] || missing("the query '" + body.text + "'");
  return missing(path);
}

// ------------------------------------------------------------------ header and tabs
function showInfo(info) {
  const parts = [info.model, info.dataset + " / " + info.split + " split, " + info.studies + " studies"];
  if (info.probabilistic) parts.push("probabilistic head: uncertainty shown");
  if (info.concepts) parts.push("concept head: concepts shown");
  if (STATIC) parts.push("static export of example queries");
  $("model-info").textContent = parts.join(" · ");
  $("model-info").dataset.studies = info.studies;
  for (const label of info.labels) $("cam-label").append(el("option", { value: label, text: label }));
  if (STATIC) {
    $("uploader").hidden = true;
    $("cam-prompt").hidden = true;
    const examples = Object.keys(STATIC.text);
    for (const text of examples) $("text-examples").append(el("option", { value: text }));
    if (examples.length) $("text-input").value = examples[0];
  }
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll(".tab")) {
      other.classList.toggle("active", other === tab);
      $(other.dataset.tab).hidden = other !== tab;
    }
  });
}

// ------------------------------------------------------------------ study picker
let searchTimer = null;
async function loadStudies() {
  const q = encodeURIComponent($("study-search").value || "");
  const page = await api("/api/studies?offset=0&limit=200&q=" + q);
  const select = $("study-select");
  select.replaceChildren();
  for (const s of page.studies) {
    select.append(el("option", { value: s.index, text: s.study_id + " — " + s.report }));
  }
  if (page.studies.length) select.selectedIndex = 0;
}
$("study-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadStudies().catch(showImageError), 200);
});

function showImageError(err) { $("image-status").textContent = "Error: " + err.message; }
function showTextError(err) { $("text-status").textContent = "Error: " + err.message; }

// ------------------------------------------------------------------ image query
async function imageQuery(source) {
  $("image-status").textContent = "querying…";
  const result = await api("/api/query/image", source);
  state.query = source;
  renderImageResult(result);
  $("image-status").textContent = "";
  const best = result.zero_shot.reduce((a, b) => (b.prob > a.prob ? b : a));
  $("cam-label").value = best.label;
  await explain(best.label);
}

$("run-image").addEventListener("click", () => {
  const value = $("study-select").value;
  if (value === "") return;
  imageQuery({ index: Number(value) }).catch(showImageError);
});
$("study-select").addEventListener("dblclick", () => $("run-image").click());

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  try {
    $("image-status").textContent = "uploading…";
    const up = await api("/api/upload", file);
    await imageQuery({ upload: up.upload });
  } catch (err) { showImageError(err); }
});

function renderImageResult(r) {
  $("image-result").hidden = false;
  $("image-result").dataset.query = r.query.index !== null ? "index:" + r.query.index : "upload:" + r.query.upload;
  const img = $("query-image");
  if (r.query.image_url) { img.src = r.query.image_url; img.hidden = false; } else img.hidden = true;
  $("query-name").textContent = r.query.study_id ? "study " + r.query.study_id : "uploaded image";

  const probs = $("probs");
  probs.replaceChildren();
  const truth = {};
  if (r.truth) for (const t of r.truth.labels) truth[t.label] = t.state;
  for (const z of r.zero_shot) {
    const fill = el("div", { class: "fill" + (z.positive ? " over" : "") });
    fill.style.width = (100 * z.prob).toFixed(2) + "%";
    const bar = el("div", { class: "bar" }, fill);
    if (z.threshold !== null) {
      const tick = el("div", { class: "thr", title: "threshold " + fmt(z.threshold) });
      tick.style.left = (100 * z.threshold).toFixed(2) + "%";
      bar.append(tick);
    }
    const mark = truth[z.label] === "positive" ? "●" : truth[z.label] === "uncertain" ? "◐" : "";
    probs.append(el("div", { class: "prob-row", "data-label": z.label, "data-prob": z.prob,
                             "data-threshold": z.threshold === null ? "" : z.threshold },
      el("span", { class: "label", text: z.label }), bar,
      el("span", { class: "value", text: fmt(z.prob) }),
      el("span", { class: "thr-value", text: z.threshold === null ? "" : "≥ " + fmt(z.threshold) }),
      el("span", { class: "truth-mark", title: truth[z.label] || "", text: mark })));
  }

  const list = $("retrieved");
  list.replaceChildren();
  for (const item of r.retrieved) {
    const li = el("li", { class: "retrieved" + (item.true ? " true-report" : ""), "data-rank": item.rank,
                          "data-score": item.score, "data-study": item.study_id },
      el("span", { class: "score", text: fmt(item.score) }),
      el("span", { class: "text", text: item.text }));
    if (item.true) li.append(el("span", { class: "badge", text: "true report" }));
    list.append(li);
  }
  $("true-rank").textContent = r.true_rank === null ? "" : "rank of the study's own report: " + fmt(r.true_rank, 1);

  const unc = $("uncertainty");
  unc.hidden = !r.uncertainty;
  if (r.uncertainty) {
    unc.replaceChildren(el("p", { class: "uncertainty", "data-value": r.uncertainty.value,
                                  "data-decile": r.uncertainty.decile,
      text: "uncertainty Σσ² = " + fmt(r.uncertainty.value, 4) + " (decile " + r.uncertainty.decile +
            " of 10 in the split; median " + fmt(r.uncertainty.split_median, 4) + ")" }));
  }

  const t = $("truth");
  t.hidden = !r.truth;
  if (r.truth) {
    const chips = $("truth-labels");
    chips.replaceChildren();
    for (const l of r.truth.labels) {
      if (l.state === "unknown" || l.state === "negative") continue;
      chips.append(el("li", { class: "chip " + l.state, "data-label": l.label, text: l.label +
                              (l.state === "uncertain" ? " (uncertain)" : "") }));
    }
    if (!chips.children.length) chips.append(el("li", { class: "chip", text: "no positive label" }));
    const sections = [];
    if (r.truth.findings) sections.push("FINDINGS: " + r.truth.findings);
    if (r.truth.impression) sections.push("IMPRESSION: " + r.truth.impression);
    $("truth-report").textContent = sections.length ? sections.join("\n") : r.truth.report;
  }

  const c = $("concepts");
  c.hidden = !r.concepts;
  if (r.concepts) {
    const top = $("concept-top");
    top.replaceChildren();
    for (const x of r.concepts.top) {
      top.append(el("tr", { class: "concept", "data-score": x.score },
        el("td", { text: x.concept }), el("td", { text: fmt(x.score) })));
    }
    const contrib = $("concept-contrib");
    contrib.replaceChildren();
    $("contrib-title").textContent = r.concepts.label
      ? "Contributions W·z to the " + r.concepts.label + " logit (concept bottleneck)" : "";
    for (const x of r.concepts.contributions) {
      contrib.append(el("tr", { class: "contribution", "data-value": x.contribution },
        el("td", { text: x.concept }), el("td", { text: fmt(x.contribution) })));
    }
  }
}

// ------------------------------------------------------------------ Grad-CAM
async function explain(target) {
  if (!state.query) return;
  $("cam-info").textContent = "computing Grad-CAM…";
  try {
    const cam = await api("/api/explain", { ...state.query, target });
    const img = $("cam-overlay");
    img.src = cam.overlay;
    img.hidden = false;
    img.dataset.target = cam.target;
    img.dataset.heatMax = cam.heat_max;
    img.dataset.heatMean = cam.heat_mean;
    $("cam-info").textContent = "target: " + cam.target + " · heat max " + fmt(cam.heat_max) + ", mean " +
      fmt(cam.heat_mean);
  } catch (err) { $("cam-info").textContent = "Error: " + err.message; }
}
$("run-cam").addEventListener("click", () => explain(($("cam-prompt").value || "").trim() || $("cam-label").value));
$("cam-label").addEventListener("change", () => { $("cam-prompt").value = ""; explain($("cam-label").value); });

// ------------------------------------------------------------------ text query
function renderTextResults(container, r, title) {
  container.replaceChildren(el("h2", { text: title + ": “" + r.text + "”" }));
  container.dataset.text = r.text;
  const grid = el("div", { class: "grid" });
  for (const item of r.results) {
    const card = el("figure", { class: "hit", "data-rank": item.rank, "data-score": item.score,
                                "data-study": item.study_id, "data-index": item.index });
    if (item.image_url) card.append(el("img", { src: item.image_url, alt: "study " + item.study_id }));
    card.append(el("figcaption", {},
      el("span", { class: "score", text: "#" + item.rank + " · " + fmt(item.score) }),
      el("span", { class: "study", text: item.study_id }),
      el("span", { class: "report", text: item.report })));
    grid.append(card);
  }
  container.append(grid);
}

async function textQuery(text, container, title) {
  $("text-status").textContent = "searching…";
  const r = await api("/api/query/text", { text });
  renderTextResults(container, r, title);
  $("text-status").textContent = "";
  return r;
}

$("run-text").addEventListener("click", async () => {
  const text = ($("text-input").value || "").trim();
  if (!text) return;
  try {
    const r = await textQuery(text, $("text-results"), "Query");
    $("negated-results").replaceChildren();
    const button = $("run-negated");
    button.disabled = false;
    button.dataset.text = r.negated;
    button.textContent = "“" + r.negated + "”";
  } catch (err) { showTextError(err); }
});
$("text-input").addEventListener("keydown", (e) => { if (e.key === "Enter") $("run-text").click(); });
$("run-negated").addEventListener("click", () => {
  textQuery($("run-negated").dataset.text, $("negated-results"), "Negated").catch(showTextError);
});

// ------------------------------------------------------------------ start
(async () => {
  try {
    state.info = await api("/api/info");
    showInfo(state.info);
    await loadStudies();
    document.body.dataset.ready = "true";
  } catch (err) { $("model-info").textContent = "Error: " + err.message; }
})();
