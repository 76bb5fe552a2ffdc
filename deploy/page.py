'''The page at ``GET /``: pick tags, a seed and a count, press Generate, see the grid.

One self-contained document (inline CSS and JS, no external assets, no build step). It asks
``model`` for the vocabulary and ``generate`` for the grid, relative to where it is served,
so it works under any route prefix. The answering model's name and version come from the
``X-Ganray-Model``/``X-Ganray-Version`` headers of each image.

Tags: each group ``model`` answers (``tag_groups``: tags the training data never has together, such
as hair colours) is a choice of one, "any" first and the default; the other tags (``tag_toggles``) are
checkboxes. The grid is drawn at a whole multiple of its pixels (nearest neighbour) to fill its room.

A click on the grid picks a sample; "keep this face" holds its seed (seed and count are then fixed, one
sample) while the tags change: the server draws the same z with the new tags, and a StyleGAN2 maps it to
its W again with them (W depends on the tags, so the seed is what is kept). "walk" asks ``walk`` for the
loop from that face to a new random seed and back, shown as an animated WebP (``#walk``).

The prompt box (``#prompt-box``) is in the page, hidden: it is shown only when ``model``
says the model takes prompts (``conditioning: "text"``); the text issue wires it up.

A private application (``ganray serve --private``) answers ``model`` and ``generate`` only with its
bearer token: on a 401 or 403 the page shows the token box (``#token-box``), asks for the token once
and keeps it in ``sessionStorage`` (this tab, this session; never in the URL or a cookie), and sends
it as ``Authorization: Bearer`` with every request. The document itself holds no model data.
'''

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ganray generator</title>
<style>
  [hidden] { display: none !important; }
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #faf7f5; color: #222; }
  header { background: #e0607e; color: #fff; padding: 12px 20px; }
  header h1 { margin: 0; font-size: 20px; }
  #model-info { font-size: 13px; opacity: .9; }
  main { display: flex; flex-wrap: wrap; gap: 20px; padding: 20px; }
  form { flex: 0 0 300px; background: #fff; border-radius: 8px; padding: 16px; box-shadow: 0 1px 3px #0002; }
  fieldset { border: 1px solid #ddd; border-radius: 6px; margin: 0 0 12px; }
  #tags label { display: inline-block; margin: 2px 8px 2px 0; white-space: nowrap; }
  #tags .group { border-bottom: 1px dashed #ddd; padding: 2px 0 4px; margin-bottom: 4px; }
  #tags .group-name { display: block; font-size: 12px; font-weight: 600; color: #666; text-transform: uppercase; }
  .row { display: flex; gap: 8px; align-items: center; margin: 8px 0; }
  .row input { width: 110px; }
  textarea { width: 100%; box-sizing: border-box; }
  button { background: #e0607e; color: #fff; border: 0; border-radius: 6px; padding: 8px 16px; font-size: 15px; cursor: pointer; }
  button:disabled { opacity: .5; cursor: wait; }
  #result { flex: 1 1 400px; }
  #grid, #walk { image-rendering: pixelated; max-width: 100%; background: #fff; border-radius: 4px; }
  #grid { cursor: crosshair; }
  #grid-box { position: relative; display: inline-block; }
  #pick { position: absolute; border: 3px solid #e0607e; box-sizing: border-box; pointer-events: none; }
  #picked, #walk-info { font-size: 13px; color: #555; margin: 4px 0 8px; }
  #walk-box { margin: 12px 0 0; }
  #error { color: #b00020; white-space: pre-wrap; }
  #answered { font-size: 13px; color: #555; }
  #token-box { flex: 1 1 100%; background: #fff3cd; border-radius: 8px; padding: 12px 16px; }
  #token-box input { width: 320px; }
</style>
</head>
<body>
<header><h1>ganray generator</h1><div id="model-info">loading the model...</div></header>
<main>
<form id="token-box" onsubmit="return false" hidden>
  <label for="token">This endpoint is private: its token</label>
  <input id="token" type="password" autocomplete="off" placeholder="the content of the token file">
  <button type="button" id="token-save">Use token</button>
  <p id="token-error" role="alert"></p>
</form>
<form id="form" onsubmit="return false">
  <fieldset id="tags-box"><legend>Tags</legend><div id="tags"></div></fieldset>
  <!-- PROMPT BOX: hidden until GET model answers conditioning "text" (the text issue enables it). -->
  <fieldset id="prompt-box" data-role="prompt-box" hidden>
    <legend>Prompt</legend><textarea id="prompt" rows="3" placeholder="describe the picture"></textarea>
  </fieldset>
  <div class="row"><label for="seed">Seed</label><input id="seed" type="number" min="0" value="0">
    <button type="button" id="random-seed" title="a random seed">random</button></div>
  <div class="row"><label for="count">Count</label><input id="count" type="number" min="1" max="64" value="16"></div>
  <div class="row" id="truncation-box" hidden><label for="truncation">Truncation &psi;</label>
    <input id="truncation" type="number" min="-2" max="2" step="0.05" value="1"></div>
  <button type="button" id="generate" disabled>Generate</button>
  <p id="error" role="alert"></p>
  <fieldset id="face-box" hidden><legend>This face</legend>
    <p id="picked"></p>
    <button type="button" id="keep" title="hold this sample's seed while the tags change">keep this face</button>
    <button type="button" id="release" hidden>let it go</button>
    <div class="row"><label for="walk-frames">Frames</label>
      <input id="walk-frames" type="number" min="2" max="240" value="24">
      <button type="button" id="walk-go" title="walk from this face to a new one and back">walk</button></div>
  </fieldset>
</form>
<section id="result">
  <div id="grid-box"><img id="grid" alt="generated samples"><div id="pick" hidden></div></div>
  <p id="answered"></p>
  <figure id="walk-box" hidden><img id="walk" alt="a walk from this face to another and back">
    <figcaption id="walk-info"></figcaption></figure>
</section>
</main>
<script>
"use strict";
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);
const tokenKey = "ganray-token:" + base;
let model = null;
let last = null;  // the grid shown: {seed, n}
let picked = 0;  // the sample of it picked (a click on the grid)
let kept = null;  // the seed of the kept face, or null

function showError(text) { $("error").textContent = text || ""; }

function authHeaders() {
  const token = sessionStorage.getItem(tokenKey);
  return token ? {"Authorization": "Bearer " + token} : {};
}

function askToken(status) {  // 401: no token yet; 403: the one kept was refused
  if (status === 403) sessionStorage.removeItem(tokenKey);
  $("token-error").textContent = status === 403 ? "that token was refused (403): give this endpoint's token" : "";
  $("token-box").hidden = false;
  $("generate").disabled = true;
  $("token").focus();
}

function saveToken() {
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(tokenKey, token);
  $("token").value = "";
  $("token-box").hidden = true;
  loadModel().catch((err) => showError(String(err)));
}

async function loadModel() {
  const r = await fetch(base + "model", {cache: "no-store", headers: authHeaders()});
  if (r.status === 401 || r.status === 403) { askToken(r.status); return; }
  const body = await r.json();
  if (!r.ok) { showError(body.error || ("model: HTTP " + r.status)); setTimeout(loadModel, 2000); return; }
  model = body;
  $("model-info").textContent = model.name + " version " + model.version +
    (model.alias ? " (@" + model.alias + ")" : "") + " \\u00b7 " + model.arch + " \\u00b7 " +
    model.resolution + "\\u00d7" + model.resolution;
  tagControls();
  $("tags-box").hidden = model.vocabulary.length === 0;
  $("prompt-box").hidden = model.conditioning !== "text";
  $("truncation-box").hidden = !model.truncation;
  $("generate").disabled = false;
  showError("");
}

function choice(type, name, value, text, checked) {
  const label = document.createElement("label");
  const input = document.createElement("input");
  input.type = type; input.name = name; input.value = value; input.checked = checked;
  label.append(input, " " + text);
  return label;
}

function tagControls() {  // a group (tags never together in the training data): one of, "any" first
  const tags = $("tags");
  tags.replaceChildren();
  (model.tag_groups || []).forEach((group, i) => {
    const box = document.createElement("div");
    box.className = "group"; box.dataset.group = group.name;
    const title = document.createElement("span");
    title.className = "group-name"; title.textContent = group.name;
    box.append(title, choice("radio", "group-" + i, "", "any", true));
    for (const tag of group.tags) box.append(choice("radio", "group-" + i, tag, tag, false));
    tags.append(box);
  });
  for (const tag of (model.tag_toggles || model.vocabulary)) tags.append(choice("checkbox", "tag", tag, tag, false));
}

function chosenTags() {
  return [...document.querySelectorAll("#tags input:checked")].map((b) => b.value).filter((v) => v);
}

function showImage(img, blob, then) {  // drawn at a whole multiple of its pixels (nearest neighbour), to fit
  const old = img.src;
  img.onload = () => {
    const room = Math.max(document.getElementById("result").clientWidth, 256);
    const scale = Math.max(1, Math.min(Math.floor(160 / model.resolution), Math.floor(room / img.naturalWidth)));
    img.style.width = (img.naturalWidth * scale) + "px";
    img.dataset.scale = scale;
    if (then) then();
  };
  img.src = URL.createObjectURL(blob);
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

function conditionOf(request) {  // the form's tags (or prompt) and truncation, into a request body
  const tags = chosenTags();
  if (tags.length) request.tags = tags;
  if (!$("prompt-box").hidden && $("prompt").value.trim()) request.prompt = $("prompt").value.trim();
  if (model && model.truncation) request.truncation = parseFloat($("truncation").value);
  return tags;
}

async function post(route, request) {  // the answer, or null when the token box is shown instead
  const r = await fetch(base + route, {method: "POST", body: JSON.stringify(request),
                                       headers: {"Content-Type": "application/json", ...authHeaders()}});
  if (r.status === 401 || r.status === 403) { askToken(r.status); return null; }
  if (!r.ok) { const body = await r.json().catch(() => ({})); showError(body.error || ("HTTP " + r.status)); return null; }
  return r;
}

const columns = (n) => Math.ceil(Math.sqrt(n));  // as trainers.grid.make_grid lays the grid out (pad 2)
const faceSeed = () => kept !== null ? kept : last.seed + picked;

function pickAt(event) {
  if (!last || kept !== null) return;
  const img = $("grid"), scale = img.clientWidth / img.naturalWidth, cell = model.resolution + 2;
  const col = Math.floor((event.offsetX / scale - 2) / cell), row = Math.floor((event.offsetY / scale - 2) / cell);
  if (col < 0 || row < 0 || col >= columns(last.n) || row * columns(last.n) + col >= last.n) return;
  picked = row * columns(last.n) + col;
  showPick();
}

function showPick() {
  const img = $("grid"), pick = $("pick"), scale = img.clientWidth / img.naturalWidth;
  const cell = model.resolution + 2, row = Math.floor(picked / columns(last.n)), col = picked % columns(last.n);
  pick.style.left = ((2 + col * cell) * scale - 3) + "px";
  pick.style.top = ((2 + row * cell) * scale - 3) + "px";
  pick.style.width = pick.style.height = (model.resolution * scale + 6) + "px";
  pick.hidden = kept !== null || last.n === 1;
  $("face-box").hidden = false;
  $("picked").dataset.seed = faceSeed();
  $("picked").textContent = kept !== null ? "keeping the face of seed " + kept + ": change the tags and Generate"
    : "sample " + (picked + 1) + " (seed " + faceSeed() + ")" + (last.n > 1 ? ": click another to pick it" : "");
}

function keep() {  // the seed is held; the server draws it again with the new tags (its W too, for StyleGAN2)
  kept = faceSeed();
  $("seed").value = kept; $("count").value = 1;
  $("seed").disabled = $("count").disabled = $("random-seed").disabled = true;
  $("keep").hidden = true; $("release").hidden = false;
  showPick();
}

function release() {
  kept = null;
  $("seed").disabled = $("count").disabled = $("random-seed").disabled = false;
  $("keep").hidden = false; $("release").hidden = true;
  showPick();
}

async function walk() {  // from this face to a new one and back, as an animated WebP
  const from = faceSeed(), to = (from + 1 + Math.floor(Math.random() * 1e9)) % 1e12;
  const request = {seeds: [from, to], frames: parseInt($("walk-frames").value, 10) || 24};
  const tags = conditionOf(request);
  $("walk-go").disabled = true;
  showError("");
  try {
    const r = await post("walk?format=webp", request);
    if (!r) return;
    const space = r.headers.get("X-Ganray-Walk-Space");
    showImage($("walk"), await r.blob(), () => { $("walk-box").hidden = false; });
    $("walk-info").textContent = "walk seed " + from + " \u2192 " + to + " \u2192 " + from + " \u00b7 " +
      r.headers.get("X-Ganray-Frames") + " frames in " + (space === "w" ? "W" : "z") +
      (tags.length ? " \u00b7 " + tags.join(", ") : "");
    Object.assign($("walk").dataset, {seeds: from + "," + to, frames: r.headers.get("X-Ganray-Frames"), space});
  } catch (err) {
    showError(String(err));
  } finally {
    $("walk-go").disabled = false;
  }
}

async function generate() {
  const request = {seed: parseInt($("seed").value, 10) || 0, n: parseInt($("count").value, 10) || 1};
  const tags = conditionOf(request);
  $("generate").disabled = true;
  showError("");
  try {
    const r = await post("generate", request);
    if (!r) return;
    last = {seed: request.seed, n: request.n};
    picked = 0;
    showImage($("grid"), await r.blob(), showPick);
    $("answered").textContent = "answered by " + r.headers.get("X-Ganray-Model") + " version " +
      r.headers.get("X-Ganray-Version") + " \\u00b7 seed " + request.seed + " \\u00b7 " + request.n + " samples" +
      (tags.length ? " \\u00b7 " + tags.join(", ") : "");
    $("answered").dataset.version = r.headers.get("X-Ganray-Version");
  } catch (err) {
    showError(String(err));
  } finally {
    $("generate").disabled = !$("token-box").hidden;
  }
}

$("generate").addEventListener("click", generate);
$("grid").addEventListener("click", pickAt);
$("keep").addEventListener("click", keep);
$("release").addEventListener("click", release);
$("walk-go").addEventListener("click", walk);
$("token-save").addEventListener("click", saveToken);
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") saveToken(); });
$("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e9); });
loadModel().catch((err) => { showError(String(err)); setTimeout(loadModel, 2000); });
</script>
</body>
</html>
"""
