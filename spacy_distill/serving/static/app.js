// Demo page: classify each line with every loaded model and show the scores
// side by side. Plain JS, no build step.
"use strict";

const authRequired = document.body.dataset.authRequired === "true";
const tokenRow = document.getElementById("token-row");
const tokenInput = document.getElementById("token");
const message = document.getElementById("message");
if (authRequired) tokenRow.hidden = false;

function headers() {
  const h = { "Content-Type": "application/json" };
  if (tokenInput.value) h["Authorization"] = "Bearer " + tokenInput.value;
  return h;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: headers() }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(response.status + ": " + detail);
  }
  return body;
}

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function scoreCell(result) {
  const td = cell("td");
  if (!result || result.label === null) { td.textContent = "-"; return td; }
  td.appendChild(cell("div", result.label + " " + result.score.toFixed(3), "top"));
  const bar = cell("div", undefined, "bar");
  const fill = cell("div");
  fill.style.width = Math.round(100 * Math.max(0, Math.min(1, result.score))) + "%";
  bar.appendChild(fill);
  td.appendChild(bar);
  const others = Object.entries(result.cats)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => k + " " + v.toFixed(2))
    .join(" · ");
  td.appendChild(cell("div", others, "cats"));
  return td;
}

async function classifyAll() {
  message.textContent = "";
  const texts = document.getElementById("texts").value
    .split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
  if (texts.length === 0) { message.textContent = "Type at least one review."; return; }
  let status;
  try {
    status = await api("/status");
  } catch (err) {
    message.textContent = "Could not read the models: " + err.message;
    return;
  }
  const models = Object.keys(status.models);
  const runs = await Promise.all(models.map(async (model) => {
    const t0 = performance.now();
    try {
      const body = await api("/classify", { method: "POST", body: JSON.stringify({ texts, model }) });
      return { model, body, ms: performance.now() - t0 };
    } catch (err) {
      return { model, error: err.message, ms: performance.now() - t0 };
    }
  }));

  const timings = document.getElementById("timings");
  timings.replaceChildren();
  for (const run of runs) {
    const text = run.error
      ? run.model + ": " + run.error
      : run.model + ": " + run.body.elapsed_ms.toFixed(1) + " ms server, " + run.ms.toFixed(1) + " ms total";
    timings.appendChild(cell("span", text, run.error ? "timing error" : "timing"));
  }

  const head = document.getElementById("results-head");
  head.replaceChildren(cell("th", "Review"));
  for (const run of runs) head.appendChild(cell("th", run.model));
  const tbody = document.getElementById("results-body");
  tbody.replaceChildren();
  texts.forEach((text, i) => {
    const tr = cell("tr");
    tr.appendChild(cell("td", text, "text"));
    for (const run of runs) tr.appendChild(scoreCell(run.body ? run.body.results[i] : null));
    tbody.appendChild(tr);
  });
  document.getElementById("results").hidden = false;
}

document.getElementById("classify").addEventListener("click", () => {
  classifyAll().catch((err) => { message.textContent = "Error: " + err.message; });
});
