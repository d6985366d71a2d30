// Neural Digit Recognizer, the page: a drawing pad, uploads, and the network's answer.
//
// The page holds no figures of its own: the answer comes from POST /api/v1/predict and
// the model's name, version and test accuracy from GET /api/v1/model. A correction of an
// answer goes to POST /api/v1/feedback with the answer's prediction_id. Every API call
// carries the short-lived token from GET /web/token (header X-Web-Token), so the page
// keeps working when the server requires API keys.

import { ApiError, callApi } from "./api.js";
import {
  OfflineReader,
  isNetworkError,
  newPredictionId,
  offlineCorrection,
  pending,
  registerWorker,
  retryPending,
} from "./pwa.js";

const ENDPOINTS = {
  number: "/api/v1/number?top_k=3",
  offline: "/api/v1/model/offline",
  offlineFeedback: "/api/v1/feedback/offline",
  model: "/api/v1/model",
  predict: "/api/v1/predict?include_input=true&top_k=10", // all ten: see "All ten digits"
  feedback: "/api/v1/feedback",
};
const DEBOUNCE_MS = 200; // live answer: this long after the pen last moved
const TOP_SHOWN = 3; // answers shown as bars; all ten are behind "All ten digits"
// Screen readers hear an answer once it has settled: shown, with the pen up, and still the
// answer this long later (a second stroke within it means the first answer is never heard).
const SETTLE_MS = 1000;
// A server that is away: the newest image is sent again after 1 s, 2 s, 4 s ... 10 s.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 10_000;
const PEN_WIDTH = 1 / 11; // stroke width as a share of the pad's side (MNIST-like strokes)
const MIN_STEP = 0.002; // ignore pen moves shorter than this share of the side
const EXPORT_SIDE = 280; // side of the PNG sent to the server, in pixels
// The export's pen follows the drawing, not the pad: its width is this share of the
// drawing's size (the longer side of the box around its points). It is what the pad's pen
// gives a digit three fifths of the pad tall, so a digit written small is not sent as a blob.
const EXPORT_PEN = 0.15;
const EXPORT_PEN_MIN = 1 / 50; // the thinnest export pen, as a share of the side: a dot stays a dot
const BLANK = "Draw a digit from 0 to 9 in the box.";
const NUMBER_BLANK = "Write a number in the wide box: a year, an amount, a house number.";
const UNSURE_BELOW = 0.5; // under this confidence the answer is worded as a guess
const BACKENDS = { onnx: "ONNX Runtime", torch: "PyTorch" };
// What the page says when the server's verdict is not "digit"; the guesses are then muted.
const DOUBTS = {
  not_a_digit: "That does not look like a digit.",
  several_digits: "That looks like more than one digit: draw one at a time.",
  unsure: "Not sure that is a digit.",
};

const $ = (id) => document.getElementById(id);
const ui = {
  layout: document.querySelector(".layout"),
  modeDigit: $("mode-digit"),
  modeNumber: $("mode-number"),
  script: $("script"),
  scriptPick: $("script-pick"),
  padHint: $("pad-hint"),
  boxes: $("boxes"),
  offlineUse: $("offline-use"),
  offlineToggle: $("offline-toggle"),
  offlineStatus: $("offline-status"),
  pad: $("pad"),
  canvas: $("canvas"),
  preview: $("upload-preview"),
  padEmpty: $("pad-empty"),
  dropCue: $("drop-cue"),
  undo: $("undo"),
  redo: $("redo"),
  clear: $("clear"),
  upload: $("upload"),
  file: $("file"),
  answer: $("answer"),
  digit: $("digit"),
  message: $("message"),
  confidence: $("confidence"),
  top: $("top"),
  all: $("all"),
  examples: document.querySelectorAll(".example"),
  topTitle: $("top-title"),
  seenImg: $("seen-img"),
  processing: $("processing"),
  padCaption: $("pad-caption"),
  announce: $("announce"),
  modelName: $("model-name"),
  modelAccuracy: $("model-accuracy"),
  modelBackend: $("model-backend"),
  feedback: $("feedback"),
  feedbackYes: $("feedback-yes"),
  feedbackStatus: $("feedback-status"),
  feedbackButtons: document.querySelectorAll("#feedback button"),
};

const NBSP = "\u00a0";
const PAD_EMPTY_TEXT = ui.padEmpty.textContent;
const percent = (fraction, digits = 1) => `${(fraction * 100).toFixed(digits)}${NBSP}%`;
const aDigit = (digit) => `${String(digit).startsWith("8") ? "an" : "a"} ${digit}`; // "an 8"

// A probability as people read it: a model's answer is never certain, so it never reads
// as certain, even when its probability rounds to 1 or to 0 in the server's floats.
function chance(p) {
  const shown = percent(p);
  if (shown === percent(1)) return `>${NBSP}${percent(0.999)}`;
  if (shown === percent(0)) return `<${NBSP}${percent(0.001)}`;
  return shown;
}

// --- talking to the API ----------------------------------------------------------------

// Failures worth sending the same image again for: the server is away (no answer at all,
// a proxy's 502 or 504) or restarting (503). Not a 500 (the same image would fail the same
// way) nor a 429 (its message says when to try again).
function isPassing(error) {
  if (!(error instanceof ApiError)) return true;
  return [502, 503, 504].includes(error.status);
}

// What went wrong, for people; ``retrying``: the page will try again by itself.
function friendly(error, retrying = false) {
  const later = retrying ? "" : " Try again in a moment.";
  if (!(error instanceof ApiError)) {
    return "The server cannot be reached. Check your connection.";
  }
  switch (error.code) {
    case "blank_image":
      return "The image looks empty. Draw a digit, or try a clearer picture.";
    case "unsupported_media_type":
      return "That file is not an image the server reads. Try a PNG, JPEG, WebP, BMP, GIF or TIFF.";
    case "payload_too_large":
    case "image_too_large":
      return "That image is too large. Try a smaller one.";
    case "invalid_image":
      return "That image seems damaged. Try another file.";
    case "rate_limited":
      return error.retryAfter
        ? `Too many requests. Try again in ${error.retryAfter} s.`
        : "Too many requests. Try again in a moment.";
    case "needs_server":
      return "The server cannot be reached, and only the server can read this image.";
    case "offline_off":
    case "offline_failed":
    case "offline_bundle_missing":
    case "model_hash_mismatch":
      return "The server cannot be reached, and this drawing could not be read on this device.";
    case "model_not_ready":
      return `The model is not loaded yet.${later}`;
    default:
      break;
  }
  if (error.status === 401 || error.status === 403) {
    return "The server refused this page's access. Reload the page.";
  }
  if (error.status >= 500) return `The server ran into a problem.${later}`;
  return `The server could not read that: ${error.message}`;
}

// --- the answer panel ------------------------------------------------------------------

let sent = 0; // number of the newest request (or of the newest blank state)
let shown = 0; // number of the request whose answer is on screen; older answers are dropped

function say(text, kind = "info") {
  ui.message.textContent = text;
  ui.message.dataset.kind = kind;
}

function resetAnswer(text) {
  ui.digit.textContent = "?";
  ui.digit.classList.remove("is-number");
  ui.boxes.replaceChildren();
  ui.digit.classList.remove("is-known", "is-guess");
  delete ui.answer.dataset.verdict;
  ui.confidence.hidden = true;
  ui.top.replaceChildren();
  ui.all.replaceChildren();
  ui.top.classList.remove("is-muted");
  ui.topTitle.textContent = "Top answers";
  ui.seenImg.hidden = true;
  ui.seenImg.removeAttribute("src");
  ui.processing.textContent = "\u2014";
  say(text);
  offerFeedback(null);
}

function showBlank() {
  clearTimeout(debounce);
  stopRetry();
  sent += 1;
  shown = sent;
  setBusy(false);
  resetAnswer(mode === "number" ? NUMBER_BLANK : BLANK);
}

function topItem({ digit, probability, character }, rank) {
  const item = document.createElement("li");
  item.className = rank === 0 ? "top-item is-first" : "top-item";
  item.dataset.digit = String(digit);
  const name = document.createElement("span");
  name.className = "top-digit";
  name.textContent = character ?? String(digit);
  if (character && character !== String(digit)) name.title = `the digit ${digit}`;
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  fill.style.setProperty("--p", String(probability));
  bar.append(fill);
  const value = document.createElement("span");
  value.className = "top-value";
  value.textContent = chance(probability);
  item.append(name, bar, value);
  return item;
}

// The headline, the big digit and the confidence line for a verdict of "digit".
function showDigit(answer) {
  ui.digit.textContent = answer.character ?? String(answer.digit);
  ui.digit.classList.remove("is-guess");
  ui.digit.classList.add("is-known");
  const sure = answer.confidence >= UNSURE_BELOW;
  const guess = `${aDigit(answer.digit)}${inScript(answer)}`;
  say(sure ? `It looks like ${guess}.` : `Hard to tell. Maybe ${guess}?`);
  ui.confidence.textContent = `Confidence ${chance(answer.confidence)}`;
  ui.confidence.hidden = false;
}

// ", in Devanagari" for a digit of another script than Latin; nothing for Latin.
function inScript(answer) {
  const name = answer.script && answer.script !== "latin" ? scriptName(answer.script) : "";
  return name ? ` (${answer.character}, in ${name})` : "";
}

function scriptName(name) {
  const words = name.split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1));
  return SCRIPT_NAMES[name] ?? words.join(" ");
}

// The same for any other verdict: a plain headline, and no digit shown as an answer.
function showDoubt(answer, verdict) {
  const unsure = verdict === "unsure";
  // an unsure one shows its guess
  ui.digit.textContent = unsure ? answer.character ?? String(answer.digit) : "?";
  ui.digit.classList.remove("is-known");
  ui.digit.classList.toggle("is-guess", unsure);
  const others = (answer.alternatives ?? []).map((a) => `${a.character} (${a.digit}, ${scriptName(a.script)})`);
  if (answer.script_uncertain && others.length) {
    say(`It could be ${aDigit(answer.digit)}${inScript(answer)} or ${others.join(" or ")}: the scripts look alike here. Choose the script to be sure.`);
  } else {
    say(DOUBTS[verdict] ?? DOUBTS.unsure);
  }
  ui.confidence.textContent = ""; // a digit's confidence means nothing when it is no digit
  ui.confidence.hidden = true;
}

function showAnswer(answer) {
  const verdict = answer.verdict ?? "digit"; // servers before verdicts send none
  const doubt = verdict !== "digit";
  ui.answer.dir = RIGHT_TO_LEFT.has(answer.script) ? "rtl" : "ltr";
  ui.answer.dataset.verdict = verdict;
  if (doubt) showDoubt(answer, verdict);
  else showDigit(answer);
  ui.topTitle.textContent = doubt ? "Best guesses" : "Top answers";
  ui.top.classList.toggle("is-muted", doubt);
  ui.top.replaceChildren(...answer.top.slice(0, TOP_SHOWN).map(topItem));
  const byDigit = [...answer.top].sort((a, b) => a.digit - b.digit); // "All ten digits"
  ui.all.replaceChildren(...byDigit.map((entry) => topItem(entry, entry === answer.top[0] ? 0 : 1)));
  if (answer.input_image) {
    ui.seenImg.src = answer.input_image;
    ui.seenImg.hidden = false;
  }
  ui.processing.textContent = answer.offline
    ? `${answer.processing_ms.toFixed(1)} ms on this device (offline)`
    : `${answer.processing_ms.toFixed(1)} ms`;
  ui.answer.dataset.offline = String(Boolean(answer.offline));
  offerFeedback(answer.prediction_id ?? null); // servers before corrections send none
  const known = ui.modelName.dataset.version;
  if (known && answer.model && answer.model.version !== known) loadModelCard(); // model swapped
  let words = ui.message.textContent;
  if (verdict === "unsure") words += ` Best guess: ${answer.digit}.`;
  if (!ui.confidence.hidden) words += ` ${ui.confidence.textContent}.`;
  announceSettled(words);
}

// --- a whole number: the digits found, with boxes over the pad ----------------------------

// Where the image being read sits in the pad, in shares of the pad (an upload is shown
// whole, letterboxed; a drawing fills it).
function imageRect(width, height) {
  if (upload === null) return { left: 0, top: 0, width: 1, height: 1 };
  const pad = ui.pad.getBoundingClientRect();
  const scale = Math.min(pad.width / width, pad.height / height);
  const w = (width * scale) / pad.width;
  const h = (height * scale) / pad.height;
  return { left: (1 - w) / 2, top: (1 - h) / 2, width: w, height: h };
}

function selectDigit(answer, index) {
  const chosen = answer.digits[index];
  for (const [i, box] of [...ui.boxes.children].entries()) {
    box.setAttribute("aria-pressed", String(i === index));
  }
  ui.topTitle.textContent = `Digit ${index + 1} of ${answer.digits.length}: top answers`;
  ui.top.classList.toggle("is-muted", chosen.verdict !== "digit");
  ui.top.replaceChildren(...chosen.top.slice(0, TOP_SHOWN).map(topItem));
  offerFeedback(chosen.prediction_id ?? null); // "Right? / Wrong" now speaks of this digit
}

function showNumber(answer) {
  // In another script than Latin: its characters, then the value ("٢٠٢٦ = 2026").
  const foreign = answer.script && answer.script !== "latin" && answer.number;
  const said = foreign ? `${answer.characters} = ${answer.number}` : answer.number || "?";
  ui.answer.dataset.verdict = answer.complete ? "digit" : "not_a_digit";
  ui.answer.dir = "ltr"; // the value reads left to right; each box shows its character
  ui.digit.textContent = said;
  ui.digit.classList.add("is-known", "is-number");
  ui.digit.classList.remove("is-guess");
  const words = answer.complete
    ? `It reads ${said}.`
    : `Part of it is not a digit. Read: ${answer.number || "nothing"}.`;
  say(words);
  ui.confidence.textContent = `${chance(answer.confidence)} sure of the whole number`;
  ui.confidence.hidden = false;
  ui.all.replaceChildren();
  ui.seenImg.hidden = true;
  ui.processing.textContent = `${answer.processing_ms.toFixed(1)} ms`;
  offerFeedback(null); // until a digit is chosen (the first, below)
  const source = upload === null
    ? { width: Math.round(EXPORT_SIDE * padAspect()), height: EXPORT_SIDE }
    : { width: ui.preview.naturalWidth, height: ui.preview.naturalHeight };
  const rect = imageRect(source.width, source.height);
  ui.boxes.replaceChildren(...answer.digits.map((d, i) => {
    const [x, y, w, h] = d.box;
    const box = document.createElement("button");
    box.type = "button";
    box.className = d.verdict === "digit" ? "box" : "box is-doubt";
    box.textContent = d.verdict === "digit" ? d.character ?? String(d.digit) : "?";
    box.setAttribute("aria-pressed", "false");
    box.setAttribute("aria-label", `Digit ${i + 1} of ${answer.digits.length}: `
      + (d.verdict === "digit" ? `${d.digit}, ${chance(d.confidence)}` : "not a digit"));
    box.style.left = `${(rect.left + (x / source.width) * rect.width) * 100}%`;
    box.style.top = `${(rect.top + (y / source.height) * rect.height) * 100}%`;
    box.style.width = `${(w / source.width) * rect.width * 100}%`;
    box.style.height = `${(h / source.height) * rect.height * 100}%`;
    box.addEventListener("click", () => selectDigit(answer, i));
    return box;
  }));
  if (answer.digits.length) selectDigit(answer, 0);
  announceSettled(words);
}

// An error; ``retryMs``: the same image goes again by itself after that long.
function showError(error, retryMs = 0) {
  resetAnswer("");
  const words = friendly(error, retryMs > 0);
  const again = retryMs ? ` Trying again in ${Math.round(retryMs / 1000)}${NBSP}s\u2026` : "";
  say(words + again, "error");
  if (ui.announce.textContent !== words) announce(words); // once, not at every new try
}

// Screen readers hear settled answers only: not the live updates while the pen moves,
// nor the answer to the first stroke of a digit whose second stroke follows at once.
let settling = 0;

function announce(text) {
  clearTimeout(settling);
  ui.announce.textContent = text;
}

function announceSettled(text) {
  clearTimeout(settling);
  if (pen.id !== null) return; // the pen is down: this answer is already out of date
  settling = setTimeout(() => { ui.announce.textContent = text; }, SETTLE_MS);
}

function cancelAnnouncement() {
  clearTimeout(settling);
}

function setBusy(busy) {
  ui.answer.setAttribute("aria-busy", String(busy));
}

let retry = { timer: 0, delay: 0, again: null }; // the newest image, to send again

function stopRetry() {
  clearTimeout(retry.timer);
  retry = { timer: 0, delay: 0, again: null };
}

// Sends the newest image again now (the browser says it is back online, say).
function retryNow() {
  if (retry.again === null) return;
  clearTimeout(retry.timer);
  retry.again();
}

// Sends one image; its answer is shown unless a newer request's answer already is. When
// the server is away, the same image goes again after a growing pause, while it is still
// the newest, and the answer replaces the error by itself.
async function ask(number, body, contentType, drawing = null) {
  setBusy(true);
  const init = { method: "POST", body };
  if (contentType) init.headers = { "Content-Type": contentType };
  try {
    const reading = mode === "number";
    const endpoint = reading ? ENDPOINTS.number : ENDPOINTS.predict;
    const answer = await callApi(`${endpoint}&script=${encodeURIComponent(script)}`, init);
    if (number === sent) stopRetry();
    if (pending.count()) retryPending(0, showPending); // the server is back
    if (number >= shown) { // equal: this image's earlier try failed and its error is shown
      shown = number;
      if (reading) showNumber(answer);
      else showAnswer(answer);
    }
  } catch (error) {
    if (number < sent || number < shown) return; // a newer image took its place
    if (isPassing(error) && drawing !== null && reader.stored !== null && mode === "digit") {
      stopRetry();
      await askOffline(number, drawing); // read on this device instead
      return;
    }
    shown = number;
    if (isPassing(error)) {
      const delay = retry.delay
        ? Math.min(retry.delay * 2, RETRY_MAX_MS)
        : Math.max(RETRY_FIRST_MS, (error.retryAfter ?? 0) * 1000);
      clearTimeout(retry.timer);
      retry.delay = delay;
      retry.again = () => {
        retry.again = null;
        if (number === sent) ask(number, body, contentType);
      };
      retry.timer = setTimeout(retryNow, delay);
      showError(error, delay);
    } else {
      stopRetry();
      showError(error);
      if (body instanceof FormData && REFUSED_FILE.has(error.code)) dropUpload();
    }
  } finally {
    if (number === sent) setBusy(false);
  }
}

// --- reading on this device (offline use) ----------------------------------------------

const reader = new OfflineReader();
const offlineAnswers = new Map(); // prediction_id -> answer given here, until corrected
const OFFLINE_KEPT = 20; // answers given here that can still be corrected

function seenImage(pixels, side) {
  const canvas = document.createElement("canvas");
  canvas.width = side;
  canvas.height = side;
  const image = canvas.getContext("2d").createImageData(side, side);
  pixels.forEach((v, i) => { image.data.set([v, v, v, 255], i * 4); });
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas.toDataURL("image/png");
}

// Reads a drawing with the model stored on this device (the server cannot be reached).
async function askOffline(number, canvas) {
  setBusy(true);
  try {
    const engine = await reader.ready();
    if (engine === null) throw new ApiError(0, "offline_off", "offline use is off");
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    const result = await engine.predict(pixels, 10, script);
    if (number < sent || number < shown) return;
    shown = number;
    // As online: a digit of another script than Latin is not kept for corrections (they
    // fine-tune the Latin digit model), so it gets no id and no "Right? / Wrong".
    const latin = result.script === "latin";
    const answer = {
      ...result,
      prediction_id: latin ? newPredictionId() : null,
      answered_at: new Date().toISOString(),
      input_image: seenImage(result.input, engine.meta.preprocessing.size),
      offline: true,
    };
    if (latin) offlineAnswers.set(answer.prediction_id, answer);
    for (const id of [...offlineAnswers.keys()].slice(0, -OFFLINE_KEPT)) offlineAnswers.delete(id);
    showAnswer(answer);
  } catch (error) {
    if (number < sent || number < shown) return;
    shown = number;
    showError(error instanceof ApiError ? error : new ApiError(0, "offline_failed", String(error)));
  } finally {
    if (number === sent) setBusy(false);
  }
}

function showBundle(bytes) {
  return `${(bytes / 1e6).toFixed(1)}${NBSP}MB`;
}

async function showOffline(meta = null) {
  const stored = reader.stored;
  ui.offlineToggle.setAttribute("aria-pressed", String(stored !== null));
  ui.offlineToggle.textContent = stored === null ? "Use offline" : "Stop using offline";
  if (stored !== null) {
    ui.offlineStatus.textContent = `Ready offline: drawings are read on this device when the `
      + `server cannot be reached (${showBundle(stored.bytes)} stored). Uploads need the server.`;
  } else if (meta !== null) {
    const models = meta.script_model ? "the model, the script model" : "the model";
    ui.offlineStatus.textContent = `Read drawings without the network: downloads `
      + `${showBundle(meta.bundle_bytes)} once (${models} and ONNX Runtime Web).`;
  }
  ui.offlineUse.hidden = false;
}

async function toggleOffline() {
  ui.offlineToggle.disabled = true;
  try {
    if (reader.stored !== null) {
      await reader.disable();
      await showOffline(await callApi(ENDPOINTS.offline).catch(() => null));
    } else {
      ui.offlineStatus.textContent = "Downloading the model and ONNX Runtime Web…";
      await reader.enable();
      await showOffline();
    }
  } catch (error) {
    ui.offlineStatus.textContent = `Offline use could not be turned on. ${friendly(error)}`;
  } finally {
    ui.offlineToggle.disabled = false;
  }
}

// Opened without the network (no model card): the scripts the engine here reads.
function offerEngineScripts(engine) {
  if (engine === null || ui.modelName.dataset.version) return; // the card said which
  const model = engine.meta.script_model;
  if (model) offerScripts(model.scripts.map((s) => ({ ...s, digits: s.digits.join("") })));
}

async function startOffline() {
  if (!OfflineReader.supported) return; // no Cache Storage or WebAssembly: online only
  ui.offlineToggle.addEventListener("click", toggleOffline);
  if (reader.stored !== null) {
    await showOffline();
    // started in the background, ready for an outage
    reader.ready().then(offerEngineScripts).catch(() => {});
    if (navigator.onLine) reader.refresh().then((changed) => changed && showOffline()).catch(() => {});
    return;
  }
  await showOffline(await callApi(ENDPOINTS.offline).catch(() => null));
}

// Corrections waiting on this device for the server.
function showPending() {
  const waiting = pending.count();
  if (!ui.feedback.hidden && waiting === 0 && ui.feedbackStatus.dataset.kind === "waiting") {
    setFeedbackStatus("Sent to the server. Thanks!");
  }
}

// --- corrections: "Right? Yes" or "Wrong: tap the right digit" -------------------------

let feedbackFor = null; // prediction_id of the answer on screen, while it can be corrected
let feedbackSent = 0; // number of the newest correction sent; older replies are dropped

function setFeedbackStatus(text, kind = "info") {
  ui.feedbackStatus.textContent = text;
  ui.feedbackStatus.dataset.kind = kind;
}

function markPressed(button) {
  for (const other of ui.feedbackButtons) {
    other.setAttribute("aria-pressed", String(other === button));
  }
}

// Shows the control, fresh, for a new answer; hides it when there is none to correct.
function offerFeedback(predictionId) {
  feedbackFor = predictionId;
  feedbackSent += 1;
  markPressed(null);
  setFeedbackStatus("");
  ui.feedback.removeAttribute("aria-busy");
  if (predictionId === null && ui.feedback.contains(document.activeElement)) {
    ui.pad.focus(); // its button is about to disappear: keep the keyboard on the page
  }
  ui.feedback.hidden = predictionId === null;
}

function feedbackTrouble(error) {
  if (error instanceof ApiError && error.code === "prediction_not_found") {
    return "That answer has expired, so the correction was not saved. "
      + "Draw or upload the digit again to correct it.";
  }
  return `The correction was not saved. ${friendly(error)}`;
}

// Sends the correction that ``button`` stands for; a second one replaces the first.
async function sendFeedback(button) {
  if (feedbackFor === null) return;
  const predictionId = feedbackFor;
  feedbackSent += 1;
  const number = feedbackSent;
  const label = button.dataset.label;
  const body = { prediction_id: predictionId };
  if (button === ui.feedbackYes) body.correct = true;
  else body.label = label === "none" ? null : Number(label);
  ui.feedback.setAttribute("aria-busy", "true");
  const given = offlineAnswers.get(predictionId); // an answer given on this device
  const correction = "correct" in body ? { correct: true } : { label: body.label };
  const item = given
    ? { kind: "offline", body: offlineCorrection(given, correction) }
    : { kind: "served", body };
  const labelled = "label" in body ? body.label : (given && given.verdict === "digit" ? given.digit : null);
  const as = labelled === null || labelled === undefined ? "not a digit" : aDigit(labelled);
  try {
    const reply = given
      ? await callApi(ENDPOINTS.offlineFeedback, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ corrections: [item.body] }),
      })
      : await callApi(ENDPOINTS.feedback, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    if (number !== feedbackSent) return; // a newer answer or correction took its place
    markPressed(button);
    const saved = "label" in reply ? reply.label : labelled; // "Yes" saves the answer's digit
    const shownAs = saved === null || saved === undefined ? "not a digit" : aDigit(saved);
    setFeedbackStatus(`Thanks \u2014 saved as ${shownAs}.`);
  } catch (error) {
    if (number !== feedbackSent) return;
    if (isNetworkError(error) || (error instanceof ApiError && [502, 503, 504].includes(error.status))) {
      pending.add(item); // kept on this device, sent when the server answers again
      retryPending(1000, showPending);
      markPressed(button);
      setFeedbackStatus(`Saved on this device as ${as}: it goes to the server when the `
        + "connection is back.", "waiting");
      return;
    }
    setFeedbackStatus(feedbackTrouble(error), "error");
  } finally {
    if (number === feedbackSent) ui.feedback.removeAttribute("aria-busy");
  }
}

// With the keyboard in the control, typing a digit sends it.
function onFeedbackKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || !/^[0-9]$/.test(event.key)) return;
  const button = ui.feedback.querySelector(`button[data-label="${event.key}"]`);
  if (!button) return;
  event.preventDefault();
  button.focus();
  sendFeedback(button);
}

function wireFeedback() {
  for (const button of ui.feedbackButtons) {
    button.addEventListener("click", () => sendFeedback(button));
  }
  ui.feedback.addEventListener("keydown", onFeedbackKey);
}

// --- what to read: one digit, or a whole number ------------------------------------------

// --- which script: any (auto), or one the server reads -------------------------------------

const SCRIPT_KEY = "digitrec-script";
const SCRIPT_NAMES = { arabic_indic: "Arabic-Indic" }; // others: the name, capitalised
const RIGHT_TO_LEFT = new Set();
let script = "latin";

// The scripts the server reads (GET /api/v1/model), in the picker; the last choice kept.
function offerScripts(scripts) {
  if (!Array.isArray(scripts) || scripts.length < 2) {
    ui.scriptPick.hidden = true; // Latin only: nothing to choose
    script = "latin";
    return;
  }
  const options = [];
  for (const s of scripts) {
    if (s.right_to_left) RIGHT_TO_LEFT.add(s.name);
    options.push(new Option(`${scriptName(s.name)} ${s.digits}`, s.name));
  }
  options.push(new Option("Any script (guess)", "auto"));
  ui.script.replaceChildren(...options);
  let saved = null;
  try {
    saved = localStorage.getItem(SCRIPT_KEY);
  } catch {
    saved = null;
  }
  script = saved === "auto" || scripts.some((s) => s.name === saved) ? saved : "latin";
  ui.script.value = script;
  ui.scriptPick.hidden = false;
}

function wireScripts() {
  ui.script.addEventListener("change", () => {
    script = ui.script.value;
    try {
      localStorage.setItem(SCRIPT_KEY, script);
    } catch {
      // storage refused: the choice is not remembered
    }
    readAgain(); // what is on the pad, in that script
  });
}

function readAgain() {
  if (upload !== null) {
    const form = new FormData();
    form.append("image", upload.file, upload.name);
    sent += 1;
    ask(sent, form);
  } else if (strokes.length) {
    schedulePrediction();
  }
}

const MODE_KEY = "digitrec-mode";
let mode = "digit";

// The pad's width over its height: 1 for a digit's square pad, more for a number's.
function padAspect() {
  return mode === "number" && ui.canvas.height > 0 ? ui.canvas.width / ui.canvas.height : 1;
}

function setMode(wanted, { remember = true } = {}) {
  if (wanted === mode || pen.id !== null) return;
  mode = wanted;
  for (const [button, which] of [[ui.modeDigit, "digit"], [ui.modeNumber, "number"]]) {
    button.setAttribute("aria-checked", String(mode === which));
    button.tabIndex = mode === which ? 0 : -1; // one tab stop: the chosen one
  }
  ui.layout.classList.toggle("is-number", mode === "number");
  ui.pad.classList.toggle("is-number", mode === "number");
  ui.canvas.setAttribute("aria-label", mode === "number"
    ? "Drawing area: write a number here"
    : "Drawing area: draw one digit here");
  if (remember) {
    try {
      localStorage.setItem(MODE_KEY, mode);
    } catch {
      // storage refused: the mode is not remembered
    }
  }
  strokes.length = 0; // a digit's strokes make no sense stretched over a number's pad
  undone.length = 0;
  dropUpload();
  updateControls();
  queuePaint();
  showBlank();
}

function wireModes() {
  ui.modeDigit.addEventListener("click", () => setMode("digit"));
  ui.modeNumber.addEventListener("click", () => setMode("number"));
  for (const button of [ui.modeDigit, ui.modeNumber]) {
    button.addEventListener("keydown", (event) => { // arrows move within the radio group
      if (!["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"].includes(event.key)) return;
      event.preventDefault();
      const other = button === ui.modeDigit ? ui.modeNumber : ui.modeDigit;
      other.focus();
      other.click();
    });
  }
  let saved = null;
  try {
    saved = localStorage.getItem(MODE_KEY);
  } catch {
    saved = null;
  }
  if (saved === "number") setMode("number", { remember: false });
}

// --- the drawing pad -------------------------------------------------------------------

const strokes = []; // each stroke: [[x, y], ...] as shares of the side, so resizing is lossless
const pen = { id: null, stroke: null, rect: null };
let upload = null; // { url, name, file } while an uploaded image is on the pad
const undone = []; // what Undo took away, newest last: a stroke, or { file } for an upload
let debounce = 0;
let paintQueued = false;
const ctx = ui.canvas.getContext("2d");

// Strokes are kept as shares of the pad's width and height; the pen is a share of the
// shorter side (the height of a number's wide pad, the side of the digit's square one).
function paint(context, width, height, ink, penWidth = PEN_WIDTH) {
  context.lineCap = "round";
  context.lineJoin = "round";
  context.lineWidth = Math.min(width, height) * penWidth;
  context.strokeStyle = ink;
  context.fillStyle = ink;
  for (const points of strokes) {
    const [x0, y0] = points[0];
    context.beginPath();
    if (points.length === 1) {
      context.arc(x0 * width, y0 * height, context.lineWidth / 2, 0, 2 * Math.PI);
      context.fill();
      continue;
    }
    context.moveTo(x0 * width, y0 * height);
    // Quadratic curves through the midpoints: smooth strokes from jittery pointer samples.
    for (let i = 1; i < points.length - 1; i += 1) {
      const [x, y] = points[i];
      const [nx, ny] = points[i + 1];
      context.quadraticCurveTo(x * width, y * height, ((x + nx) / 2) * width, ((y + ny) / 2) * height);
    }
    const [xn, yn] = points[points.length - 1];
    context.lineTo(xn * width, yn * height);
    context.stroke();
  }
}

function repaint() {
  paintQueued = false;
  const { width, height } = ui.canvas;
  ctx.clearRect(0, 0, width, height);
  paint(ctx, width, height, getComputedStyle(ui.canvas).getPropertyValue("--ink").trim() || "black");
}

function queuePaint() {
  if (!paintQueued) {
    paintQueued = true;
    requestAnimationFrame(repaint);
  }
}

// The pen for the export, as a share of the side: in step with the drawing's size.
function exportPen(aspect = 1) {
  const low = [Infinity, Infinity];
  const high = [-Infinity, -Infinity];
  for (const points of strokes) {
    for (const [x, y] of points) {
      low[0] = Math.min(low[0], x);
      low[1] = Math.min(low[1], y);
      high[0] = Math.max(high[0], x);
      high[1] = Math.max(high[1], y);
    }
  }
  // A digit's size is its box's longer side; a number's is its height (on the wide pad).
  const size = aspect === 1 ? Math.max(high[0] - low[0], high[1] - low[1]) : high[1] - low[1];
  return Math.max(size * EXPORT_PEN, EXPORT_PEN_MIN);
}

// The drawing as the server should see it: dark strokes on a transparent square, drawn
// with a pen in step with the drawing's size, however large the pad's pen made it look.
function exportCanvas(aspect = 1) {
  const out = document.createElement("canvas");
  out.width = Math.round(EXPORT_SIDE * aspect);
  out.height = EXPORT_SIDE;
  paint(out.getContext("2d"), out.width, out.height, "black", exportPen(aspect));
  return out;
}

// The same as a PNG, as it goes to the server.
function exportDrawing(canvas = exportCanvas()) {
  return new Promise((resolve) => { canvas.toBlob(resolve, "image/png"); });
}

function isEmpty() {
  return strokes.length === 0 && upload === null;
}

function updateControls() {
  const empty = isEmpty();
  ui.undo.setAttribute("aria-disabled", String(empty));
  ui.redo.setAttribute("aria-disabled", String(undone.length === 0));
  ui.clear.setAttribute("aria-disabled", String(empty));
  ui.padEmpty.hidden = !empty;
}

async function predictDrawing() {
  clearTimeout(debounce);
  if (strokes.length === 0) {
    showBlank();
    return;
  }
  sent += 1;
  const number = sent;
  const canvas = exportCanvas(padAspect());
  if (mode === "number") {
    const blob = await exportDrawing(canvas);
    if (number === sent && blob) await ask(number, blob, "image/png");
    return;
  }
  if (!navigator.onLine && reader.engine) {
    await askOffline(number, canvas); // no network: do not wait for a request to fail
    return;
  }
  const blob = await exportDrawing(canvas);
  if (number === sent && blob) await ask(number, blob, "image/png", canvas);
}

function schedulePrediction() {
  clearTimeout(debounce);
  debounce = setTimeout(predictDrawing, DEBOUNCE_MS);
}

function dropUpload() {
  if (upload === null) return;
  URL.revokeObjectURL(upload.url);
  upload = null;
  ui.preview.hidden = true;
  ui.preview.removeAttribute("src");
  ui.preview.alt = "";
  ui.padEmpty.textContent = PAD_EMPTY_TEXT;
  ui.padCaption.hidden = true;
}

function point(event) {
  const { left, top, width, height } = pen.rect;
  return [(event.clientX - left) / width, (event.clientY - top) / height];
}

function onPointerDown(event) {
  if (pen.id !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  ui.canvas.setPointerCapture(event.pointerId);
  pen.id = event.pointerId;
  pen.rect = ui.canvas.getBoundingClientRect();
  pen.stroke = [point(event)];
  cancelAnnouncement();
  if (upload !== null) dropUpload();
  undone.length = 0; // a new stroke starts a new history
  strokes.push(pen.stroke);
  updateControls();
  queuePaint();
}

function onPointerMove(event) {
  if (event.pointerId !== pen.id) return;
  const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const sample of samples.length ? samples : [event]) {
    const [x, y] = point(sample);
    const [px, py] = pen.stroke[pen.stroke.length - 1];
    if (Math.hypot(x - px, y - py) >= MIN_STEP) pen.stroke.push([x, y]);
  }
  queuePaint();
  schedulePrediction();
}

function onPointerEnd(event) {
  if (event.pointerId !== pen.id) return;
  pen.id = null;
  pen.stroke = null;
  queuePaint();
  predictDrawing();
}

function undo() {
  if (pen.id !== null || isEmpty()) return;
  if (upload !== null) {
    undone.push({ file: upload.file });
    dropUpload();
  } else {
    undone.push(strokes.pop());
  }
  updateControls();
  queuePaint();
  if (isEmpty()) announce("Drawing cleared.");
  predictDrawing();
}

function redo() {
  if (pen.id !== null || undone.length === 0) return;
  const step = undone.pop();
  if (Array.isArray(step)) {
    strokes.push(step);
    updateControls();
    queuePaint();
    predictDrawing();
  } else {
    predictFile(step.file, { keepHistory: true });
  }
}

function clearPad() {
  if (pen.id !== null) return;
  const had = !isEmpty();
  strokes.length = 0;
  undone.length = 0;
  dropUpload();
  updateControls();
  queuePaint();
  showBlank();
  if (had) announce("Drawing cleared.");
}

// Keeps the canvas's pixels matched to the screen's, so strokes stay sharp on high-DPI.
function fitCanvas(entries) {
  const entry = entries[0];
  const box = entry.devicePixelContentBoxSize && entry.devicePixelContentBoxSize[0];
  const width = box ? box.inlineSize : Math.round(entry.contentRect.width * window.devicePixelRatio);
  const height = box ? box.blockSize : Math.round(entry.contentRect.height * window.devicePixelRatio);
  if (width > 0 && height > 0 && (width !== ui.canvas.width || height !== ui.canvas.height)) {
    ui.canvas.width = width;
    ui.canvas.height = height;
    repaint();
  }
}

// --- uploads: file picker, drag and drop, paste ----------------------------------------

const REFUSED_FILE = new Set(["unsupported_media_type", "invalid_image"]);

function predictFile(file, { keepHistory = false } = {}) {
  if (!file || pen.id !== null) return;
  if (!keepHistory) undone.length = 0;
  strokes.length = 0;
  dropUpload(); // a refused file takes the previous image and its caption away too
  if (file.type && !file.type.startsWith("image/")) {
    updateControls();
    queuePaint();
    clearTimeout(debounce);
    stopRetry();
    sent += 1;
    shown = sent;
    setBusy(false);
    showError(new ApiError(415, "unsupported_media_type", "not an image"));
    return;
  }
  const name = file.name || "pasted image";
  upload = { url: URL.createObjectURL(file), name, file };
  ui.preview.src = upload.url;
  ui.preview.alt = `Uploaded image: ${upload.name}`;
  ui.preview.hidden = false;
  ui.padCaption.textContent = `${upload.name}: draw to replace it`;
  ui.padCaption.hidden = false;
  updateControls();
  queuePaint();
  const form = new FormData();
  form.append("image", file, upload.name);
  sent += 1;
  ask(sent, form);
}

function imageFrom(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
}

function carriesFiles(event) {
  return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types).includes("Files");
}

// An example image, sent as if it were uploaded.
async function tryExample(button) {
  try {
    const response = await fetch(button.dataset.src);
    if (!response.ok) throw new ApiError(response.status, `http_${response.status}`, "");
    const blob = await response.blob();
    const name = button.dataset.src.split("/").pop();
    predictFile(new File([blob], name, { type: blob.type }));
  } catch (error) {
    sent += 1;
    shown = sent;
    showError(error);
  }
}

function wireUploads() {
  ui.upload.addEventListener("click", () => ui.file.click());
  for (const button of ui.examples) {
    button.addEventListener("click", () => tryExample(button));
  }
  ui.file.addEventListener("change", () => {
    predictFile(ui.file.files[0]);
    ui.file.value = ""; // choosing the same file again still fires "change"
  });
  ui.preview.addEventListener("error", () => {
    // The browser cannot show every format the server reads (TIFF, say): keep the name.
    if (upload !== null) {
      ui.preview.hidden = true;
      ui.padEmpty.hidden = false;
      ui.padEmpty.textContent = upload.name;
    }
  });
  document.addEventListener("paste", (event) => {
    const file = imageFrom(event.clipboardData && event.clipboardData.items);
    if (file) {
      event.preventDefault();
      predictFile(file);
    }
  });
  let depth = 0; // dragenter/dragleave fire for every child element crossed
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    depth += 1;
    ui.dropCue.hidden = false;
  });
  document.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (depth === 0) ui.dropCue.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth = 0;
    ui.dropCue.hidden = true;
    predictFile(event.dataTransfer.files[0]);
  });
}

// --- keyboard --------------------------------------------------------------------------

function onKey(event) {
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
  const command = event.ctrlKey || event.metaKey;
  const key = event.key.toLowerCase();
  if (command && !event.shiftKey && !event.altKey && key === "z") {
    event.preventDefault();
    undo();
  } else if (command && !event.altKey && ((event.shiftKey && key === "z") || key === "y")) {
    event.preventDefault();
    redo();
  } else if (!command && !event.altKey && (event.key === "Escape" || event.key === "Delete")) {
    clearPad();
  }
}

// --- the model card --------------------------------------------------------------------

let cardRetryMs = 0;

async function loadModelCard() {
  try {
    const card = await callApi(ENDPOINTS.model);
    cardRetryMs = 0;
    ui.modelName.dataset.version = card.version;
    const version = document.createElement("span");
    version.className = "version";
    version.textContent = card.version;
    ui.modelName.replaceChildren(`${card.name} `, version);
    const size = card.parameters ? `, ${card.parameters.toLocaleString("en")} parameters` : "";
    ui.modelName.title = `${card.architecture}${size}`;
    if (typeof card.test_accuracy === "number") {
      const on = card.test_size ? ` on ${card.test_size.toLocaleString("en")} MNIST test images` : "";
      ui.modelAccuracy.textContent = `${percent(card.test_accuracy, 2)}${on}`;
    } else {
      ui.modelAccuracy.textContent = "not measured";
    }
    if (card.dry_run) ui.modelAccuracy.textContent += " (dry run: not a real model)";
    ui.modelBackend.textContent = BACKENDS[card.backend] || card.backend;
    offerScripts(card.scripts);
  } catch (error) {
    if (isPassing(error)) {
      cardRetryMs = Math.min(cardRetryMs * 2 || RETRY_FIRST_MS, RETRY_MAX_MS);
      setTimeout(loadModelCard, cardRetryMs);
    }
    ui.modelName.textContent = "unavailable";
    ui.modelAccuracy.textContent = "unknown";
    ui.modelBackend.textContent = "unknown";
    if (!(error instanceof ApiError) || error.code !== "model_not_ready") return;
    say(friendly(error), "error");
  }
}

// --- start -----------------------------------------------------------------------------

function start() {
  ui.canvas.addEventListener("pointerdown", onPointerDown);
  ui.canvas.addEventListener("pointermove", onPointerMove);
  ui.canvas.addEventListener("pointerup", onPointerEnd);
  ui.canvas.addEventListener("pointercancel", onPointerEnd);
  ui.canvas.addEventListener("lostpointercapture", onPointerEnd);
  ui.canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  ui.undo.addEventListener("click", undo);
  ui.redo.addEventListener("click", redo);
  ui.clear.addEventListener("click", clearPad);
  document.addEventListener("keydown", onKey);
  wireUploads();
  wireFeedback();
  wireModes();
  wireScripts();
  const observer = new ResizeObserver(fitCanvas);
  try {
    observer.observe(ui.canvas, { box: "device-pixel-content-box" });
  } catch {
    observer.observe(ui.canvas); // browsers without device-pixel-content-box
  }
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", queuePaint);
  window.addEventListener("online", () => {
    retryNow();
    retryPending(500, showPending);
  });
  registerWorker();
  startOffline();
  retryPending(0, showPending); // what waited from an earlier visit
  updateControls();
  showBlank();
  loadModelCard();
}

start();
