// The edgemed page: plain JavaScript, no build step, nothing fetched from elsewhere.
// Every request goes to this same service; errors are shown as their code and message.
"use strict";

const $ = (id) => document.getElementById(id);
let card = null;

function headers() {
  const token = $("token").value.trim();
  sessionStorage.setItem("edgemed-token", token);
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(code, message) {
  $("error-code").textContent = code;
  $("error-message").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "Failed: " + code;
}

function clearError() {
  $("error").hidden = true;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return [body.error.code, body.error.message];
  } catch (e) { /* not JSON: fall through */ }
  return ["HTTP_" + response.status, response.statusText || "request failed"];
}

function number(value, digits) {
  return Number(value).toLocaleString("en-US", {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

async function loadCard() {
  const response = await fetch("/v1/model", { headers: headers() });
  if (!response.ok) {
    const [code, message] = await errorOf(response);
    if (code === "SERVICE_WARMING_UP") setTimeout(loadCard, 1000);
    showError(code, message);
    return;
  }
  card = await response.json();
  clearError();
  $("card-name").textContent = card.name;
  $("card-version").textContent = card.version;
  $("card-task").textContent = card.task;
  $("card-precision").textContent = card.precision;
  $("card-backend").textContent = card.backend + " " + card.backend_version;
  $("card-device").textContent = card.device;
  $("card-use").textContent = card.intended_use;
  $("card-description").textContent = card.description;
}

function showLabels(labels) {
  const body = $("labels").querySelector("tbody");
  body.replaceChildren();
  const names = card ? card.labels : [];
  for (const [name, entry] of Object.entries(labels)) {
    const row = document.createElement("tr");
    row.dataset.label = name;
    const th = document.createElement("th");
    th.scope = "row";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const index = names.indexOf(name);
    if (card && index >= 0 && card.colors[index]) {
      swatch.style.background = "rgb(" + card.colors[index].join(",") + ")";
    }
    if (index === 0) swatch.style.background = "transparent";
    th.append(swatch, name);
    row.appendChild(th);
    let size;
    if ("area_mm2" in entry) size = number(entry.area_mm2, 1) + " mm²";
    else if ("volume_mm3" in entry) size = number(entry.volume_mm3, 1) + " mm³";
    else size = "spacing unknown";
    cell(row, size, "num size");
    cell(row, number(entry.pixels, 0), "num pixels");
    body.appendChild(row);
  }
  $("labels").hidden = false;
}

function showClasses(classes) {
  const body = $("classes").querySelector("tbody");
  body.replaceChildren();
  for (const entry of classes[0].top_k) {
    const row = document.createElement("tr");
    cell(row, entry.label);
    cell(row, number(entry.probability, 3), "num");
    body.appendChild(row);
  }
  $("classes").hidden = false;
}

function showTimings(timings) {
  const body = $("timings").querySelector("tbody");
  body.replaceChildren();
  for (const [stage, ms] of Object.entries(timings)) {
    const row = document.createElement("tr");
    row.dataset.stage = stage;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = stage;
    row.appendChild(th);
    cell(row, number(ms, 1) + " ms", "num");
    body.appendChild(row);
  }
}

async function showOverlay(link) {
  const img = $("overlay");
  const response = await fetch(link, { headers: headers() });
  if (!response.ok) {
    const [code, message] = await errorOf(response);
    showError(code, message);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  img.onload = () => {
    img.dataset.loaded = "1";
    $("status").textContent = "Done.";
  };
  img.src = url;
  $("overlay-figure").hidden = false;
}

// A plain link cannot carry the bearer token: on a token-protected service the file is
// fetched with it and handed to the browser as a blob, so downloads work there too.
async function download(event, href, name) {
  const auth = headers();
  if (!auth.Authorization) return;  // no token: the plain link works as it is
  event.preventDefault();
  const response = await fetch(href, { headers: auth });
  if (!response.ok) {
    const [code, message] = await errorOf(response);
    showError(code, message);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function showLinks(links) {
  const p = $("links");
  p.replaceChildren("Files: ");
  for (const [name, href] of Object.entries(links)) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = name;
    a.download = name;
    a.addEventListener("click", (event) => download(event, href, name));
    p.append(a, " ");
  }
}

async function send(files) {
  if (!files.length) return;
  clearError();
  for (const id of ["labels", "classes", "other", "overlay-figure"]) $(id).hidden = true;
  delete $("overlay").dataset.loaded;
  $("status").textContent = "Running on " + files.length + " file(s)…";
  const form = new FormData();
  for (const f of files) form.append("file", f, "upload");  // names never sent
  let response;
  try {
    response = await fetch("/v1/infer", { method: "POST", body: form, headers: headers() });
  } catch (e) {
    showError("NETWORK", "the service could not be reached");
    return;
  }
  if (!response.ok) {
    const [code, message] = await errorOf(response);
    showError(code, message);
    return;
  }
  const result = await response.json();
  $("result").hidden = false;
  const outputs = result.outputs;
  if (outputs.labels) showLabels(outputs.labels);
  if (outputs.classification) showClasses(outputs.classification);
  if (outputs.embedding) {
    $("other").textContent = "Embedding: " + outputs.embedding.length + " vector(s).";
    $("other").hidden = false;
  }
  showTimings(result.timings_ms);
  showLinks(result.links);
  $("run-info").hidden = false;
  if (result.links["overlay.png"]) await showOverlay(result.links["overlay.png"]);
  else $("status").textContent = "Done.";
  $("result-title").focus();
}

function setUp() {
  $("token").value = sessionStorage.getItem("edgemed-token") || "";
  $("token").addEventListener("change", loadCard);
  $("result-title").tabIndex = -1;
  const input = $("file");
  input.addEventListener("change", () => send([...input.files]));
  // A real button (Tab reaches it, Enter or Space presses it) opens the picker.
  $("pick").addEventListener("click", () => input.click());
  const drop = $("drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    send([...e.dataTransfer.files]);
  });
  loadCard();
}

document.addEventListener("DOMContentLoaded", setUp);
