// The attnserve explorer: one image to a served model through the vision API's JSON
// (service/http/vision.py), and the reply drawn: labels or boxes, the server's stage timings, and every
// attention map the model has over the image, grouped by kind and in depth order. No framework, no build.
"use strict";

// Kinds in the order a reader meets them, with what each one is (attnserve/maps.py owns the names).
const KINDS = {
  rollout: ["Attention rollout", "class-token attention carried through every block (Abnar & Zuidema 2020)"],
  self_attention: ["Self-attention, per block", "the class token's attention on the patches, heads averaged"],
  self_attention_heads: ["Self-attention heads, per block", "drawn as the mean of the block's heads"],
  cam: ["Class activation map", "the top class's evidence on the last feature grid"],
  spatial: ["Spatial attention", "a gate on every position of a feature map"],
  full: ["Full gates", "a gate on every channel and position, drawn as the channel mean"],
  axis_h: ["Height gates", "coordinate-style attention along the height, drawn as the channel mean"],
  axis_w: ["Width gates", "coordinate-style attention along the width, drawn as the channel mean"],
  channel: ["Channel attention", "a weight per channel (squeeze-and-excitation style), as bars"],
};
const STAGES = ["decode", "preprocess", "queue", "inference", "postprocess", "encode"];
// The server's overlay ramp (service/stages/encode.py: _RAMP), so a map looks the same either way.
const RAMP = [[0, 0, 130], [0, 90, 255], [0, 220, 220], [250, 230, 0], [255, 70, 0], [160, 0, 0]];
const LETTERBOX_FILL = "rgb(114, 114, 114)"; // attnserve/imaging.py: LETTERBOX_FILL
const TOKEN_KEY = "attnserve-token";

const $ = (selector) => document.querySelector(selector);
const state = { models: [], info: null, image: null, sequence: 0, rendered: 0 };

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function svgElement(tag, attributes = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function setStatus(text, kind = "busy") {
  const status = $("#status");
  status.textContent = text;
  status.className = kind === "error" ? "error" : "";
  document.body.dataset.state = kind;
}

// ---- the API -------------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = {};
  const token = $("#token").value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const reply = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) {
    const hint = response.status === 401 || response.status === 403 ? " (set the access token above)" : "";
    throw new Error(`HTTP ${response.status}: ${reply.error || response.statusText}${hint}`);
  }
  return reply;
}

const modelPath = (name) => `/v1/models/${encodeURIComponent(name)}`;

async function loadModels() {
  const select = $("#model");
  try {
    const reply = await api("GET", "/v1/models");
    state.models = reply.models.filter((m) => m.ready);
  } catch (error) {
    setStatus(`Cannot list the models: ${error.message}`, "error");
    return;
  }
  select.replaceChildren(...state.models.map((m) => element("option", { value: m.name, text: `${m.name} (${m.task})` })));
  select.disabled = state.models.length === 0;
  if (state.models.length === 0) {
    setStatus("The server serves no model that is ready.", "error");
    return;
  }
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && state.models.some((m) => m.name === wanted)) select.value = wanted;
  await selectModel();
}

async function selectModel() {
  const name = $("#model").value;
  try {
    state.info = await api("GET", modelPath(name));
  } catch (error) {
    setStatus(`Cannot describe ${name}: ${error.message}`, "error");
    return;
  }
  const i = state.info;
  $("#model-summary").textContent =
    `${i.task}, version ${i.version}; input ${i.inputWidth}×${i.inputHeight} (${i.resize}); ` +
    `${i.attention.length} attention outputs; ${i.precision} on ${i.provider}` +
    (i.warnings.length ? `; warnings: ${i.warnings.join("; ")}` : "");
  if (state.image) await predict();
  else setStatus("Choose an image.", "idle");
}

// ---- the image -----------------------------------------------------------------------------------

async function useImage(blob, name) {
  const encoded = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  const picture = new Image();
  const url = URL.createObjectURL(blob);
  picture.src = url;
  try {
    await picture.decode();
  } catch {
    URL.revokeObjectURL(url);
    picture.removeAttribute("src"); // the browser cannot show it; the server says whether it can read it
  }
  if (state.image) URL.revokeObjectURL(state.image.picture.src);
  state.image = { encoded, picture, name };
  await predict();
}

// The image as the model sees it, as attnserve/imaging.py's fit makes it: the model-grid maps lie on this.
function fitted(picture, info) {
  const width = info.inputWidth, height = info.inputHeight;
  const w = picture.naturalWidth, h = picture.naturalHeight;
  if (!w || !h) return ""; // a format the browser cannot show (TIFF): the maps alone
  const canvas = element("canvas", { width, height });
  const context = canvas.getContext("2d");
  if (info.resize === "center_crop") {
    const scale = Math.max(width / w, height / h);
    const newW = Math.max(width, Math.round(w * scale)), newH = Math.max(height, Math.round(h * scale));
    const left = Math.floor((newW - width) / 2), top = Math.floor((newH - height) / 2);
    const sx = newW / w, sy = newH / h;
    context.drawImage(picture, left / sx, top / sy, width / sx, height / sy, 0, 0, width, height);
  } else if (info.resize === "letterbox") {
    const scale = Math.min(width / w, height / h);
    const newW = Math.max(1, Math.round(w * scale)), newH = Math.max(1, Math.round(h * scale));
    context.fillStyle = LETTERBOX_FILL;
    context.fillRect(0, 0, width, height);
    context.drawImage(picture, Math.floor((width - newW) / 2), Math.floor((height - newH) / 2), newW, newH);
  } else {
    context.drawImage(picture, 0, 0, width, height);
  }
  return canvas.toDataURL();
}

// ---- one prediction ------------------------------------------------------------------------------

async function predict() {
  const info = state.info, image = state.image;
  if (!info || !image) return;
  const sequence = ++state.sequence;
  const geometry = document.querySelector("input[name=geometry]:checked").value;
  const verb = info.task === "detection" ? "detect" : "classify";
  setStatus(`${verb} with ${info.name}…`);
  const started = performance.now();
  let reply;
  try {
    reply = await api("POST", `${modelPath(info.name)}/${verb}`, {
      images: [{ encoded: image.encoded }],
      maps: { select: ["all"], encoding: "MAP_ENCODING_PNG_HEATMAP", geometry },
    });
  } catch (error) {
    if (sequence === state.sequence) setStatus(`${image.name}: ${error.message}`, "error");
    return;
  }
  const roundTrip = performance.now() - started;
  if (sequence !== state.sequence) return; // a newer request is on its way
  const result = reply.results[0];
  const groups = await mapGroups(info, image, result, geometry);
  if (sequence !== state.sequence) return; // drawing took long enough for a newer one to start
  showPrediction(info, image, result);
  $("#maps").replaceChildren(...groups);
  showTiming(reply.timing, roundTrip);
  $("#results").hidden = false;
  const found = verb === "detect" ? `${result.detections.length} objects` : `top label ${result.labels[0]?.label ?? "none"}`;
  setStatus(`${image.name}: ${found}, ${result.maps.length} maps; ${roundTrip.toFixed(0)} ms round trip.`, "done");
  document.body.dataset.rendered = String(++state.rendered); // for scripts that drive the page
}

// The maps, one section per kind, in depth order within each.
async function mapGroups(info, image, result, geometry) {
  const base = geometry === "MAP_GEOMETRY_MODEL_GRID" ? fitted(image.picture, info) : image.picture.src;
  const byName = new Map(result.maps.map((m) => [m.name, m]));
  const top = result.labels?.[0]?.label;
  // the shape of the image the maps lie on: the model's input, or the original
  const lies = geometry === "MAP_GEOMETRY_MODEL_GRID"
    ? [info.inputWidth, info.inputHeight] : [result.imageSize.width, result.imageSize.height];
  const groups = [];
  const kinds = new Set([...Object.keys(KINDS), ...info.attention.map((a) => a.kind)]); // a newer kind too
  for (const kind of kinds) {
    const [title, about] = KINDS[kind] || [kind, ""];
    const outputs = info.attention.filter((a) => a.kind === kind && byName.has(a.name));
    if (outputs.length === 0) continue;
    const figures = await Promise.all(
      outputs.map((output, depth) =>
        mapFigure(output, byName.get(output.name), depth, outputs.length, { base, lies, top })),
    );
    groups.push(
      element("section", { class: "group", "data-kind": kind },
        element("h3", { text: title }), element("p", { class: "quiet", text: about }),
        element("div", { class: "figures" }, ...figures)),
    );
  }
  return groups;
}

function showPrediction(info, image, result) {
  const picture = $("#picture");
  const img = element("img", { alt: `the image sent: ${image.name}` });
  img.src = image.picture.src;
  picture.replaceChildren(img);
  const labels = $("#labels");
  if (info.task === "detection") {
    const { width, height } = result.imageSize;
    const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "aria-hidden": "true" });
    for (const d of result.detections) {
      const { x1, y1, x2, y2 } = d.box;
      svg.append(svgElement("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1 }));
      const text = svgElement("text", { x: x1 + 2, y: Math.max(12, y1 - 3) });
      text.textContent = `${d.label} ${d.score.toFixed(2)}`;
      svg.append(text);
    }
    picture.append(svg);
    labels.replaceChildren(...result.detections.map((d) => scored(d.label, d.score,
      `at ${[d.box.x1, d.box.y1, d.box.x2, d.box.y2].map((v) => Math.round(v)).join(", ")}`)));
    if (result.detections.length === 0) labels.replaceChildren(element("li", { text: "no object above the threshold" }));
  } else {
    labels.replaceChildren(...result.labels.map((l) => scored(l.label, l.score)));
  }
}

function scored(label, score, where = "") {
  return element("li", { class: "label" },
    element("strong", { class: "name", text: label }), ` ${score.toFixed(3)} `,
    element("meter", { min: "0", max: "1", value: String(score), "aria-label": `${label} score` }),
    where ? ` ${where}` : "");
}

// ---- maps ----------------------------------------------------------------------------------------

async function mapFigure(output, map, depth, count, { base, lies, top }) {
  const figure = element("figure", { class: "map", "data-map": output.name, "data-kind": output.kind });
  const grid = output.shape.slice(2).map(Number);
  const where = count > 1 ? `depth ${depth + 1} of ${count}` : "";
  let detail;
  if (map.encoding === "MAP_ENCODING_FLOAT16") {
    const values = float16(map.data);
    figure.append(channelChart(values, output.name));
    const low = Math.min(...values), high = Math.max(...values);
    detail = `${values.length} channels, ${low.toFixed(2)}–${high.toFixed(2)}`;
  } else {
    figure.append(await overlay(map, base, lies, output.name));
    detail = `grid ${grid.join("×")}` + (output.stride ? `, stride ${output.stride}` : "");
  }
  const notes = [output.source, detail, where];
  if (output.kind === "cam" && top) notes.push(`for ${top}`);
  if (output.kind === "self_attention_heads") notes.push(`mean of ${output.shape[1]} heads`);
  figure.append(element("figcaption", {}, element("strong", { text: output.name }), element("br"),
    notes.filter(Boolean).join(" · ")));
  return figure;
}

// The map's grayscale PNG coloured by the ramp, over the image; the opacity slider sets the overlay's.
async function overlay(map, base, [width, height], name) {
  const heat = new Image();
  heat.src = `data:image/png;base64,${map.data}`;
  await heat.decode();
  const canvas = element("canvas", {
    width: heat.naturalWidth, height: heat.naturalHeight, role: "img",
    "aria-label": `${name} attention over the image`,
    class: map.geometry === "MAP_GEOMETRY_MODEL_GRID" ? "heat grid" : "heat",
  });
  const context = canvas.getContext("2d");
  context.drawImage(heat, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const [r, g, b] = colour(pixels.data[i] / 255);
    pixels.data[i] = r; pixels.data[i + 1] = g; pixels.data[i + 2] = b; pixels.data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  const background = element("img", { alt: "" });
  if (base) background.src = base;
  const stack = element("div", { class: "stack" }, background, canvas);
  stack.style.aspectRatio = `${width} / ${height}`; // the shape of the image the map lies on
  return stack;
}

function colour(value) {
  const position = Math.min(Math.max(value, 0), 1) * (RAMP.length - 1);
  const low = Math.min(Math.floor(position), RAMP.length - 2), t = position - low;
  return RAMP[low].map((c, i) => Math.round(c + (RAMP[low + 1][i] - c) * t));
}

function drawRamp(canvas) {
  const context = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    context.fillStyle = `rgb(${colour(x / (canvas.width - 1)).join(", ")})`;
    context.fillRect(x, 0, 1, canvas.height);
  }
}

function float16(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const values = [];
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const h = view.getUint16(i, true);
    const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    if (exponent === 0) values.push(sign * 2 ** -14 * (fraction / 1024));
    else if (exponent === 31) values.push(fraction ? NaN : sign * Infinity);
    else values.push(sign * 2 ** (exponent - 15) * (1 + fraction / 1024));
  }
  return values;
}

function channelChart(values, name) {
  const width = 200, height = 120;
  const svg = svgElement("svg", { class: "channels", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${name}: the weight of each of ${values.length} channels` });
  const bar = width / values.length;
  values.forEach((v, i) => {
    const h = Math.max(0, Math.min(1, v)) * height; // channel weights are gates in [0, 1]
    const rect = svgElement("rect", { x: i * bar, y: height - h, width: Math.max(bar - 0.5, 0.5), height: h });
    const title = svgElement("title");
    title.textContent = `channel ${i}: ${v.toFixed(3)}`;
    rect.append(title);
    svg.append(rect);
  });
  return svg;
}

// ---- timing --------------------------------------------------------------------------------------

function showTiming(timing, roundTrip) {
  const ms = (key) => Number(timing[`${key}Us`] || 0) / 1000;
  const rows = STAGES.map((stage) => [stage, ms(stage)]);
  const total = ms("total");
  rows.push(["server total", total], ["network, JSON and drawing", Math.max(0, roundTrip - total)]);
  const body = $("#timing tbody");
  body.replaceChildren(...rows.map(([stage, value]) => element("tr", {},
    element("td", { text: stage }), element("td", { text: value.toFixed(2) }),
    element("td", {}, barOf(value, roundTrip)))));
  body.append(element("tr", { class: "total" }, element("td", { text: "round trip" }),
    element("td", { text: roundTrip.toFixed(2) }), element("td")));
}

function barOf(value, whole) {
  const bar = element("span", { class: "bar" });
  bar.style.width = `${Math.round((200 * value) / Math.max(whole, 1e-9))}px`;
  return bar;
}

// ---- wiring --------------------------------------------------------------------------------------

function wire() {
  const token = $("#token");
  token.value = sessionStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => {
    sessionStorage.setItem(TOKEN_KEY, token.value.trim());
    loadModels();
  });
  $("#model").addEventListener("change", selectModel);
  const file = $("#file"), drop = $("#drop");
  file.addEventListener("change", () => file.files[0] && useImage(file.files[0], file.files[0].name));
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); file.click(); }
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const dropped = event.dataTransfer.files[0];
    if (dropped) useImage(dropped, dropped.name);
  });
  for (const button of document.querySelectorAll(".sample")) {
    button.addEventListener("click", async () => {
      const response = await fetch(button.dataset.src);
      await useImage(await response.blob(), `sample: ${button.textContent}`);
    });
  }
  const opacity = $("#opacity");
  const showOpacity = () => {
    document.documentElement.style.setProperty("--overlay-opacity", String(opacity.value / 100));
    $("#opacity-value").textContent = `${opacity.value} %`;
  };
  opacity.addEventListener("input", showOpacity);
  showOpacity();
  drawRamp($("#ramp"));
  for (const radio of document.querySelectorAll("input[name=geometry]")) radio.addEventListener("change", predict);
}

wire();
loadModels();
