"use strict";
// The service's demo page, plain JS with no dependencies so it works offline. An image goes to
// POST v1/pose; a video file or the webcam streams JPEG frames over the v1/stream WebSocket, and each
// answer is drawn over the very frame it belongs to (kept by its sequence number), coloured by track id.

const $ = (id) => document.getElementById(id);
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#ffe119", "#9a6324"];
const MAX_SIDE = 640; // frames are scaled down to this before they are sent
const TARGET_FPS = 15;
const MAX_IN_FLIGHT = 2; // frames sent and not yet answered or reported dropped; more would only queue
const base = new URL(".", location.href); // the page's folder, so the demo also works behind a path prefix

// What the page did, for the browser test (and the curious, in the console).
const demo = { mode: "idle", answered: 0, people: 0, dropped: 0, errors: [], skeleton: null, lastPeople: [], streamUrl: null };
window.poseDemo = demo;

const frameCanvas = $("frame");
const overlay = $("overlay");
const video = $("video");
const capture = document.createElement("canvas");
const sentFrames = new Map(); // seq -> ImageBitmap of the frame as sent
let ws = null;
let timer = null;
let inFlight = 0;
let nextSeq = 0;
let answerTimes = [];
let lastImage = null;

const authHeaders = () => ($("key").value ? { "X-API-Key": $("key").value } : {});
const options = () => ({
  flip: $("flip").checked,
  score_threshold: Number($("threshold").value),
  smoothing: $("smoothing").checked,
});

function setStatus(text) {
  $("status").textContent = text || "";
  if (text) demo.errors.push(text);
}

function setMode(mode) {
  demo.mode = mode;
  $("mode").textContent = mode;
  $("stop").disabled = mode === "idle" || mode === "image"; // an image is answered once: nothing runs to stop
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? `${body.error.code}: ${body.error.message}` : response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModel() {
  const response = await fetch(new URL("v1/models", base), { headers: authHeaders() });
  if (!response.ok) {
    setStatus(`model info: ${await errorText(response)}`);
    return;
  }
  const model = (await response.json()).models[0];
  demo.skeleton = model.skeleton;
  $("model").textContent = `${model.name} v${model.version} · ${model.runtime.backend} on ${model.device}`;
  $("threshold").value = model.score_threshold;
  $("threshold-value").textContent = Number(model.score_threshold).toFixed(2);
  setStatus("");
}

function resize(width, height) {
  for (const canvas of [frameCanvas, overlay]) {
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
  }
}

// people: [{keypoints: [[x, y, score], ...], bbox: [x, y, w, h], track_id?}]
function drawPeople(people, colorOf) {
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const width = Math.max(2, Math.round(Math.max(overlay.width, overlay.height) / 200));
  ctx.lineWidth = width;
  ctx.lineCap = "round";
  ctx.font = `bold ${width * 6}px sans-serif`;
  people.forEach((person, i) => {
    const color = colorOf(person, i);
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    for (const [a, b] of demo.skeleton || []) {
      const [xa, ya] = person.keypoints[a];
      const [xb, yb] = person.keypoints[b];
      ctx.beginPath();
      ctx.moveTo(xa, ya);
      ctx.lineTo(xb, yb);
      ctx.stroke();
    }
    for (const [x, y] of person.keypoints) {
      ctx.beginPath();
      ctx.arc(x, y, width * 1.3, 0, 2 * Math.PI);
      ctx.fill();
    }
    if (person.track_id !== undefined) {
      ctx.fillText(`#${person.track_id}`, person.bbox[0], Math.max(width * 6, person.bbox[1] - width));
    }
  });
  demo.people = people.length;
  demo.lastPeople = people;
  $("people").textContent = people.length;
}

// --- image: one POST ---

async function runImage(file) {
  stop();
  setMode("image");
  lastImage = file;
  const bitmap = await createImageBitmap(file);
  resize(bitmap.width, bitmap.height);
  frameCanvas.getContext("2d").drawImage(bitmap, 0, 0);
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  const { flip, score_threshold } = options();
  const url = new URL("v1/pose", base);
  url.searchParams.set("flip", flip);
  url.searchParams.set("score_threshold", score_threshold);
  const started = performance.now();
  const response = await fetch(url, {
    method: "POST",
    body: file,
    headers: { ...authHeaders(), "Content-Type": file.type || "application/octet-stream" },
  });
  if (!response.ok) {
    setStatus(await errorText(response));
    return;
  }
  const body = await response.json();
  const people = body.results[0].people.map((p) => ({
    score: p.score,
    bbox: p.bbox,
    keypoints: p.keypoints.map((k) => [k.x, k.y, k.score]),
  }));
  $("latency").textContent = (performance.now() - started).toFixed(0);
  $("server-latency").textContent = body.timings.total_ms.toFixed(0);
  $("fps").textContent = "–";
  drawPeople(people, (_, i) => PALETTE[i % PALETTE.length]);
  demo.answered += 1;
  setStatus("");
}

// --- video file or webcam: frames over the WebSocket ---

function connect() {
  if (ws) {
    const old = ws;
    ws = null;
    old.close(1000);
  }
  const url = new URL("v1/stream", base);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [name, value] of Object.entries(options())) url.searchParams.set(name, value);
  if ($("key").value) url.searchParams.set("token", $("key").value); // browsers cannot set WebSocket headers
  const socket = new WebSocket(url);
  demo.streamUrl = url.pathname + url.search;
  inFlight = 0;
  nextSeq = 0;
  clearSent(Infinity);
  socket.onmessage = (event) => {
    if (ws === socket) onAnswer(JSON.parse(event.data)); // a replaced connection's late answers are stale
  };
  socket.onclose = (event) => {
    if (ws !== socket) return;
    ws = null;
    if (event.code !== 1000) setStatus(`stream closed (${event.code}) ${event.reason}`);
  };
  ws = socket;
}

function clearSent(upTo) {
  for (const [seq, bitmap] of sentFrames) {
    if (seq <= upTo) {
      bitmap.close();
      sentFrames.delete(seq);
    }
  }
}

function onAnswer(message) {
  if (message.type === "ready") {
    demo.skeleton = message.skeleton;
    return;
  }
  inFlight = Math.max(0, inFlight - 1 - message.dropped); // dropped frames get no answer of their own
  demo.dropped += message.dropped;
  $("dropped").textContent = demo.dropped;
  if (message.type === "error") {
    clearSent(message.seq);
    setStatus(`frame ${message.seq}: ${message.code}: ${message.message}`);
    return;
  }
  const now = performance.now();
  answerTimes = answerTimes.filter((t) => now - t < 1000);
  answerTimes.push(now);
  $("fps").textContent = answerTimes.length;
  if (message.time !== null) $("latency").textContent = (now - message.time).toFixed(0);
  $("server-latency").textContent = message.latency_ms.toFixed(0);
  const bitmap = sentFrames.get(message.seq);
  if (bitmap) {
    resize(bitmap.width, bitmap.height);
    frameCanvas.getContext("2d").drawImage(bitmap, 0, 0);
  }
  clearSent(message.seq);
  drawPeople(message.people, (person) => PALETTE[person.track_id % PALETTE.length]);
  demo.answered += 1;
}

async function sendFrame() {
  const socket = ws;
  if (!socket || socket.readyState !== WebSocket.OPEN || inFlight >= MAX_IN_FLIGHT) return;
  if (video.readyState < 2 || !video.videoWidth) return;
  inFlight += 1;
  const time = performance.now();
  const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  capture.width = Math.round(video.videoWidth * scale);
  capture.height = Math.round(video.videoHeight * scale);
  capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
  const bitmap = await createImageBitmap(capture);
  const jpeg = await new Promise((resolve) => capture.toBlob(resolve, "image/jpeg", 0.85));
  if (ws !== socket || socket.readyState !== WebSocket.OPEN) {
    bitmap.close();
    return;
  }
  sentFrames.set(nextSeq++, bitmap); // the server numbers binary messages the same way
  socket.send(JSON.stringify({ time }));
  socket.send(jpeg);
}

async function startStream(mode) {
  await video.play();
  setMode(mode);
  setStatus("");
  connect();
  timer = setInterval(sendFrame, 1000 / TARGET_FPS);
}

async function runVideo(file) {
  stop();
  video.src = URL.createObjectURL(file);
  await startStream("video");
}

async function runWebcam() {
  stop();
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    setStatus(`webcam: ${err.message}`);
    return;
  }
  await startStream("webcam");
}

function stop() {
  clearInterval(timer);
  timer = null;
  if (ws) {
    const socket = ws;
    ws = null;
    socket.close(1000);
  }
  video.pause();
  if (video.srcObject) {
    video.srcObject.getTracks().forEach((track) => track.stop());
    video.srcObject = null;
  }
  if (video.src) {
    URL.revokeObjectURL(video.src);
    video.removeAttribute("src");
  }
  clearSent(Infinity);
  setMode("idle");
}

function optionsChanged() {
  if (demo.mode === "image" && lastImage) runImage(lastImage);
  else if (ws) connect(); // stream options hold per connection: reconnect with the new ones
}

$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  (file.type.startsWith("video/") ? runVideo(file) : runImage(file)).catch((err) => setStatus(err.message));
  event.target.value = ""; // choosing the same file again still fires
});
$("webcam").addEventListener("click", () => runWebcam());
$("stop").addEventListener("click", () => stop());
$("threshold").addEventListener("input", () => ($("threshold-value").textContent = Number($("threshold").value).toFixed(2)));
for (const id of ["flip", "threshold", "smoothing"]) $(id).addEventListener("change", optionsChanged);
$("key").addEventListener("change", () => loadModel().then(optionsChanged));
loadModel().catch((err) => setStatus(err.message));
