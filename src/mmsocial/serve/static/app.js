// mmsocial page: plain DOM, talks to the JSON API of the same app.
"use strict";
const $ = (id) => document.getElementById(id);
let state = { q: "", offset: 0, k: 24, mode: "text", file: null };

function esc(s) { return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])); }

async function api(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = { detail: r.statusText }; }
  if (!r.ok) { const d = body && body.detail; throw new Error(typeof d === "string" ? d : JSON.stringify(d)); }
  return body;
}

function card(hit) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.postId = hit.post_id;
  div.innerHTML = `<img loading="lazy" src="${esc(hit.image_url)}" alt="${esc(hit.post_id)}">
    <div class="caption">${esc(hit.text || hit.tags.join(", "))}</div>
    <div class="author">${esc(hit.user_name || hit.user_id || "")}<span class="score">${hit.score.toFixed(3)}</span></div>`;
  div.addEventListener("click", () => { document.querySelectorAll(".card.selected").forEach((c) => c.classList.remove("selected")); div.classList.add("selected"); showDetail(hit); });
  return div;
}

function showPage(page, append) {
  if (!append) $("grid").innerHTML = "";
  page.results.forEach((h) => $("grid").appendChild(card(h)));
  const q = page.query || {};
  const used = q.words ? ` (words: ${q.words.join(", ")}${q.unknown_words && q.unknown_words.length ? "; not in the vocabulary: " + q.unknown_words.join(", ") : ""})` : "";
  $("status").textContent = `${page.system.toUpperCase()}: ${page.offset + page.results.length} of ${page.total} images${used}`;
  $("more").hidden = page.next_offset === null;
  state.offset = page.next_offset;
}

async function runSearch(append) {
  const url = `/api/search/images?q=${encodeURIComponent(state.q)}&k=${state.k}&offset=${append ? state.offset : 0}`;
  try { showPage(await api(url), append); } catch (e) { $("status").textContent = e.message; $("grid").innerHTML = ""; $("more").hidden = true; }
}

async function runUpload(append) {
  const fd = new FormData();
  fd.append("file", state.file);
  try { showPage(await api(`/api/images/similar?k=${state.k}&offset=${append ? state.offset : 0}`, { method: "POST", body: fd }), append); }
  catch (e) { $("status").textContent = e.message; }
}

function drawHeat(weights) {
  const cv = $("heat-canvas"), ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  if (!weights) return;
  const rows = weights.length, cols = weights[0].length;
  const max = Math.max(...weights.flat()), min = Math.min(...weights.flat());
  const cw = cv.width / cols, ch = cv.height / rows;
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    const t = max > min ? (weights[i][j] - min) / (max - min) : 0.5;
    ctx.fillStyle = `rgba(${Math.round(255 * t)}, ${Math.round(80 * (1 - t))}, ${Math.round(255 * (1 - t))}, ${0.15 + 0.45 * t})`;
    ctx.fillRect(j * cw, i * ch, cw, ch);
  }
}

async function showDetail(hit) {
  $("detail").hidden = false;
  $("detail-title").textContent = `${hit.post_id} by ${hit.user_name || hit.user_id || "?"}`;
  $("heat-img").src = hit.image_url || "";
  $("detail-text").textContent = hit.text || "";
  drawHeat(null);
  $("heat-word").textContent = "";
  const q = state.mode === "text" ? state.q : "";
  api(`/api/posts/${encodeURIComponent(hit.post_id)}/explain?q=${encodeURIComponent(q)}`).then((ex) => {
    drawHeat(ex.weights);
    $("heat-word").innerHTML = `attention of <b>${esc(ex.word)}</b> over the ${ex.grid[0]}&times;${ex.grid[1]} regions`;
    $("heat").dataset.word = ex.word;
  }).catch((e) => { $("heat-word").innerHTML = `<span class="note">${esc(e.message)}</span>`; });
  api(`/api/posts/${encodeURIComponent(hit.post_id)}/texts?k=8`).then((p) => {
    $("detail-texts").innerHTML = p.results.map((t) => `<span>${esc(t.text)}</span>`).join("");
  }).catch((e) => { $("detail-texts").innerHTML = `<span class="note">${esc(e.message)}</span>`; });
  api(`/api/posts/${encodeURIComponent(hit.post_id)}/users?k=5`).then((p) => {
    $("detail-users").innerHTML = p.results.map((u) => `<div>${esc(u.name || u.user_id)} <span class="score">${u.score.toFixed(3)}</span></div>`).join("");
  }).catch((e) => { $("detail-users").innerHTML = `<span class="note">${esc(e.message)}</span>`; });
  api(`/api/posts/${encodeURIComponent(hit.post_id)}/similar?k=6`).then((p) => {
    $("detail-similar").innerHTML = "";
    p.results.forEach((h) => $("detail-similar").appendChild(card(h)));
  }).catch((e) => { $("detail-similar").innerHTML = `<span class="note">${esc(e.message)}</span>`; });
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.q = $("q").value.trim(); state.mode = "text";
  if (!state.q) { $("status").textContent = "Type at least one word."; return; }
  runSearch(false);
});
$("upload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.file = $("upload").files[0]; state.mode = "upload";
  if (!state.file) { $("status").textContent = "Choose an image file first."; return; }
  runUpload(false);
});
$("popularity-button").addEventListener("click", async () => {
  const f = $("upload").files[0];
  if (!f) { $("status").textContent = "Choose an image file first."; return; }
  const fd = new FormData(); fd.append("file", f); fd.append("text", $("q").value.trim());  // the search box is the post's text
  try { const r = await api("/api/popularity", { method: "POST", body: fd }); $("status").textContent = `popularity: ${JSON.stringify(r)}`; }
  catch (e) { $("status").textContent = e.message; }
});
$("more").addEventListener("click", () => (state.mode === "text" ? runSearch(true) : runUpload(true)));
api("/api/runs").then((runs) => { $("runs").textContent = runs.map((r) => `${r.name}: ${r.capabilities.join(", ")}`).join(" | "); });
