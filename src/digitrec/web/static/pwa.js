// Neural Digit Recognizer: the page as an installable app that keeps working offline.
//
// - registerWorker(): the service worker (/sw.js, written by the server) caches the page's
//   shell, so a reload without the network still shows the recognizer.
// - pending: corrections that could not reach the server wait in localStorage and are
//   sent when it answers again (sendPending); those of answers given offline go to
//   POST /api/v1/feedback/offline with the answer and the 28x28 image the model saw.

import { ApiError, callApi } from "./api.js";

export const ENDPOINTS = {
  feedback: "/api/v1/feedback",
  offlineFeedback: "/api/v1/feedback/offline",
};
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
  sending ??= (async () => {
    let sent = 0;
    try {
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
    } finally {
      sending = null;
    }
  })();
  return sending;
}
