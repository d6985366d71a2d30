// Neural Digit Recognizer, offline mode: the served model running in the browser.
//
// loadEngine() is called on request only ("Use offline"), never on the first load: it
// reads GET /api/v1/model/offline, imports the vendored ONNX Runtime Web (the
// single-threaded SIMD WebAssembly build), downloads the model's ONNX file (its sha256
// checked where the browser offers crypto.subtle) and opens a session. The engine's
// predict() answers a drawing as POST /api/v1/predict would: the server's preprocessing
// (preprocess.js), softmax with the calibration temperature, the verdict of rejection.py
// with the model's thresholds, the same fields. Errors are api.js's ApiError, with the
// server's codes (blank_image, validation_error); "needs_server" (status 0) marks a
// drawing only the server can prepare (preprocess.js says which).
//
// When the metadata announces a script model (digits of other writing systems), it is
// downloaded and checked the same way and opened in a second session; predict(imageData,
// topK, script) then reads the drawing in ``script`` (a script's name, "auto", or "latin":
// the digit model's answer untouched) as multiscript.py's ScriptModel.read does (readIn,
// within, valued below), from the same 28x28 input. The digit characters and constants
// come from the metadata, never from a copy here.

import { ApiError, callApi, webToken } from "../api.js";
import { PreprocessError, prepareDrawing } from "./preprocess.js";

const METADATA_URL = "/api/v1/model/offline";
const DIGITS = 10; // the first ten outputs are the digits (rejection.py)
const NOT_A_DIGIT = 10;
const SEVERAL_DIGITS = 11;
const DECIMALS = 1e6; // answers are rounded to 6 decimals, as the server's are

// GET with the page token, as bytes; a refused token (401) is renewed once.
async function fetchBytes(url) {
  for (let attempt = 0; ; attempt += 1) {
    const headers = { "X-Web-Token": await webToken(attempt > 0) };
    const response = await fetch(url, { headers });
    if (response.status === 401 && attempt === 0) continue;
    if (!response.ok) throw await ApiError.from(response);
    return new Uint8Array(await response.arrayBuffer());
  }
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) return null; // not a secure context: cannot check
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function softmax(values, temperature = 1) {
  const x = values.map((v) => v / temperature);
  const top = Math.max(...x);
  const e = x.map((v) => Math.exp(v - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

// rejection.py's SCORES: higher when the image looks more like one digit.
const SCORES = {
  extra_class: (logits) => softmax(logits).slice(0, DIGITS).reduce((a, b) => a + b, 0),
  max_softmax: (logits) => Math.max(...softmax(logits.slice(0, DIGITS))),
  energy: (logits) => {
    const digits = logits.slice(0, DIGITS);
    const top = Math.max(...digits);
    return top + Math.log(digits.reduce((a, v) => a + Math.exp(v - top), 0));
  },
};

function verdictOf(logits, score, rejection) {
  if (rejection === null || score >= rejection.accept) return "digit";
  if (score >= rejection.reject) return "unsure";
  if (logits.length > SEVERAL_DIGITS && logits[SEVERAL_DIGITS] > logits[NOT_A_DIGIT]) {
    return "several_digits";
  }
  return "not_a_digit";
}

const rounded = (p) => Math.round(p * DECIMALS) / DECIMALS;
const LATIN = "latin";
const AUTO = "auto";
const LATIN_DIGITS = Array.from({ length: DIGITS }, (_, d) => String(d));
const sum = (values) => values.reduce((a, b) => a + b, 0);
// Indices, most likely first; ties keep the lower index first (numpy's stable argsort).
const byValue = (values) => values.map((_, i) => i).sort((a, b) => values[b] - values[a] || a - b);

// The server's answer (Predictor.answer) for one row of raw outputs.
export function answer(logits, topK, meta) {
  const probs = softmax(logits.slice(0, DIGITS), meta.temperature);
  const rejection = meta.rejection;
  const score = rejection === null ? Infinity : SCORES[rejection.method](logits);
  const order = byValue(probs);
  const top = order.slice(0, topK).map((d) => ({ digit: d, probability: rounded(probs[d]) }));
  const verdict = verdictOf(logits, score, rejection);
  return {
    digit: top[0].digit,
    confidence: top[0].probability,
    is_digit: verdict === "digit",
    verdict,
    digit_score: rejection === null ? null : rounded(score),
    top,
    probabilities: probs.map(rounded),
    model: { name: meta.model.name, version: meta.model.version },
    prediction_id: null, // nothing is kept on the server for a correction to refer to
    arm: null,
    ...written(top[0].digit, top, LATIN, LATIN_DIGITS),
    script_uncertain: false,
    alternatives: [],
  };
}

// The fields that say how an answer is written: its script, the digit's character, the
// top entries with theirs (``digits``: the script's ten characters).
function written(digit, top, script, digits) {
  return {
    script,
    character: digits[digit],
    top: top.map((t) => ({ ...t, character: digits[t.digit] })),
  };
}

// multiscript.within: one script's ten digit probabilities (and the "not a digit" one,
// ``junk``) -> the answer's digit, confidence, top-k and verdict; and the ten, summing to 1.
export function within(ten, topK, sure, junk = 0) {
  const total = sum(ten);
  const probs = ten.map((v) => v / total);
  const order = byValue(probs).slice(0, topK);
  const confidence = rounded(probs[order[0]]);
  const verdict = junk >= sure ? "not_a_digit" : confidence >= sure ? "digit" : "unsure";
  const top = order.map((d) => ({ digit: d, probability: rounded(probs[d]) }));
  return { fields: { digit: order[0], confidence, top, verdict }, probs };
}

// The digit model's ``latin`` answer read with ``fields`` from ``within`` in the k-th
// script of ``model`` (the metadata's script_model).
function readAs(latin, { fields, probs }, k, model) {
  const { name, digits } = model.scripts[k];
  return {
    ...latin,
    ...fields,
    is_digit: fields.verdict === "digit",
    probabilities: probs.map(rounded),
    digit_score: null,
    ...written(fields.digit, fields.top, name, digits),
  };
}

// multiscript.ScriptModel._valued: read by value over every script but Latin (``values``:
// each value's summed probability); the script is the one that gives that value most.
function valued(p, values, latin, answer, topK, model) {
  const read = within(values, topK, model.sure);
  const others = model.scripts.map((_, k) => k).filter((k) => k !== latin);
  let best = others[0];
  for (const k of others) if (p[k][read.fields.digit] > p[best][read.fields.digit]) best = k;
  return [readAs(answer, read, best, model), best];
}

// multiscript.ScriptModel.read: the digit model's ``answer`` for ``script`` (a script's
// name or "auto"; "latin": untouched), given one row of the script model's ``logits``.
export function readIn(logits, answer, script, topK, model) {
  if (script === LATIN) return answer;
  const every = softmax(logits);
  const junk = model.not_a_digit ? every[every.length - 1] : 0;
  const p = model.scripts.map((_, k) => every.slice(DIGITS * k, DIGITS * (k + 1)));
  const names = model.scripts.map((s) => s.name);
  if (script !== AUTO) {
    const k = names.indexOf(script);
    return readAs(answer, within(p[k], topK, model.sure, junk), k, model);
  }
  const mass = p.map(sum);
  const order = byValue(mass);
  const latin = names.indexOf(LATIN);
  const foreign = p.filter((_, k) => k !== latin);
  const values = LATIN_DIGITS.map((_, d) => sum(foreign.map((ten) => ten[d])));
  const abroad = sum(values);
  const { latin_keep: keep, foreign_sure: sure } = model.auto;
  const rejected = model.rejected.includes(answer.verdict);
  const atHome = latin >= 0 && mass[latin] >= abroad;
  const keepLatin = answer.verdict === "digit" && latin >= 0 && mass[latin] >= keep;
  const doubtful = rejected && (abroad < sure || junk >= abroad);
  let [chosen, best] = atHome || keepLatin
    ? [{ ...answer, script: LATIN }, latin]
    : valued(p, values, latin, answer, topK, model);
  // still not a digit; its value is the best guess, as for a script given
  if (doubtful && best !== latin) chosen = { ...chosen, verdict: answer.verdict, is_digit: false };
  if (model.rejected.includes(chosen.verdict)) return chosen; // no other reading to offer
  const alternatives = [];
  for (const k of order) {
    if (k === best || mass[k] < model.close) continue;
    const digit = byValue(p[k])[0];
    if (digit === chosen.digit) continue;
    const { name, digits } = model.scripts[k];
    alternatives.push({ script: name, digit, character: digits[digit], probability: rounded(mass[k]) });
  }
  if (alternatives.length) {
    const verdict = chosen.verdict === "digit" ? "unsure" : chosen.verdict;
    chosen = { ...chosen, script_uncertain: true, alternatives, verdict, is_digit: verdict === "digit" };
  }
  return chosen;
}

// multiscript.choose: the script to read in, or the server's 400 saying why not.
function choose(model, script) {
  const names = model === null ? [] : model.scripts.map((s) => s.name);
  if (model === null && (script === AUTO || script === LATIN)) return LATIN;
  if (script === AUTO || names.includes(script)) return script;
  const known = model === null ? "auto or latin" : [AUTO, ...names].join(", ");
  throw new ApiError(400, "unsupported_script", `digits of '${script}' are not read on this device; choose one of: ${known}`);
}

// Load everything the offline mode needs; resolves to the engine:
//   { meta, bundleBytes, verified, scripts (the names it reads, Latin first),
//     predict(imageData, topK, script = "latin") -> answer with `input` and
//     `processing_ms`, like POST /api/v1/predict?script=...'s JSON }
//
// ``getJson`` and ``getBytes`` fetch the metadata and the model: by default from the
// server with the page's token; the page passes readers of its offline cache instead
// (pwa.js), so an engine can start without the network.
export async function loadEngine({
  metadataUrl = METADATA_URL, getJson = callApi, getBytes = fetchBytes,
} = {}) {
  const meta = await getJson(metadataUrl);
  const [moduleFile, wasmFile] = meta.runtime.files;
  const ort = await import(moduleFile.url);
  ort.env.wasm.numThreads = 1; // no cross-origin isolation needed
  ort.env.wasm.simd = true;
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = wasmFile.url.slice(0, wasmFile.url.lastIndexOf("/") + 1);
  // A model file, its size and sha256 checked against the metadata's, in a session.
  let verified = true;
  async function open(file) {
    const bytes = await getBytes(file.url);
    const digest = await sha256Hex(bytes);
    if (bytes.length !== file.bytes || (digest !== null && digest !== file.sha256)) {
      throw new ApiError(0, "model_hash_mismatch", "the model downloaded is not the one announced");
    }
    verified &&= digest !== null;
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return { session, input: session.inputNames[0], output: session.outputNames[0] };
  }
  const digits = await open(meta.onnx);
  const scriptModel = meta.script_model ?? null;
  const scripts = scriptModel === null ? null : await open(scriptModel.onnx);
  const side = meta.preprocessing.size;

  // The script model's input: the 28x28 image the digit model saw, /255, normalised.
  function scriptInput(image) {
    const { mean, std } = scriptModel.preprocessing;
    const x = Float32Array.from(image, (v) => (v / 255 - mean) / std);
    return new ort.Tensor("float32", x, [1, 1, side, side]);
  }

  async function predict(imageData, topK = meta.top_k.default, script = LATIN) {
    if (!(Number.isInteger(topK) && topK >= 1 && topK <= Math.min(DIGITS, meta.top_k.max))) {
      throw new ApiError(422, "validation_error", `top_k must be between 1 and ${DIGITS}`);
    }
    const chosen = choose(scriptModel, script);
    const started = performance.now();
    let prepared;
    try {
      prepared = prepareDrawing(imageData, meta.preprocessing, meta.pipeline);
    } catch (error) {
      if (!(error instanceof PreprocessError)) throw error;
      throw new ApiError(error.code === "needs_server" ? 0 : 422, error.code, error.message);
    }
    const input = new ort.Tensor("float32", prepared.tensor, [1, 1, side, side]);
    const outputs = await digits.session.run({ [digits.input]: input });
    let result = answer(Array.from(outputs[digits.output].data), topK, meta);
    if (scripts !== null && chosen !== LATIN) {
      const read = await scripts.session.run({ [scripts.input]: scriptInput(prepared.image) });
      result = readIn(Array.from(read[scripts.output].data), result, chosen, topK, scriptModel);
    }
    return {
      ...result,
      input: prepared.image,
      processing_ms: Math.round((performance.now() - started) * 1000) / 1000,
    };
  }

  const names = scriptModel === null ? [LATIN] : scriptModel.scripts.map((s) => s.name);
  return { meta, bundleBytes: meta.bundle_bytes, verified, scripts: names, predict };
}
