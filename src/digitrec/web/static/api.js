// Neural Digit Recognizer: the API as the site's pages call it (app.js, dashboard.js).
//
// The pages need no API key: they send the short-lived page token from GET /web/token as
// X-Web-Token, and renew it once when the server refuses it (401). Errors arrive as
// ApiError with the server's JSON error code and message.

const TOKEN_URL = "/web/token";

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  static async from(response) {
    let code = `http_${response.status}`;
    let message = response.statusText;
    try {
      const body = await response.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch {
      // not JSON (a proxy's error page, say): keep the status line
    }
    const retry = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    return new ApiError(response.status, code, message, retry > 0 ? retry : null);
  }
}

let tokenRequest = null;

export function webToken(renew = false) {
  if (renew || tokenRequest === null) {
    tokenRequest = fetch(TOKEN_URL, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(async (response) => {
        if (!response.ok) throw await ApiError.from(response);
        return (await response.json()).token;
      });
    tokenRequest.catch(() => { tokenRequest = null; }); // ask again next time
  }
  return tokenRequest;
}

// fetch() with the page's token; a refused token (401) is renewed once and the call retried.
export async function callApi(url, init = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const headers = new Headers(init.headers);
    headers.set("Accept", "application/json");
    headers.set("X-Web-Token", await webToken(attempt > 0));
    const response = await fetch(url, { ...init, headers });
    if (response.status === 401 && attempt === 0) continue;
    if (!response.ok) throw await ApiError.from(response);
    return response.json();
  }
}
