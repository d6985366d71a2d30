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

// The server's answer (Predictor.answer) for one row of raw outputs.
export function answer(logits, topK, meta) {
  const probs = softmax(logits.slice(0, DIGITS), meta.temperature);
  const rejection = meta.rejection;
  const score = rejection === null ? Infinity : SCORES[rejection.method](logits);
  const order = probs.map((_, d) => d).sort((a, b) => probs[b] - probs[a] || a - b);
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
  };
}

// Load everything the offline mode needs; resolves to the engine:
//   { meta, bundleBytes, predict(imageData, topK) -> answer with `input` and
//     `processing_ms`, like POST /api/v1/predict's JSON }
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
  const model = await getBytes(meta.onnx.url);
  const digest = await sha256Hex(model);
  if (model.length !== meta.onnx.bytes || (digest !== null && digest !== meta.onnx.sha256)) {
    throw new ApiError(0, "model_hash_mismatch", "the model downloaded is not the one announced");
  }
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  const [inputName] = session.inputNames;
  const [outputName] = session.outputNames;
  const side = meta.preprocessing.size;

  async function predict(imageData, topK = meta.top_k.default) {
    if (!(Number.isInteger(topK) && topK >= 1 && topK <= Math.min(DIGITS, meta.top_k.max))) {
      throw new ApiError(422, "validation_error", `top_k must be between 1 and ${DIGITS}`);
    }
    const started = performance.now();
    let prepared;
    try {
      prepared = prepareDrawing(imageData, meta.preprocessing, meta.pipeline);
    } catch (error) {
      if (!(error instanceof PreprocessError)) throw error;
      throw new ApiError(error.code === "needs_server" ? 0 : 422, error.code, error.message);
    }
    const input = new ort.Tensor("float32", prepared.tensor, [1, 1, side, side]);
    const outputs = await session.run({ [inputName]: input });
    const logits = Array.from(outputs[outputName].data);
    return {
      ...answer(logits, topK, meta),
      input: prepared.image,
      processing_ms: Math.round((performance.now() - started) * 1000) / 1000,
    };
  }

  return { meta, bundleBytes: meta.bundle_bytes, verified: digest !== null, predict };
}
