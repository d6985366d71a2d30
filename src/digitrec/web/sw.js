// Neural Digit Recognizer, the service worker: the page works without the network.
//
// The server writes VERSION and SHELL when it starts (api/pwa.py): every file of the
// page's shell with a hash of its bytes, so a changed file makes a new worker, whose
// cache replaces the old one once it is installed. What it does:
// - installs the shell (page, styles, scripts, icons, the offline page) in one cache;
// - pages: from the network, else the cached page (the recognizer) or the offline page;
// - shell files: from the cache, checked against the network in the background;
// - the offline bundle's static files (ONNX Runtime Web and the engine, stored by the page
//   only when the person asks for offline use): from their own cache;
// - everything else (the API): the network only.

const VERSION = "__VERSION__";
const SHELL = __SHELL__;
const SHELL_CACHE = `digitrec-shell-${VERSION}`;
const OFFLINE_CACHE = "digitrec-offline"; // filled by the page (pwa.js), never here
const HOME = "/";
const OFFLINE_PAGE = "/offline";

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL_CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("digitrec-shell-") && name !== SHELL_CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

async function page(request) {
  try {
    return await fetch(request);
  } catch {
    const path = new URL(request.url).pathname;
    const cached = path === HOME ? await caches.match(HOME, { cacheName: SHELL_CACHE }) : undefined;
    return cached ?? (await caches.match(OFFLINE_PAGE, { cacheName: SHELL_CACHE })) ?? Response.error();
  }
}

async function shellFile(request, event) {
  const cache = await caches.open(SHELL_CACHE);
  const cached = await cache.match(request, { ignoreSearch: true });
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok) event.waitUntil(cache.put(request, response.clone()));
  return response;
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (request.mode === "navigate") {
    event.respondWith(page(request));
    return;
  }
  if (SHELL.includes(url.pathname)) {
    event.respondWith(shellFile(request, event));
    return;
  }
  if (url.pathname.startsWith("/static/")) {
    // ONNX Runtime Web and the engine import and fetch their files by URL: serve the
    // copies stored for offline use (the page reads the model and its metadata itself).
    event.respondWith((async () => {
      const offline = await caches.match(request, { cacheName: OFFLINE_CACHE, ignoreSearch: true });
      return offline ?? fetch(request);
    })());
  }
  // Anything else (the API): the network, untouched.
});
