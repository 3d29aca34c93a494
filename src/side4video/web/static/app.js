// The side4video serve page: plain DOM, no framework. Every slow operation is a job polled for progress.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

async function api(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

const postJSON = (url, data) =>
  api(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

// Poll a job until it ends; ``show(job)`` is called with every state seen. Resolves to the job's result.
async function follow(jobId, show) {
  for (;;) {
    const job = await api(`/api/jobs/${jobId}`);
    show(job);
    if (job.state === "done") return job.result;
    if (job.state === "error") throw new Error(job.error);
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
}

function showProgress(target, job) {
  target.replaceChildren();
  if (job.state === "done") return;
  const text = job.state === "queued" ? "waiting for the previous job" : job.message;
  target.append(el("span", { text }));
  if (job.total > 0) target.append(el("progress", { max: job.total, value: job.done }));
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

function describe(info) {
  const parts = [`${info.task === "retrieval" ? "Search" : "Classify"}: ${info.preset}`, `backbone ${info.backbone}`,
    `${info.frames} frames at ${info.image_size} px`];
  if (info.classes !== null) parts.push(`${info.classes} classes`);
  parts.push(`${info.source} ${info.checkpoint}`);
  return el("div", { class: "model", "data-task": info.task, text: parts.join(" · ") });
}

function showUnreadable(errors) {
  const names = Object.keys(errors);
  const box = $("unreadable");
  box.hidden = names.length === 0;
  box.querySelector("summary").textContent = `${names.length} unreadable video(s) in the folder`;
  box.querySelector("ul").replaceChildren(...names.map((n) => el("li", { text: `${n}: ${errors[n]}` })));
}

// ---- search ----------------------------------------------------------------------------------------

async function runSearch(event) {
  event.preventDefault();
  const button = $("search-button");
  button.disabled = true;
  showError($("search-error"), "");
  $("search-results").replaceChildren();
  try {
    const { job } = await postJSON("/api/search", { query: $("query").value });
    const result = await follow(job, (j) => showProgress($("search-status"), j));
    $("search-results").replaceChildren(...result.results.map((hit) => el("li", { class: "hit" },
      hit.strip ? el("img", { class: "strip", src: hit.strip, alt: `frames of ${hit.name}` }) : "",
      el("div", { class: "meta" },
        el("span", { class: "score", text: hit.score.toFixed(3) }),
        el("span", { class: "name", text: hit.name }),
        el("a", { class: "play", href: hit.video, target: "_blank", text: "play" })))));
    if (result.results.length === 0) showError($("search-error"), "No readable video in the folder.");
    showUnreadable(result.errors);
  } catch (e) {
    showError($("search-error"), e.message);
  } finally {
    $("search-status").replaceChildren();
    button.disabled = false;
  }
}

async function watchIndexing(jobId) {
  try {
    const result = await follow(jobId, (j) => showProgress($("index-status"), j));
    $("index-status").textContent = `${result.videos} videos indexed`;
    showUnreadable(result.errors);
  } catch (e) {
    $("index-status").textContent = `indexing failed: ${e.message}`;
  }
}

// ---- classify --------------------------------------------------------------------------------------

async function classify(start, button) {
  button.disabled = true;
  showError($("classify-error"), "");
  $("classify-result").hidden = true;
  try {
    const { job } = await start();
    const result = await follow(job, (j) => showProgress($("classify-status"), j));
    $("classify-name").textContent = result.name;
    $("classify-strip").src = result.strip;
    $("classify-top").replaceChildren(...result.top.map((c) => {
      const percent = (100 * c.prob).toFixed(1);
      return el("li", { class: "bar-row" },
        el("span", { class: "label", text: c.name }),
        el("span", { class: "bar" }, el("span", { class: "fill", style: `width: ${percent}%` })),
        el("span", { class: "prob", text: `${percent} %` }));
    }));
    $("classify-result").hidden = false;
  } catch (e) {
    showError($("classify-error"), e.message);
  } finally {
    $("classify-status").replaceChildren();
    button.disabled = false;
  }
}

function classifyPicked(event) {
  event.preventDefault();
  const video = $("video-select").value;
  if (video) classify(() => postJSON("/api/classify", { video }), $("classify-button"));
}

function classifyUpload(event, maxMB) {
  event.preventDefault();
  const file = $("upload").files[0];
  if (!file) return showError($("classify-error"), "Choose a file first.");
  if (file.size > maxMB * 1024 * 1024) {
    return showError($("classify-error"), `${file.name} is larger than the upload limit of ${maxMB} MB`);
  }
  const url = `/api/upload?name=${encodeURIComponent(file.name)}`;
  classify(() => api(url, { method: "POST", body: file }), $("upload-button"));
}

async function loadVideos() {
  const { videos } = await api("/api/videos");
  $("video-select").replaceChildren(...videos.map((v) => el("option", { value: v, text: v })));
  $("pick-form").hidden = videos.length === 0;
}

// ---- page ------------------------------------------------------------------------------------------

function showTab() {
  const available = ["search", "classify"].filter((t) => !$(`tab-${t}`).hidden);
  const wanted = location.hash.slice(1);
  const current = available.includes(wanted) ? wanted : available[0];
  for (const t of available) {
    $(t).hidden = t !== current;
    $(`tab-${t}`).classList.toggle("active", t === current);
  }
}

async function init() {
  const info = await api("/api/info");
  $("models").replaceChildren(...Object.values(info.models).map(describe));
  if (info.models.retrieval) {
    $("tab-search").hidden = false;
    $("search-form").addEventListener("submit", runSearch);
    if (info.index_job) watchIndexing(info.index_job);
  }
  if (info.models.recognition) {
    $("tab-classify").hidden = false;
    $("pick-form").addEventListener("submit", classifyPicked);
    $("upload-form").addEventListener("submit", (e) => classifyUpload(e, info.max_upload_mb));
    loadVideos();
  }
  window.addEventListener("hashchange", showTab);
  showTab();
  document.body.dataset.ready = "true";
}

init().catch((e) => {
  document.querySelector("main").replaceChildren(el("div", { class: "error", text: `cannot reach the server: ${e.message}` }));
});
