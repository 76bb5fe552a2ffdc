'''The page at ``GET /``: pick tags, a seed and a count, press Generate, see the grid.

One self-contained document (inline CSS and JS, no external assets, no build step). It asks
``model`` for the vocabulary and ``generate`` for the grid, relative to where it is served,
so it works under any route prefix. The answering model's name and version come from the
``X-Ganray-Model``/``X-Ganray-Version`` headers of each image.

Tags: each group ``model`` answers (``tag_groups``: tags the training data never has together, such
as hair colours) is a choice of one, "any" first and the default; the other tags (``tag_toggles``) are
checkboxes. The grid is drawn at a whole multiple of its pixels (nearest neighbour) to fill its room.

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
  #grid { image-rendering: pixelated; image-rendering: crisp-edges; max-width: 100%; background: #fff;
          border-radius: 4px; }
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
</form>
<section id="result">
  <img id="grid" alt="generated samples">
  <p id="answered"></p>
</section>
</main>
<script>
"use strict";
const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);
const tokenKey = "ganray-token:" + base;
let model = null;

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

function showImage(img, blob) {  // drawn at a whole multiple of its pixels (nearest neighbour), to fit
  const old = img.src;
  img.onload = () => {
    const room = Math.max(img.parentElement.clientWidth, 256);
    const scale = Math.max(1, Math.min(Math.floor(160 / model.resolution), Math.floor(room / img.naturalWidth)));
    img.style.width = (img.naturalWidth * scale) + "px";
    img.dataset.scale = scale;
  };
  img.src = URL.createObjectURL(blob);
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
}

async function generate() {
  const request = {seed: parseInt($("seed").value, 10) || 0, n: parseInt($("count").value, 10) || 1};
  const tags = chosenTags();
  if (tags.length) request.tags = tags;
  if (!$("prompt-box").hidden && $("prompt").value.trim()) request.prompt = $("prompt").value.trim();
  if (model && model.truncation) request.truncation = parseFloat($("truncation").value);
  $("generate").disabled = true;
  showError("");
  try {
    const r = await fetch(base + "generate", {method: "POST", body: JSON.stringify(request),
                                             headers: {"Content-Type": "application/json", ...authHeaders()}});
    if (r.status === 401 || r.status === 403) { askToken(r.status); return; }
    if (!r.ok) { const body = await r.json().catch(() => ({})); showError(body.error || ("HTTP " + r.status)); return; }
    showImage($("grid"), await r.blob());
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
$("token-save").addEventListener("click", saveToken);
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") saveToken(); });
$("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e9); });
loadModel().catch((err) => { showError(String(err)); setTimeout(loadModel, 2000); });
</script>
</body>
</html>
"""
