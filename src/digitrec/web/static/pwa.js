// Neural Digit Recognizer: the page as an installable app that keeps working offline.
//
// - registerWorker(): the service worker (/sw.js, written by the server) caches the page's
//   shell, so a reload without the network still shows the recognizer.
// - OfflineReader: "Use offline" stores the model (and the script model, which reads
//   digits of other scripts, when the server has one), ONNX Runtime Web and the engine
//   (offline/engine.js) in the cache "digitrec-offline" (never on the first load); from
//   then on drawings are read on this device whenever the server cannot be reached. The
//   service worker serves those files from that cache; a newer production model replaces
//   them the next time the page loads online.
// - pending: corrections that could not reach the server wait in localStorage and are
//   sent when it answers again (sendPending); those of answers given offline go to
//   POST /api/v1/feedback/offline with the answer and the 28x28 image the model saw.

import { ApiError, callApi, webToken } from "./api.js";

export const ENDPOINTS = {
  feedback: "/api/v1/feedback",
  offlineFeedback: "/api/v1/feedback/offline",
  offlineModel: "/api/v1/model/offline",
};
const BUNDLE_CACHE = "digitrec-offline"; // the service worker reads it (sw.js)
const BUNDLE_KEY = "digitrec-offline"; // localStorage: { ref, bytes } of the stored bundle
const ENGINE_FILES = ["/static/offline/engine.js", "/static/offline/preprocess.js"];
const QUEUE_KEY = "digitrec-pending-corrections";
const QUEUE_MAX = 500; // corrections kept on the device at most (the oldest go first)
const BATCH = 50; // offline corrections per request (the server's limit)

export function registerWorker() {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.register("/sw.js").catch(() => {
    // no worker (an old browser, a private window): the page works, just not offline
  });
}

// A failure of the network itself, not an answer from the server.
export function isNetworkError(error) {
  return !(error instanceof ApiError) || error.status === 0;
}

function readQueue() {
  try {
    const items = JSON.parse(localStorage.getItem(QUEUE_KEY) ?? "[]");
    return Array.isArray(items) ? items : [];
  } catch {
    return [];
  }
}

function writeQueue(items) {
  try {
    if (items.length) localStorage.setItem(QUEUE_KEY, JSON.stringify(items.slice(-QUEUE_MAX)));
    else localStorage.removeItem(QUEUE_KEY);
  } catch {
    // storage full or refused: the correction is lost, as it would be without the queue
  }
}

export const pending = {
  count: () => readQueue().length,
  // item: { kind: "served", body } (a server answer's correction) or
  //       { kind: "offline", body } (an answer given offline, with its correction)
  add(item) {
    const id = item.body.prediction_id;
    writeQueue([...readQueue().filter((other) => other.body.prediction_id !== id), item]);
  },
};

let sending = null;

// Sends what waits; resolves to the number sent. Corrections the server refuses for
// good (4xx other than 408 and 429) are dropped: sending them again cannot help.
export function sendPending() {
  // .finally() runs after the assignment even when nothing waits (no await reached).
  sending ??= drain().finally(() => { sending = null; });
  return sending;
}

let pendingTimer = 0;
let pendingDelay = 0;

// Sends what waits after ``delayMs``, then again after a growing pause (1 s ... 60 s) for
// as long as some of it cannot reach the server: the browser's "online" event comes
// before the network really works, and not at all when only the server was away.
export function retryPending(delayMs = 500, onSent = () => {}) {
  clearTimeout(pendingTimer);
  if (readQueue().length === 0) {
    pendingDelay = 0;
    return;
  }
  pendingTimer = setTimeout(async () => {
    const sent = await sendPending();
    if (sent > 0) onSent(sent);
    if (readQueue().length === 0) {
      pendingDelay = 0;
      return;
    }
    pendingDelay = Math.min(pendingDelay ? pendingDelay * 2 : 1000, 60_000);
    retryPending(pendingDelay, onSent);
  }, delayMs);
}

async function drain() {
  let sent = 0;
  let items = readQueue();
  const post = (url, body) => callApi(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const settle = (done) => {
    const ids = new Set(done.map((item) => item.body.prediction_id));
    items = readQueue().filter((item) => !ids.has(item.body.prediction_id));
    writeQueue(items);
  };
  const refusedForGood = (error) => error instanceof ApiError && error.status >= 400
    && error.status < 500 && error.status !== 408 && error.status !== 429;
  for (const item of items.filter((i) => i.kind === "served")) {
    try {
      await post(ENDPOINTS.feedback, item.body);
      sent += 1;
      settle([item]);
    } catch (error) {
      if (!refusedForGood(error)) return sent;
      settle([item]);
    }
  }
  // In batches; a batch is stored whole or not at all, so a refused one is sent again
  // one by one and only the corrections refused alone are dropped.
  const sendBatch = async (batch) => {
    try {
      await post(ENDPOINTS.offlineFeedback, { corrections: batch.map((item) => item.body) });
      sent += batch.length;
      settle(batch);
      return true;
    } catch (error) {
      if (!refusedForGood(error)) return false;
      if (batch.length === 1) {
        settle(batch);
        return true;
      }
      for (const item of batch) if (!(await sendBatch([item]))) return false;
      return true;
    }
  };
  const offline = readQueue().filter((i) => i.kind === "offline");
  for (let start = 0; start < offline.length; start += BATCH) {
    if (!(await sendBatch(offline.slice(start, start + BATCH)))) return sent;
  }

  return sent;
}

// --- reading drawings on this device -------------------------------------------------

async function fromCache(url) {
  const response = await caches.match(url, { cacheName: BUNDLE_CACHE });
  if (!response) throw new ApiError(0, "offline_bundle_missing", "the offline files are not on this device");
  return response;
}

export class OfflineReader {
  constructor() {
    this.engine = null;
    this.loading = null;
  }

  // What is stored on this device: { ref, bytes }, or null.
  get stored() {
    try {
      return JSON.parse(localStorage.getItem(BUNDLE_KEY) ?? "null");
    } catch {
      return null;
    }
  }

  static get supported() {
    return "caches" in window && typeof WebAssembly === "object";
  }

  // Downloads the bundle into the cache, then starts the engine. Resolves to it.
  async enable() {
    const meta = await callApi(ENDPOINTS.offlineModel, { cache: "no-store" });
    const cache = await caches.open(BUNDLE_CACHE);
    const files = [...ENGINE_FILES, ...meta.runtime.files.map((file) => file.url)];
    for (const url of files) {
      const response = await fetch(url, { cache: "no-cache" });
      if (!response.ok) throw await ApiError.from(response);
      await cache.put(url, response);
    }
    // The model, and the script model when the server has one (digits of other scripts).
    const models = [meta.onnx, meta.script_model?.onnx].filter(Boolean);
    for (const { url } of models) {
      const model = await fetch(url, { headers: { "X-Web-Token": await webToken() } });
      if (!model.ok) throw await ApiError.from(model);
      await cache.put(url, model);
    }
    const json = new Response(JSON.stringify(meta), { headers: { "Content-Type": "application/json" } });
    await cache.put(ENDPOINTS.offlineModel, json);
    localStorage.setItem(BUNDLE_KEY, JSON.stringify({ ref: meta.model.ref, bytes: meta.bundle_bytes }));
    this.engine = null;
    return this.ready();
  }

  async disable() {
    localStorage.removeItem(BUNDLE_KEY);
    this.engine = null;
    await caches.delete(BUNDLE_CACHE);
  }

  // The engine, started from the cache (no network needed); null when not enabled.
  ready() {
    if (this.stored === null) return Promise.resolve(null);
    if (this.engine) return Promise.resolve(this.engine);
    this.loading ??= (async () => {
      try {
        const { loadEngine } = await import(ENGINE_FILES[0]);
        this.engine = await loadEngine({
          getJson: async (url) => (await fromCache(url)).json(),
          getBytes: async (url) => new Uint8Array(await (await fromCache(url)).arrayBuffer()),
        });
        return this.engine;
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  // Online: replace the bundle when the server now serves another model.
  async refresh() {
    const stored = this.stored;
    if (stored === null) return false;
    const meta = await callApi(ENDPOINTS.offlineModel, { cache: "no-store" });
    if (meta.model.ref === stored.ref) return false;
    await this.enable();
    return true;
  }
}

// An id for an answer given on this device (the server's are uuid4 hex too).
export function newPredictionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function base64(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text);
}

// The body POST /api/v1/feedback/offline takes for one answer given here and its correction
// (``correction``: { label } or { correct: true }).
export function offlineCorrection(answer, correction) {
  return {
    prediction_id: answer.prediction_id,
    answered_at: answer.answered_at,
    model: answer.model,
    digit: answer.digit,
    confidence: answer.confidence,
    verdict: answer.verdict,
    probabilities: answer.probabilities,
    input: base64(answer.input),
    ...correction,
  };
}
