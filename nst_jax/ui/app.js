// nst-jax serve: the page. Plain DOM, no framework; every text from the server goes in as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  options: [], limits: {}, content: null, styles: [], fine: null, mode: "stylize", jobs: [], selected: null,
  follow: true, shown: {}, snapshot: null,
};
const POST = { "X-NST-JAX": "1" };
const LABELS = {
  size: "Size (px, long side)", num_steps: "Steps (last stage)", style_weight: "Style weight",
  preserve_colour: "Preserve colour", style_scale: "Style scale", padding: "Padding", init: "Start from",
  seed: "Seed",
};

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function show(id, message) {
  const box = $(id);
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

// ---- settings form, built from StyleConfig's fields (as the CLI's options are) ----

function labelOf(option) {
  return LABELS[option.name] || option.name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function fieldFor(option) {
  const id = `opt-${option.name}`;
  let input;
  if (option.name === "padding") {
    // The page's "tileable" is the CLI's --tileable: circular padding.
    input = el("input", { type: "checkbox", id, "data-name": "padding" });
    const label = el("label", { class: "check", title: option.help }, [input, "Tileable (a seamless tile)"]);
    return label;
  }
  if (option.choices) {
    input = el("select", { id, "data-name": option.name });
    for (const choice of option.choices) input.append(el("option", { value: choice, text: choice }));
  } else if (option.kind === "int" || option.kind === "float") {
    input = el("input", { type: "number", id, "data-name": option.name, step: option.kind === "int" ? "1" : "any" });
    if (option.name === "size") { input.max = state.limits.max_size; input.min = 16; }
    if (option.name === "num_steps" || option.name === "coarse_steps") { input.max = state.limits.max_steps; input.min = 0; }
  } else {
    input = el("input", { type: "text", id, "data-name": option.name });
    if (option.optional) input.placeholder = "default";
  }
  const label = el("label", { title: option.help, for: id }, [labelOf(option), input]);
  if (option.kind === "list" || option.name === "layer_weights") label.classList.add("wide");
  return label;
}

function setDefaults() {
  for (const option of state.options) {
    const input = $(`opt-${option.name}`);
    if (!input) continue;
    if (option.name === "padding") input.checked = option.default === "circular";
    else if (Array.isArray(option.default)) input.value = option.default.join(",");
    else input.value = option.default === null ? "" : option.default;
    input.classList.remove("invalid");
  }
}

function settings() {
  const out = {};
  for (const option of state.options) {
    const input = $(`opt-${option.name}`);
    if (!input) continue;
    if (option.name === "padding") {
      if (input.checked) out.padding = "circular";
      continue;
    }
    const text = input.value.trim();
    const original = Array.isArray(option.default) ? option.default.join(",") : String(option.default ?? "");
    if (text === original) continue;
    if (option.kind === "int" || option.kind === "float") out[option.name] = text === "" ? null : Number(text);
    else out[option.name] = text;
  }
  return out;
}

function buildForm() {
  const common = $("settings");
  const more = $("more-settings");
  for (const option of state.options) (option.common ? common : more).append(fieldFor(option));
  setDefaults();
  const axis = $("sweep-axis");
  for (const name of state.sweepAxes) axis.append(el("option", { value: name, text: name.replace(/_/g, " ") }));
  axis.addEventListener("change", sweepHint);
  sweepHint();
}

function sweepHint() {
  const axis = $("sweep-axis").value;
  const max = state.limits.max_sweep_members;
  const text = axis === "style"
    ? `One picture per style image (add ${Math.max(0, 2 - state.styles.length) || "no more"} to sweep).`
    : axis === "style_layers"
      ? "Layer sets joined by +, sets by commas: relu1_1+relu2_1, relu3_1"
      : `Up to ${max} values, separated by commas. All of them run together in one batch.`;
  $("sweep-hint").textContent = text;
  $("sweep-values").disabled = axis === "style";
}

function setMode(mode) {
  state.mode = mode;
  $("mode-stylize").setAttribute("aria-selected", String(mode === "stylize"));
  $("mode-sweep").setAttribute("aria-selected", String(mode === "sweep"));
  $("sweep-fields").hidden = mode !== "sweep";
  $("start").textContent = mode === "sweep" ? "Start sweep" : "Start";
  updateStart();
}

function updateStart() {
  $("start").disabled = !(state.content && state.styles.length && !state.content.loading
    && !state.styles.some((s) => s.loading) && !(state.fine && state.fine.loading));
}

// ---- uploads ----

function thumb(upload, onRemove) {
  const img = el("img", { alt: upload.name });
  if (upload.id) img.src = `/api/uploads/${upload.id}/thumbnail.png`;
  const children = [img, el("div", { class: "name", text: upload.name, title: upload.name })];
  const node = el("div", { class: "thumb" + (upload.loading ? " loading" : "") }, children);
  if (upload.id) {
    node.title = `${upload.name}: ${upload.width} x ${upload.height} px`;
    const remove = el("button", { type: "button", class: "remove", "aria-label": `remove ${upload.name}`, text: "×" });
    remove.addEventListener("click", (event) => { event.stopPropagation(); onRemove(); });
    node.append(remove);
  }
  return node;
}

function renderUploads() {
  const contentThumbs = $("content-thumbs");
  contentThumbs.replaceChildren();
  if (state.content) contentThumbs.append(thumb(state.content, () => { state.content = null; renderUploads(); }));
  $("content-zone").classList.toggle("filled", !!state.content);
  const fineThumbs = $("fine-thumbs");
  fineThumbs.replaceChildren();
  if (state.fine) fineThumbs.append(thumb(state.fine, () => { state.fine = null; renderUploads(); }));
  $("fine-zone").classList.toggle("filled", !!state.fine);
  const styleThumbs = $("style-thumbs");
  styleThumbs.replaceChildren(...state.styles.map((upload, i) => thumb(upload, () => {
    state.styles.splice(i, 1);
    renderUploads();
  })));
  $("style-zone").classList.toggle("filled", state.styles.length > 0);
  updateStart();
  sweepHint();
}

async function uploadFile(file) {
  if (file.size > state.limits.max_upload_bytes) {
    const mb = (n) => (n / 1048576).toFixed(1);
    throw new Error(`${file.name} is ${mb(file.size)} MB; this server takes images up to ${mb(state.limits.max_upload_bytes)} MB`);
  }
  return api("/api/uploads", {
    method: "POST",
    headers: { ...POST, "Content-Type": file.type || "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
    body: file,
  });
}

async function addFiles(files, which) {
  show("upload-message", "");
  const single = which !== "style";  // the content and the fine style are one image each
  const list = single ? [...files].slice(0, 1) : [...files];
  const errors = [];
  await Promise.all(list.map(async (file) => {
    const placeholder = { name: file.name, loading: true };
    if (single) state[which] = placeholder; else state.styles.push(placeholder);
    renderUploads();
    try {
      const upload = await uploadFile(file);
      if (single) { if (state[which] === placeholder) state[which] = upload; }
      else state.styles[state.styles.indexOf(placeholder)] = upload;
    } catch (error) {
      errors.push(error.message);
      if (single) { if (state[which] === placeholder) state[which] = null; }
      else state.styles.splice(state.styles.indexOf(placeholder), 1);
    }
    renderUploads();
  }));
  if (errors.length) show("upload-message", errors.join(" · "));
}

function dropZone(zoneId, inputId, which) {
  const zone = $(zoneId), input = $(inputId);
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { if (input.files.length) addFiles(input.files, which); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) addFiles(e.dataTransfer.files, which);
  });
}

// ---- runs ----

async function start() {
  show("start-message", "");
  const request = {
    kind: state.mode, content: state.content.id, styles: state.styles.map((s) => s.id), settings: settings(),
  };
  if (state.fine && state.fine.id) request.fine_style = state.fine.id;
  if (state.mode === "sweep") {
    const axis = $("sweep-axis").value;
    request.vary = axis === "style" ? "style" : `${axis}=${$("sweep-values").value}`;
  }
  $("start").disabled = true;
  try {
    const job = await api("/api/jobs", {
      method: "POST", headers: { ...POST, "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    state.selected = job.id;
    state.follow = true;
    $("stage").scrollIntoView({ behavior: "smooth", block: "nearest" });  // the picture, wherever Start was
    refresh();
  } catch (error) {
    show("start-message", error.message);
  } finally {
    updateStart();
  }
}

async function cancel(id) {
  try { await api(`/api/jobs/${id}/cancel`, { method: "POST", headers: POST }); }
  catch (error) { show("start-message", error.message); }
}

function fmtTime(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  seconds = Math.round(seconds);
  const m = Math.floor(seconds / 60), s = seconds % 60;
  return m >= 60 ? `${Math.floor(m / 60)}:${String(m % 60).padStart(2, "0")}:${String(s).padStart(2, "0")}`
    : `${m}:${String(s).padStart(2, "0")}`;
}

function describe(job) {
  const parts = [];
  const s = job.settings;
  parts.push(`${s.size || 512} px`);
  if (job.kind === "sweep") parts.push(`sweep of ${job.axis.replace(/_/g, " ")} (${job.labels.length})`);
  for (const [key, value] of Object.entries(s)) {
    if (key === "size") continue;
    parts.push(`${key.replace(/_/g, " ")} ${Array.isArray(value) ? value.join(",") : value}`);
  }
  return parts.join(" · ");
}

function stateText(job) {
  if (job.state === "queued") return job.position === 0 ? "next" : `queued · ${job.position} ahead`;
  if (job.state === "running") {
    const p = job.progress;
    if (!p || p.stage === undefined) return "starting";
    return job.kind === "sweep" ? `stage ${p.stage + 1}/${p.num_stages}` : `stage ${p.stage + 1}/${p.num_stages} · step ${p.step}`;
  }
  return job.state;
}

function fraction(job) {
  const p = job.progress;
  if (p && typeof p.fraction === "number") return p.fraction;  // weighted by each stage's work (jobs.run_estimate)
  if (!p || p.num_stages === undefined || !p.num_steps) return null;
  const done = job.kind === "sweep" ? Math.min(...p.steps) : p.step;
  return Math.min(1, (p.stage + Math.min(1, done / p.num_steps)) / p.num_stages);
}

function swapImage(img, url) {
  // Load the new frame before swapping it in: no blank flashes between chunks.
  if (img.dataset.url === url) return;
  img.dataset.url = url;
  const next = new Image();
  next.onload = () => {
    if (img.dataset.url !== url) return;
    img.src = url;
    img.hidden = false;
    // Small pictures at most twice their size: a 256 px run is not blown up to a blur.
    if (img.id === "preview") img.style.maxWidth = `${Math.max(2 * next.naturalWidth, 320)}px`;
  };
  next.src = url;
}

function renderStage() {
  const job = state.jobs.find((j) => j.id === state.selected);
  const preview = $("preview"), grid = $("grid"), badge = $("stage-badge");
  $("placeholder").hidden = !!job;
  if (!job) {
    preview.hidden = true; grid.hidden = true; badge.hidden = true; $("progress").hidden = true;
    $("stats").replaceChildren(); $("cancel").hidden = true; $("download").hidden = true;
    $("stage-title").textContent = "Preview";
    return;
  }
  $("stage-title").textContent = job.kind === "sweep" ? `Sweep of ${job.axis.replace(/_/g, " ")}` : "Preview";
  badge.hidden = false;
  badge.className = `badge ${job.state}`;
  badge.textContent = stateText(job);
  if (job.kind === "sweep") {
    preview.hidden = true;
    grid.hidden = false;
    if (grid.dataset.job !== job.id) {
      grid.dataset.job = job.id;
      grid.replaceChildren(...job.labels.map((label, k) => el("figure", { class: "cell", "data-k": k }, [
        el("div", { class: "img" }, [el("img", { alt: label, hidden: "" })]),
        el("figcaption", { class: "label", text: label.replace(`${job.axis}=`, ""), title: label }),
      ])));
    }
    job.members.forEach((has, k) => {
      if (has) swapImage(grid.children[k].querySelector("img"), `/api/jobs/${job.id}/members/${k}.png?v=${job.version}`);
    });
  } else {
    grid.hidden = true;
    if (job.has_preview) swapImage(preview, `/api/jobs/${job.id}/preview.png?v=${job.version}`);
    else { preview.hidden = true; preview.dataset.url = ""; }
  }
  const progress = $("progress"), f = fraction(job);
  progress.hidden = job.state !== "running";
  progress.classList.toggle("indeterminate", f === null);
  $("bar").style.width = f === null ? "" : `${(100 * f).toFixed(1)}%`;
  const stats = [];
  const stat = (name, value) => stats.push(el("span", {}, [`${name} `, el("b", { text: value })]));
  const p = job.progress || {};
  if (job.state === "queued") {
    stat("waiting", job.position === 0 ? "next in line" : `${job.position} run(s) ahead`);
  } else if (p.stage !== undefined) {
    stat("stage", `${p.stage + 1}/${p.num_stages}${p.side ? ` · ${p.side} px` : ""}`);
    if (job.kind === "sweep") {
      stat("steps", `${Math.min(...p.steps)}–${Math.max(...p.steps)}/${p.num_steps}`);
      stat("best loss", p.loss.toExponential(3));
    } else {
      stat("step", `${p.step}/${p.num_steps}`);
      stat("loss", p.loss.toExponential(3));
      stat("speed", p.steps_per_second ? `${p.steps_per_second.toFixed(2)} steps/s` : "compiling…");
      if (job.state === "running") stat("ETA", p.eta_total === null ? "–" : `≈ ${fmtTime(p.eta_total)}`);
    }
  } else if (job.state === "running") {
    stat("", "loading images and compiling…");
  }
  if (job.summary && job.summary.seconds !== undefined) stat("took", fmtTime(job.summary.seconds));
  if (job.error) stats.push(el("span", { class: "error", text: job.error }));
  $("stats").replaceChildren(...stats);
  $("cancel").hidden = !(job.state === "queued" || job.state === "running");
  $("cancel").onclick = () => cancel(job.id);
  const download = $("download");
  // A cancelled or failed picture's last image is offered too, said to be unfinished (as the CLI
  // saves OUT.interrupted.png beside the output): never as the result.
  const unfinished = !job.has_result && job.kind === "stylize" && job.has_preview
    && (job.state === "cancelled" || job.state === "failed");
  download.hidden = !(job.has_result || unfinished);
  download.classList.toggle("primary", job.has_result);
  if (job.has_result) {
    download.href = `/api/jobs/${job.id}/result.png`;
    download.setAttribute("download", "");
    download.textContent = job.kind === "sweep" ? "Download grid PNG" : "Download PNG";
  } else if (unfinished) {
    download.href = `/api/jobs/${job.id}/preview.png`;
    download.setAttribute("download", `nst-jax-unfinished-${job.id.slice(0, 8)}.png`);
    download.textContent = "Download the unfinished image";
  }
}

function renderRuns() {
  const list = $("runs");
  if (!state.jobs.length) {
    list.replaceChildren(el("li", { class: "empty", text: "Nothing yet: runs of this page appear here, newest first." }));
    return;
  }
  list.replaceChildren(...state.jobs.map((job) => {
    const pic = el("img", { class: "pic", alt: "" });
    if (job.has_preview) pic.src = `/api/jobs/${job.id}/preview.png?v=${job.version}`;
    else if (job.kind === "sweep" && job.members.some(Boolean)) {
      pic.src = `/api/jobs/${job.id}/members/${job.members.indexOf(true)}.png?v=${job.version}`;
    } else pic.src = `/api/uploads/${job.content}/thumbnail.png`;
    const buttons = el("div", { class: "buttons" });
    if (job.state === "queued" || job.state === "running") {
      buttons.append(el("button", { type: "button", class: "small danger", text: "Cancel",
        onclick: (e) => { e.stopPropagation(); cancel(job.id); } }));
    }
    if (job.has_result) {
      buttons.append(el("a", { class: "button small", href: `/api/jobs/${job.id}/result.png`, download: "",
        text: "PNG", onclick: (e) => e.stopPropagation() }));
    }
    const title = el("div", { class: "title" }, [
      job.kind === "sweep" ? "Sweep" : "Picture", el("span", { class: `badge ${job.state}`, text: stateText(job) }),
    ]);
    const item = el("li", { class: "run" + (job.id === state.selected ? " selected" : ""), "data-id": job.id,
      "data-state": job.state, tabindex: "0" }, [pic, el("div", { class: "what" }, [title,
      el("div", { class: "detail", text: describe(job), title: describe(job) })]), buttons]);
    const select = () => { state.selected = job.id; state.follow = false; render(); };
    item.addEventListener("click", select);
    item.addEventListener("keydown", (e) => { if (e.key === "Enter") select(); });
    return item;
  }));
}

function render() {
  const snap = state.snapshot;
  if (snap) {
    const others = [];
    if (snap.others_running) others.push("another page's run is on the device");
    if (snap.others_queued) others.push(`${snap.others_queued} of other pages queued`);
    $("queue-note").textContent = others.length ? `· ${others.join(", ")}` : "";
  }
  if (state.follow) {
    const running = state.jobs.find((j) => j.state === "running");
    if (running && (!state.selected || state.jobs.find((j) => j.id === state.selected)?.state !== "queued")) {
      state.selected = running.id;
    }
  }
  if (state.selected && !state.jobs.find((j) => j.id === state.selected)) state.selected = null;
  if (!state.selected && state.jobs.length) state.selected = state.jobs[0].id;
  renderRuns();
  renderStage();
}

function receive(snapshot) {
  state.snapshot = snapshot;
  state.jobs = snapshot.jobs;
  render();
}

async function refresh() {
  try { receive(await api("/api/jobs")); } catch (error) { /* the event stream reports it */ }
}

function listen() {
  const source = new EventSource("/api/events");
  source.onmessage = (event) => receive(JSON.parse(event.data));
  source.onerror = () => { $("device").textContent = "reconnecting…"; };
  source.onopen = () => { $("device").textContent = state.device; };
}

async function main() {
  try {
    const data = await api("/api/options");
    state.options = data.options;
    state.limits = data.limits;
    state.sweepAxes = data.sweep_axes;
    state.device = data.device;
    $("device").textContent = data.device;
  } catch (error) {
    show("upload-message", `${error.message}`);
    return;
  }
  buildForm();
  dropZone("content-zone", "content-file", "content");
  dropZone("style-zone", "style-file", "style");
  dropZone("fine-zone", "fine-file", "fine");
  $("mode-stylize").addEventListener("click", () => setMode("stylize"));
  $("mode-sweep").addEventListener("click", () => setMode("sweep"));
  $("start").addEventListener("click", start);
  $("reset").addEventListener("click", setDefaults);
  document.body.dataset.ready = "1";
  listen();
  refresh();
}

main();
