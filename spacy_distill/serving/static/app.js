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

function clearResults() {
  document.getElementById("timings").replaceChildren();
  document.getElementById("results-head").replaceChildren();
  document.getElementById("results-body").replaceChildren();
  document.getElementById("results").hidden = true;
}

// Score texts with one model in requests of at most maxTexts texts. A request
// that fails is retried text by text, so an error lands on its own row only.
async function classifyModel(model, texts, maxTexts) {
  const t0 = performance.now();
  const results = new Array(texts.length).fill(null);
  const errors = new Array(texts.length).fill(null);
  let serverMs = 0;
  for (let start = 0; start < texts.length; start += maxTexts) {
    const chunk = texts.slice(start, start + maxTexts);
    try {
      const body = await api("/classify", { method: "POST", body: JSON.stringify({ texts: chunk, model }) });
      body.results.forEach((r, i) => { results[start + i] = r; });
      serverMs += body.elapsed_ms;
    } catch (err) {
      if (chunk.length === 1 || /^401/.test(err.message)) {
        chunk.forEach((_, i) => { errors[start + i] = err.message; });
        continue;
      }
      for (let i = 0; i < chunk.length; i++) {
        try {
          const body = await api("/classify", { method: "POST", body: JSON.stringify({ texts: [chunk[i]], model }) });
          results[start + i] = body.results[0];
          serverMs += body.elapsed_ms;
        } catch (one) {
          errors[start + i] = one.message;
        }
      }
    }
  }
  const failed = errors.filter((e) => e !== null).length;
  return { model, results, errors, failed, serverMs, ms: performance.now() - t0 };
}

async function classifyAll() {
  message.textContent = "";
  const lines = document.getElementById("texts").value
    .split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
  if (lines.length === 0) {
    // Old results would look like answers to the new input.
    clearResults();
    message.textContent = "Type at least one review.";
    return;
  }
  let status;
  try {
    status = await api("/status");
  } catch (err) {
    clearResults();
    message.textContent = "Could not read the models: " + err.message;
    return;
  }
  const limits = status.limits || {};
  const maxChars = limits.max_chars || 10000;
  const maxTexts = limits.max_texts || 128;
  // Reviews over the server's limit are cut (and say so) rather than failing the batch.
  const texts = lines.map((t) => Array.from(t).slice(0, maxChars).join(""));
  const cut = lines.map((t, i) => texts[i].length < t.length);
  const models = Object.keys(status.models);
  const runs = await Promise.all(models.map((model) => classifyModel(model, texts, maxTexts)));

  const timings = document.getElementById("timings");
  timings.replaceChildren();
  for (const run of runs) {
    let text = run.model + ": " + run.serverMs.toFixed(1) + " ms server, " + run.ms.toFixed(1) + " ms total";
    if (lines.length > maxTexts) text += " (" + Math.ceil(lines.length / maxTexts) + " requests)";
    if (run.failed) text += ", " + run.failed + " failed";
    timings.appendChild(cell("span", text, run.failed ? "timing error" : "timing"));
  }
  const cutCount = cut.filter(Boolean).length;
  if (cutCount) {
    message.textContent = cutCount + " review(s) cut to the server's limit of " + maxChars + " characters.";
  }

  const head = document.getElementById("results-head");
  head.replaceChildren(cell("th", "Review"));
  for (const run of runs) head.appendChild(cell("th", run.model));
  const tbody = document.getElementById("results-body");
  tbody.replaceChildren();
  texts.forEach((text, i) => {
    const tr = cell("tr");
    const td = cell("td", text, "text");
    if (cut[i]) {
      td.appendChild(cell("div", "(cut from " + Array.from(lines[i]).length + " to " + maxChars + " characters)", "note"));
    }
    tr.appendChild(td);
    for (const run of runs) {
      tr.appendChild(run.errors[i] !== null ? cell("td", run.errors[i], "error") : scoreCell(run.results[i]));
    }
    tbody.appendChild(tr);
  });
  document.getElementById("results").hidden = false;
}

document.getElementById("classify").addEventListener("click", () => {
  classifyAll().catch((err) => { message.textContent = "Error: " + err.message; });
});
