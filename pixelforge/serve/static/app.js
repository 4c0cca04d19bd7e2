// The pixelforge web page: plain JavaScript over the /api/v1 HTTP API (no build step).
// The form is built from each model's declared sample_options, so the page, the API's validation
// and the OpenAPI schema all follow one declaration.
"use strict";

const API = "/api/v1";
const EACH = "__each__";   // label choice: class i % num_classes for image i
const RANDOM = "__random__";
const state = { models: [], byName: {}, job: null, pair: null, authRequired: false,
  sketchDrawn: false, edit: null, maskDrawn: false, audio: null,  // audio: the chosen clip as a data: URL  // edit: the image to edit, {data, width, height}
  post: null, colorReference: null };  // post: GET /models' post-processing declaration; colorReference: {data, name}
const $ = (id) => document.getElementById(id);

// --- HTTP ----------------------------------------------------------------------------------------
function headers(extra = {}) {
  const key = localStorage.getItem("pixelforge-api-key");
  return key ? { ...extra, "X-API-Key": key } : extra;
}

function describeError(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return detail ? String(detail) : `HTTP ${status}`;
}

async function api(path, { method = "GET", body } = {}) {
  const opts = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) opts.body = JSON.stringify(body);
  const res = await fetch(API + path, opts);
  const data = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) {
    const err = new Error(describeError(res.status, data));
    err.status = res.status;
    err.retryAfter = res.headers.get("Retry-After");
    err.detail = data && Array.isArray(data.detail) ? data.detail : null;  // a 422's fields: shown beside their controls
    throw err;
  }
  return data;
}

// Server-Sent Events over fetch (EventSource cannot send the API key header).
async function followEvents(jobId, onEvent) {
  const res = await fetch(`${API}/jobs/${jobId}/events`, { headers: headers() });
  if (!res.ok) {
    const err = new Error(describeError(res.status, await res.json().catch(() => null)));
    err.status = res.status;
    throw err;
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

// Queue a job and follow it to the end; onProgress(job) on each update; resolves with the final job.
async function runJob(body, onProgress) {
  const created = await api("/jobs", { method: "POST", body });
  let last = { id: created.id, status: created.status, progress: 0 };
  onProgress(last);
  const final = () => ["done", "failed", "cancelled"].includes(last.status);
  while (!final()) {
    // a stream ends by itself after the server's stream lifetime, and is refused (429) while too many are open
    try {
      await followEvents(created.id, (event, job) => { last = job; onProgress(job); });
    } catch (err) {
      if (err.status !== 429) throw err;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    if (!final()) { last = await api(`/jobs/${created.id}`); onProgress(last); }
  }
  return last;
}

async function imageURL(url) {
  const res = await fetch(url, { headers: headers() });
  if (!res.ok) throw new Error(`image: HTTP ${res.status}`);
  return URL.createObjectURL(await res.blob());
}

// --- forms built from the models' declarations -----------------------------------------------------
function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function fillModels(select) {
  select.replaceChildren(...state.models.map((m) => option(m.name, m.name)));
}

function fillLabels(select, model, { each = true } = {}) {
  const keep = select.options.length ? select.value : null;  // first fill: the first choice
  const items = [];
  if (model.num_classes) {
    if (each) items.push(option(EACH, "each class in turn"));
    else items.push(option(RANDOM, "random class"));
    for (const c of model.classes) items.push(option(String(c.index), c.name === String(c.index) ? c.name : `${c.index}: ${c.name}`));
  }
  items.push(option("", model.num_classes ? "none (unconditional)"
    : takes(model, "prompt") ? "none (takes a prompt)" : takes(model, "sketch") ? "none (takes a sketch)"
      : takes(model, "audio") ? "none (takes a spoken clip)"
      : "none (unconditional model)"));
  select.replaceChildren(...items);
  if (keep !== null && [...select.options].some((o) => o.value === keep)) select.value = keep;
  select.disabled = !model.num_classes;
}

// whether a model takes an input ("label", "prompt", "sketch", "image", "mask", "audio"), as GET /models declares it
function takes(model, kind) {
  return model.inputs.some((i) => i.name === kind && i.supported);
}

// a prompt box follows the model: shown only when it takes text, limited to the length the server accepts
function showPromptBox(box, input, model) {
  const spec = model.inputs.find((i) => i.name === "prompt" && i.supported);
  box.hidden = !spec;
  if (spec && spec.max_length) input.maxLength = spec.max_length;
}

function promptValue(id) {
  const text = $(id).value.trim();
  return text === "" ? null : text;
}

function shorten(text, max = 48) {
  return text.length <= max ? text : `${text.slice(0, max - 1).trimEnd()}…`;
}

function buildOptions(container, model, prefix, values = {}) {
  container.replaceChildren();
  container.classList.add("opts");
  for (const spec of model.sample_options) {
    const wrap = document.createElement("div");
    const label = document.createElement("label");
    label.htmlFor = prefix + spec.name;
    label.textContent = spec.name;
    if (spec.help) label.title = spec.help;
    let input;
    if (spec.kind === "choice") {
      input = document.createElement("select");
      input.append(...spec.choices.map((c) => option(c, c)));
    } else {
      input = document.createElement("input");
      input.type = spec.kind === "str" ? "text" : "number";
      if (spec.min !== null) input.min = spec.min;
      if (spec.max !== null) input.max = spec.max;
      if (spec.kind === "float") input.step = "0.1";
    }
    input.id = prefix + spec.name;
    input.dataset.kind = spec.kind;
    input.value = spec.name in values ? values[spec.name] : spec.default;
    wrap.append(label, input);
    container.append(wrap);
  }
}

function readOptions(model, prefix) {
  const out = {};
  for (const spec of model.sample_options) {
    const raw = $(prefix + spec.name).value;
    if (raw === "") continue;
    out[spec.name] = spec.kind === "int" ? parseInt(raw, 10) : spec.kind === "float" ? parseFloat(raw) : raw;
  }
  return out;
}

function describeModel(m) {
  const size = `${m.image_size}×${m.image_size}, ${m.channels === 1 ? "grayscale" : "RGB"}`;
  const conditions = [m.num_classes ? `${m.num_classes} classes` : "", takes(m, "prompt") ? "text prompts" : "",
    takes(m, "sketch") ? "sketches" : ""];
  const fid = m.evaluation ? ` · FID ${m.evaluation.fid.toFixed(2)} (${m.evaluation.extractor})` : "";
  const edits = m.upscale ? ` · upscales images ×${m.upscale}`
    : takes(m, "image") ? ` · edits images${takes(m, "mask") ? " (and inpaints)" : ""}` : "";
  return `${m.family} · ${size} · ${conditions.filter(Boolean).join(" and ") || "unconditional"}${edits}${fid}.`;
}

// --- drawing: the sketch canvas, and a mask painted over the image to edit -------------------------
// Pointer events serve a mouse, a pen and a finger alike (the canvases' CSS stops touch from scrolling).
function drawable(canvas, { color, width, onStroke }) {
  const ctx = canvas.getContext("2d");
  let last = null;
  const at = (e) => {  // the pointer in canvas pixels, whatever size the canvas is shown at
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  const stroke = (a, b) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = width();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
    onStroke();
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    last = at(e);
    stroke(last, last);  // a click is a dot
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e);
    stroke(last, p);
    last = p;
  });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });
}

function clearSketch() {
  const canvas = $("sketch-canvas"), ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  state.sketchDrawn = false;
}

// a file the browser can decode -> an ImageBitmap (the page re-encodes it, so any format the browser reads works)
async function readImageFile(input) {
  const file = input.files[0];
  input.value = "";  // choosing the same file again fires "change" again
  if (!file) return null;
  try {
    return await createImageBitmap(file);
  } catch (e) {
    throw new Error(`${file.name} is not an image this browser can read`);
  }
}

async function loadSketch() {
  const bitmap = await readImageFile($("sketch-file"));
  if (!bitmap) return;
  clearSketch();
  const canvas = $("sketch-canvas");
  const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
  const w = bitmap.width * scale, h = bitmap.height * scale;
  canvas.getContext("2d").drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  state.sketchDrawn = true;  // drawing on top of it goes on
}

// the size an upload is sent at: within the server's pixel limit and at most 1024 px a side (larger gains
// nothing: the server resizes to the model's size, at most 1024)
function uploadSize(width, height, spec) {
  const pixels = spec && spec.max_pixels ? spec.max_pixels : 2048 * 2048;
  const scale = Math.min(1, 1024 / Math.max(width, height), Math.sqrt(pixels / (width * height)));
  return [Math.max(1, Math.floor(width * scale)), Math.max(1, Math.floor(height * scale))];
}

// a canvas as a data: URL within the server's byte limit: PNG (lossless), else JPEG; null when neither fits
function encodeCanvas(canvas, spec) {
  const most = spec && spec.max_bytes ? spec.max_bytes : Infinity;
  const fits = (url) => (url.length - url.indexOf(",") - 1) * 3 / 4 <= most;
  const asPNG = canvas.toDataURL("image/png");
  if (fits(asPNG)) return asPNG;
  const asJPEG = canvas.toDataURL("image/jpeg", 0.92);
  return fits(asJPEG) ? asJPEG : null;
}

async function loadEditImage() {
  const m = state.byName[$("model").value];
  const spec = m.inputs.find((i) => i.name === "image");
  try {
    const bitmap = await readImageFile($("image-file"));
    if (!bitmap) return;
    const [w, h] = uploadSize(bitmap.width, bitmap.height, spec);
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
    const data = encodeCanvas(canvas, spec);
    if (!data) throw new Error(`the image is over the server's limit of ${spec.max_bytes} bytes even as a JPEG`);
    state.edit = { data, width: w, height: h };
    $("edit-image").src = data;
    const mask = $("mask-canvas");
    mask.width = w;
    mask.height = h;
    state.maskDrawn = false;
    $("edit-area").hidden = false;
    $("status").textContent = `Image loaded (${w}×${h}): it is edited instead of drawn from noise.`;
  } catch (e) {
    $("status").textContent = `Error: ${e.message}`;
  }
}

// the chosen WAV clip, read as a data: URL and sent as it is (the server checks it is a WAV file); one over the
// server's byte limit is refused here, with the limit
async function loadAudio() {
  const m = state.byName[$("model").value];
  const spec = m.inputs.find((i) => i.name === "audio");
  const file = $("audio-file").files[0];
  state.audio = null;
  if (!file) return;
  if (spec && spec.max_bytes && file.size > spec.max_bytes) {
    $("status").textContent = `Error: ${file.name} is ${file.size} bytes, over the server's limit of ${spec.max_bytes}`;
    return;
  }
  const data = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name} could not be read`));
    reader.readAsDataURL(file);
  });
  // a browser may name a WAV file audio/x-wav, audio/wave or nothing: the server takes data:audio/wav
  state.audio = "data:audio/wav;base64," + data.slice(data.indexOf(",") + 1);
  $("status").textContent = `Clip loaded: ${file.name}.`;
}

function removeEditImage() {
  state.edit = null;
  state.maskDrawn = false;
  $("edit-image").removeAttribute("src");
  $("edit-area").hidden = true;
}

function clearMask() {
  const mask = $("mask-canvas");
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  state.maskDrawn = false;
}

// the painted mask as the server takes it: white where painted (repaint), black elsewhere (keep)
function maskDataURL() {
  const painted = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = painted.width;
  out.height = painted.height;
  const ctx = out.getContext("2d");
  ctx.drawImage(painted, 0, 0);
  ctx.globalCompositeOperation = "source-in";  // the strokes' shape, in white
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.globalCompositeOperation = "destination-over";  // black behind them
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  return out.toDataURL("image/png");
}

// the sketch and edit boxes follow the model: shown for the inputs it takes; the strength slider from its
// family's declared edit option
function showUploadBoxes(m) {
  $("sketch-box").hidden = !takes(m, "sketch");
  $("audio-box").hidden = !takes(m, "audio");
  $("edit-box").hidden = !takes(m, "image");
  // an upscaler's job upscales the uploaded image: no strength, no mask
  $("image-file-label").textContent = m.upscale ? `Image to upscale ×${m.upscale} (required)` : "Image to edit (optional)";
  const inpaints = takes(m, "mask");
  $("mask-canvas").classList.toggle("off", !inpaints);
  $("mask-clear").hidden = $("mask-hint").hidden = !inpaints;
  const strength = m.edit_options.find((o) => o.name === "strength");
  $("strength-box").hidden = !strength;
  if (strength) {
    const slider = $("strength");
    slider.min = strength.min;
    slider.max = strength.max;
    slider.step = "0.05";
    if (slider.dataset.model !== m.name) slider.value = strength.default;  // a new model: its default
    slider.dataset.model = m.name;
    slider.title = strength.help;
    $("strength-value").textContent = Number(slider.value).toFixed(2);
  }
}

// --- errors beside the controls they concern ---------------------------------------------------------
// the Generate form's control for a 422's loc (["body", "post", "sharpen"], ...); null where there is none
const POST_CONTROLS = { denoise: "post-denoise", denoise_strength: "post-denoise-strength", color: "post-color",
  sharpen: "post-sharpen", upscale: "post-upscale", upscaler: "post-upscaler", color_reference: "post-color-file" };
const FORM_CONTROLS = { n: "n", seed: "seed", label: "label", labels: "label", prompt: "prompt", prompts: "prompt",
  negative_prompt: "negative-prompt", sketch: "sketch-canvas", image: "image-file", mask: "mask-canvas", audio: "audio-file",
  color_reference: "post-color-file" };

function controlFor(loc) {
  const [field, name] = (loc || []).filter((p) => p !== "body");
  const id = field === "post" ? POST_CONTROLS[name] : field === "options" ? name : FORM_CONTROLS[field];
  const control = id ? document.getElementById(id) : null;
  return control && (field !== "options" || $("options").contains(control)) ? control : null;
}

function clearFieldErrors() {
  for (const p of document.querySelectorAll("#generate-form .field-error")) p.remove();
  for (const c of document.querySelectorAll("#generate-form [aria-invalid]")) {
    c.removeAttribute("aria-invalid");
    c.removeAttribute("aria-errormessage");
  }
}

// each message of a 422 under its control (marked invalid, the message its accessible error); true when one was placed
function showFieldErrors(detail) {
  let first = null;
  for (const d of detail || []) {
    const control = controlFor(d.loc);
    if (!control || document.getElementById(`${control.id}-error`)) continue;
    const p = document.createElement("p");
    p.id = `${control.id}-error`;
    p.className = "field-error";
    p.setAttribute("role", "alert");
    p.textContent = d.msg;
    (control.closest(".with-button, .mask-stack") || control).after(p);
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-errormessage", p.id);
    first = first || control;
  }
  if (first && first.tabIndex >= 0) first.focus();
  return first !== null;
}

// --- finishing: post-processing controls built from the server's declaration (GET /models "post") ----------
function buildFinishing(post) {
  state.post = post || null;
  $("finishing").hidden = !post;
  if (!post) return;
  const spec = Object.fromEntries(post.options.map((o) => [o.name, o]));
  const keep = (select, items) => {
    const value = select.value;
    select.replaceChildren(option("", "off"), ...items);
    if ([...select.options].some((o) => o.value === value)) select.value = value;
  };
  keep($("post-denoise"), spec.denoise.choices.map((c) => option(c, c)));
  $("post-denoise").title = spec.denoise.help;
  const up = spec.upscale, factors = [];
  for (let f = up.min; f <= up.max; f += 1) factors.push(option(String(f), `×${f}`));
  keep($("post-upscale"), factors);
  for (const [id, s] of [["post-denoise-strength", spec.denoise_strength], ["post-sharpen", spec.sharpen]]) {
    $(id).min = s.min;
    $(id).max = s.max;
    $(id).title = s.help;
  }
  if ($("post-sharpen").value === "") $("post-sharpen").value = spec.sharpen.default;
  $("post-color").title = spec.color.help;
  onFinishingChange();
}

function onFinishingChange() {
  $("post-denoise-strength").disabled = $("post-denoise").value === "";
  $("post-sharpen").disabled = !$("post-sharpen-on").checked;
  $("post-color-box").hidden = $("post-color").value !== "match";
  // the upscaler: Lanczos, or a served super-resolution model of the chosen factor (GET /models "upscale")
  const factor = parseInt($("post-upscale").value, 10);
  const upscalers = state.models.filter((m) => m.upscale && m.upscale === factor);
  const chosen = $("post-upscaler").value;
  $("post-upscaler").replaceChildren(option("", "Lanczos"), ...upscalers.map((m) => option(m.name, m.name)));
  if (upscalers.some((m) => m.name === chosen)) $("post-upscaler").value = chosen;
  $("post-upscaler-box").hidden = !upscalers.length;
}

// a number field's value for the server: a number, the raw text where it is none (the server says what is wrong
// with it), or null where left empty
function numberValue(id) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const x = Number(raw);
  return Number.isFinite(x) ? x : raw;
}

// the job's "post" (null when nothing is chosen)
function readPost() {
  if (!state.post) return null;
  const post = {};
  if ($("post-denoise").value) {
    post.denoise = $("post-denoise").value;
    const strength = numberValue("post-denoise-strength");  // empty: the method's default
    if (strength !== null) post.denoise_strength = strength;
  }
  if ($("post-color").value) post.color = $("post-color").value;
  if ($("post-sharpen-on").checked) {
    const amount = numberValue("post-sharpen");
    post.sharpen = amount === null ? state.post.options.find((o) => o.name === "sharpen").default : amount;
  }
  if ($("post-upscale").value) {
    post.upscale = parseInt($("post-upscale").value, 10);
    if ($("post-upscaler").value) post.upscaler = $("post-upscaler").value;
  }
  return Object.keys(post).length ? post : null;
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// the colour reference: a PNG or JPEG within the server's limits is sent as it is (so its recorded SHA-256 is the
// file's, as `--color match:FILE` records it); anything else is re-encoded within the limits
async function loadColorReference() {
  const input = $("post-color-file");
  const file = input.files[0];
  if (!file) return;
  const limits = { max_bytes: state.post.reference_max_bytes, max_pixels: state.post.reference_max_pixels };
  const bytes = new Uint8Array(await file.arrayBuffer());
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    throw new Error(`${file.name} is not an image this browser can read`);
  }
  const png = bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47;
  const jpeg = bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
  let data, [w, h] = [bitmap.width, bitmap.height];
  if ((png || jpeg) && bytes.length <= limits.max_bytes && w * h <= limits.max_pixels) {
    data = `data:image/${png ? "png" : "jpeg"};base64,${base64(bytes)}`;
  } else {
    [w, h] = uploadSize(w, h, limits);
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
    data = encodeCanvas(canvas, limits);
    if (!data) throw new Error(`${file.name} is over the server's limit of ${limits.max_bytes} bytes even as a JPEG`);
  }
  state.colorReference = { data, name: file.name };
  $("post-color-name").textContent = `Reference: ${file.name} (${w}×${h}).`;
}

// --- Generate tab ---------------------------------------------------------------------------------
function onModelChange() {
  const m = state.byName[$("model").value];
  fillLabels($("label"), m);
  showPromptBox($("prompt-box"), $("prompt"), m);
  showPromptBox($("negative-box"), $("negative-prompt"), m);
  // a negative prompt works through classifier-free guidance: only for models with a guidance option
  if (!m.sample_options.some((o) => o.name === "guidance")) $("negative-box").hidden = true;
  showUploadBoxes(m);
  buildOptions($("options"), m, "");
  $("model-info").textContent = describeModel(m);
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").disabled = !busy;
}

async function generate() {
  const m = state.byName[$("model").value];
  const n = parseInt($("n").value, 10);
  const body = { model: m.name, n, seed: parseInt($("seed").value, 10), options: readOptions(m, "") };
  const lab = $("label").value;
  if (lab === EACH) body.labels = Array.from({ length: n }, (_, i) => i % m.num_classes);
  else if (lab !== "") body.label = parseInt(lab, 10);
  if (takes(m, "prompt")) {
    const prompt = promptValue("prompt"), negative = promptValue("negative-prompt");
    if (prompt !== null) body.prompt = prompt;
    if (negative !== null && !$("negative-box").hidden) body.negative_prompt = negative;
  }
  if (takes(m, "sketch") && state.sketchDrawn) body.sketch = $("sketch-canvas").toDataURL("image/png");
  if (takes(m, "audio") && state.audio) body.audio = state.audio;
  if (takes(m, "image") && state.edit) {
    body.image = state.edit.data;
    if (!$("strength-box").hidden) body.options.strength = parseFloat($("strength").value);
    if (takes(m, "mask") && state.maskDrawn) body.mask = maskDataURL();
  }
  const post = readPost();
  if (post) body.post = post;
  if (post && post.color === "match" && state.colorReference) body.color_reference = state.colorReference.data;
  clearFieldErrors();
  setBusy(true);
  $("progress").value = 0;
  $("status").textContent = "Submitting…";
  try {
    const job = await runJob(body, (j) => {
      state.job = j.id;
      $("progress").value = j.progress || 0;
      $("status").textContent = j.status === "queued"
        ? `Queued${j.queue_position ? ` (${j.queue_position} ahead)` : ""}…`
        : j.status === "running" ? `Generating… ${Math.round((j.progress || 0) * 100)}%` : j.status;
    });
    if (job.status === "done") {
      $("status").textContent = `Done: ${job.images.length} image${job.images.length > 1 ? "s" : ""} in ${(job.finished - job.started).toFixed(1)} s.`;
      await showGallery(job);
    } else {
      $("status").textContent = job.status === "cancelled" ? "Cancelled." : `Failed: ${job.error}`;
    }
  } catch (e) {
    $("status").textContent = e.status === 429 ? `Busy: ${e.message}` : `Error: ${e.message}`;
    if (e.status === 422) showFieldErrors(e.detail);
  } finally {
    state.job = null;
    setBusy(false);
  }
}

async function showGallery(job) {
  // a tile at least as wide as its image (the model's size times the upscale factor; 6 px padding, 1 px border)
  const m = state.byName[job.model];
  const side = Math.max(...job.settings.map((s) => (m ? m.image_size : 0) * ((s.post && s.post.upscale) || 1)));
  $("gallery").style.setProperty("--tile", `${Math.max(124, side + 14)}px`);
  const tiles = await Promise.all(job.images.map(async (url, i) => {
    const s = job.settings[i];
    const src = await imageURL(url);
    const tile = document.createElement("div");
    tile.className = "tile";
    const img = document.createElement("img");
    img.src = src;
    img.alt = `seed ${s.seed}` + (s.label !== null && s.label !== undefined ? `, label ${s.class_name ?? s.label}` : "");
    img.title = JSON.stringify(s, null, 1);
    if (s.prompt) img.alt += `, prompt: ${s.prompt}`;
    if (s.sketch_sha256) img.alt += ", from a sketch";
    if (s.image_sha256) img.alt += `, an edit at strength ${s.strength}${s.mask_sha256 ? " with a mask" : ""}`;
    img.classList.toggle("smooth", Boolean(s.post && s.post.upscale));  // resampled already: no pixel blocks
    if (s.post) img.alt += `, finished: ${s.post.order.map((step) => (step === "upscale" ? `upscale ×${s.post.upscale}` : step)).join(", ")}`;
    const meta = document.createElement("div");
    meta.className = "meta";
    const caption = document.createElement("span");
    caption.textContent = (s.label !== null && s.label !== undefined ? `${s.class_name ?? s.label} · ` : "") + `seed ${s.seed}`;
    caption.title = caption.textContent;
    const link = document.createElement("a");
    link.href = src;
    link.download = `seed${String(s.seed).padStart(6, "0")}${s.label !== null && s.label !== undefined ? `-label${s.label}` : ""}.png`;
    link.textContent = "PNG";
    link.title = "download (settings inside)";
    meta.append(caption, link);
    tile.append(img);
    if (s.prompt) {  // the prompt, shortened, under the image; the whole of it on hover
      const prompt = document.createElement("p");
      prompt.className = "prompt";
      prompt.textContent = shorten(s.prompt);
      prompt.title = s.prompt + (s.negative_prompt ? `\nnegative: ${s.negative_prompt}` : "");
      tile.append(prompt);
    }
    tile.append(meta);
    return tile;
  }));
  $("gallery").replaceChildren(...tiles);
}

async function cancel() {
  if (!state.job) return;
  $("status").textContent = "Cancelling…";
  try { await api(`/jobs/${state.job}`, { method: "DELETE" }); } catch (e) { $("status").textContent = `Error: ${e.message}`; }
}

// --- Compare tab ----------------------------------------------------------------------------------
function setupSide(side, modelName, values) {
  const select = $(`model-${side}`);
  select.value = modelName;
  buildOptions($(`options-${side}`), state.byName[modelName], `${side}-`, values);
}

function initCompare() {
  fillModels($("model-a"));
  fillModels($("model-b"));
  const [first, second] = state.models;
  setupSide("a", first.name, {});
  if (second) {
    setupSide("b", second.name, {});
  } else {  // one model: compare two of its settings, a cheaper one against its defaults
    const names = first.sample_options.map((s) => s.name);
    const alt = {};
    if (names.includes("sampler")) alt.sampler = "euler";
    if (names.includes("steps")) alt.steps = Math.max(2, Math.round(first.sample_options.find((s) => s.name === "steps").default / 3));
    setupSide("b", first.name, alt);
  }
  onCompareModelsChange();
  $("scores-by").value = state.models.length > 1 ? "model" : "settings";
}

function onCompareModelsChange() {
  // labels both set-ups share: those of model A (when B's classes differ, the label must exist in both)
  const a = state.byName[$("model-a").value], b = state.byName[$("model-b").value];
  const shared = a.classes.filter((c) => b.classes.some((d) => d.index === c.index && d.name === c.name));
  fillLabels($("compare-label"), { ...a, num_classes: shared.length, classes: shared }, { each: false });
  // one prompt box for both: shown when either model takes text, sent to each one that does
  const withText = [a, b].find((m) => takes(m, "prompt"));
  if (withText) showPromptBox($("compare-prompt-box"), $("compare-prompt"), withText);
  else $("compare-prompt-box").hidden = true;
}

function setPicking(on) {
  for (const id of ["pick-a", "pick-b", "pick-tie"]) $(id).disabled = !on;
}

function describeSetup(settings) {
  const skip = new Set(["model", "model_path", "family", "checkpoint", "seed", "label", "class_name", "prompt", "version"]);
  const parts = Object.entries(settings).filter(([k, v]) => !skip.has(k) && v !== null).map(([k, v]) => `${k} ${v}`);
  return `${settings.model}: ${parts.join(", ")}`;
}

async function newPair() {
  setPicking(false);
  $("new-pair").disabled = true;
  $("caption-a").textContent = "Left";
  $("caption-b").textContent = "Right";
  $("image-a").removeAttribute("src");
  $("image-b").removeAttribute("src");
  $("compare-progress").value = 0;
  const seed = Math.floor(Math.random() * 1e9);
  const labelChoice = $("compare-label").value;
  let label = null;
  if (labelChoice === RANDOM) {
    const choices = [...$("compare-label").options].map((o) => o.value).filter((v) => /^\d+$/.test(v));
    label = choices.length ? parseInt(choices[Math.floor(Math.random() * choices.length)], 10) : null;
  } else if (labelChoice !== "") label = parseInt(labelChoice, 10);
  const prompt = $("compare-prompt-box").hidden ? null : promptValue("compare-prompt");
  const sides = ["a", "b"].map((s) => {
    const m = state.byName[$(`model-${s}`).value];
    const body = { model: m.name, n: 1, seed, label, options: readOptions(m, `${s}-`) };
    if (prompt !== null && takes(m, "prompt")) body.prompt = prompt;
    return { setup: s.toUpperCase(), body };
  });
  if (Math.random() < 0.5) sides.reverse();  // blind: which set-up is on the left is random
  $("compare-status").textContent = "Generating the pair…";
  try {
    const progress = [0, 0];
    const jobs = await Promise.all(sides.map((side, i) => runJob(side.body, (j) => {
      progress[i] = j.progress || 0;
      $("compare-progress").value = (progress[0] + progress[1]) / 2;
    })));
    const bad = jobs.find((j) => j.status !== "done");
    if (bad) throw new Error(bad.status === "cancelled" ? "cancelled" : bad.error);
    const urls = await Promise.all(jobs.map((j) => imageURL(j.images[0])));
    $("image-a").src = urls[0];
    $("image-b").src = urls[1];
    state.pair = sides.map((side, i) => ({ setup: side.setup, model: side.body.model, settings: jobs[i].settings[0] }));
    const what = (label === null ? "no label" : `label ${jobs[0].settings[0].class_name ?? label}`)
      + (prompt === null ? "" : `, prompt “${shorten(prompt, 80)}”`);
    $("compare-status").textContent = `Seed ${seed}, ${what}. Which image is better?`;
    $("compare-status").title = prompt ?? "";
    setPicking(true);
  } catch (e) {
    $("compare-status").textContent = `Error: ${e.message}`;
  } finally {
    $("new-pair").disabled = false;
  }
}

async function pick(winner) {
  if (!state.pair) return;
  setPicking(false);
  const [left, right] = state.pair;
  state.pair = null;
  try {
    const saved = await api("/ratings", {
      method: "POST",
      body: { a: { model: left.model, settings: left.settings }, b: { model: right.model, settings: right.settings }, winner },
    });
    $("caption-a").textContent = `${left.setup} · ${describeSetup(left.settings)}`;
    $("caption-b").textContent = `${right.setup} · ${describeSetup(right.settings)}`;
    const said = winner === "tie" ? "a tie" : `${winner === "a" ? "left" : "right"} (set-up ${(winner === "a" ? left : right).setup})`;
    $("compare-status").textContent = `Recorded ${said}; ${saved.count} ratings in all. Press “New pair” for another.`;
    await loadScores();
  } catch (e) {
    $("compare-status").textContent = `Error: ${e.message}`;
  }
}

async function loadScores() {
  const result = await api(`/ratings/scores?by=${$("scores-by").value}`);
  const body = $("scores").tBodies[0];
  if (!result.scores.length) {
    const row = body.insertRow();
    body.replaceChildren(row);
    const cell = row.insertCell();
    cell.colSpan = 6;
    cell.className = "empty";
    cell.textContent = "No ratings yet.";
  } else {
    body.replaceChildren(...result.scores.map((s) => {
      const row = document.createElement("tr");
      const ev = s.evaluation;
      const cells = [
        s.name, s.elo.toFixed(1), s.bt_strength.toFixed(3), String(s.count), `${s.wins}–${s.losses}–${s.ties}`,
        ev ? `${ev.fid.toFixed(2)}` : "—",
      ];
      cells.forEach((text, i) => {
        const td = row.insertCell();
        td.textContent = text;
        if (i > 0) td.className = "num";
        if (i === 5 && ev) td.title = `extractor ${ev.extractor}, ${ev.n_fake} samples, ${JSON.stringify(ev.sampling)}`;
      });
      return row;
    }));
  }
  $("scores-method").textContent = result.method;
}

// --- start ----------------------------------------------------------------------------------------
function showTab(tab) {
  for (const t of document.querySelectorAll(".tab")) {
    const on = t === tab;
    t.classList.toggle("active", on);
    t.setAttribute("aria-selected", on);
    $(t.dataset.panel).hidden = !on;
  }
  if (tab.id === "compare-tab" && state.models.length) loadScores().catch((e) => { $("compare-status").textContent = `Error: ${e.message}`; });
}

async function loadModels() {
  try {
    const result = await api("/models");
    const { models } = result;
    state.models = models;
    state.byName = Object.fromEntries(models.map((m) => [m.name, m]));
    fillModels($("model"));
    buildFinishing(result.post);
    onModelChange();
    initCompare();
    $("status").textContent = "Ready.";
  } catch (e) {
    $("status").textContent = e.status === 401 || e.status === 403 ? `${e.message}: enter the key above.` : `Error: ${e.message}`;
  }
}

async function start() {
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showTab(t));
  $("model").addEventListener("change", onModelChange);
  $("generate").addEventListener("click", generate);
  $("generate-form").addEventListener("submit", (e) => e.preventDefault());  // Enter in a field: no page reload
  $("cancel").addEventListener("click", cancel);
  $("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e9); });
  clearSketch();
  drawable($("sketch-canvas"), { color: "#000", width: () => 6, onStroke: () => { state.sketchDrawn = true; } });
  $("sketch-clear").addEventListener("click", clearSketch);
  $("sketch-file").addEventListener("change", () => loadSketch().catch((e) => { $("status").textContent = `Error: ${e.message}`; }));
  drawable($("mask-canvas"), {
    color: "#f03e3e",
    width: () => Math.max(2, Math.round(Math.max($("mask-canvas").width, $("mask-canvas").height) / 12)),
    onStroke: () => { state.maskDrawn = true; },
  });
  $("image-file").addEventListener("change", loadEditImage);
  $("audio-file").addEventListener("change", () => loadAudio().catch((e) => { $("status").textContent = `Error: ${e.message}`; }));
  $("image-remove").addEventListener("click", removeEditImage);
  $("mask-clear").addEventListener("click", clearMask);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); });
  for (const id of ["post-denoise", "post-sharpen-on", "post-color", "post-upscale"]) $(id).addEventListener("change", onFinishingChange);
  $("post-color-file").addEventListener("change", () => loadColorReference().catch((e) => {
    state.colorReference = null;
    $("post-color-name").textContent = `Error: ${e.message}`;
  }));
  for (const s of ["a", "b"]) {
    $(`model-${s}`).addEventListener("change", () => { setupSide(s, $(`model-${s}`).value, {}); onCompareModelsChange(); });
  }
  $("new-pair").addEventListener("click", newPair);
  $("pick-a").addEventListener("click", () => pick("a"));
  $("pick-b").addEventListener("click", () => pick("b"));
  $("pick-tie").addEventListener("click", () => pick("tie"));
  $("scores-by").addEventListener("change", () => loadScores().catch(() => {}));
  $("api-key").value = localStorage.getItem("pixelforge-api-key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("pixelforge-api-key", $("api-key").value.trim());
    loadModels();
  });
  try {
    const health = await api("/health");
    state.authRequired = health.auth_required;
    $("key-box").hidden = !health.auth_required;
    $("server-status").textContent = `v${health.version} · ${health.models} model${health.models === 1 ? "" : "s"}`;
    $("server-status").className = "server-status ok";
  } catch (e) {
    $("server-status").textContent = "server unreachable";
    $("server-status").className = "server-status bad";
    return;
  }
  await loadModels();
}

start();
