// The REST API client (SPEC §4) and the session: whether the API asks for a bearer token,
// the token (kept in sessionStorage only), and the roles it claims.
//
// The roles are read from the token's payload only to decide which buttons to show; the
// server checks the signature and enforces the roles on every call.

const TOKEN_KEY = "saga-console.token";
const API_ROOT = new URL("../api/v1/", document.baseURI);
const WRITE_ROLES = ["sys_operator", "sys_admin"];
const READ_ROLES = ["sys_auditor", ...WRITE_ROLES];

/** An error answered by the API (its envelope), or a failure to reach it (status 0). */
export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

const listeners = new Set();

export const session = {
  /** null until probed; true when the API answered 401 SYS_AUTH_MISSING_CLAIMS. */
  authRequired: null,
  token: sessionStorage.getItem(TOKEN_KEY),

  get claims() {
    return this.token ? decodeClaims(this.token) : null;
  },
  get roles() {
    const roles = this.claims?.realm_access?.roles;
    return Array.isArray(roles) ? roles.filter((r) => typeof r === "string") : [];
  },
  get subject() {
    const sub = this.claims?.sub;
    return typeof sub === "string" ? sub : null;
  },
  /** Whether buttons that change something are shown (start, cancel, pause, resume, register). */
  get canWrite() {
    return this.authRequired === false || this.roles.some((r) => WRITE_ROLES.includes(r));
  },
  get canRead() {
    return this.authRequired === false || this.roles.some((r) => READ_ROLES.includes(r));
  },
  /** Whether the console must ask for a token before showing anything. */
  get needsToken() {
    return this.authRequired === true && !this.token;
  },
  setToken(token) {
    this.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    notify();
  },
  onChange(listener) {
    listeners.add(listener);
  },
};

function notify() {
  for (const listener of listeners) listener(session);
}

/** The JSON payload of a JWT (the middle part, base64url), or null when it is not one. */
export function decodeClaims(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/**
 * One API call. `path` is relative to /api/v1/ ("sagas", "sagas/<id>/cancel"); `query` an
 * object of query parameters (empty values dropped); `body` is sent as JSON. Resolves to the
 * parsed JSON body; rejects with an ApiError carrying the envelope's code and message.
 */
export async function api(path, { method = "GET", query, body, signal, token = session.token } = {}) {
  const url = new URL(path, API_ROOT);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "NETWORK", "cannot reach the server", null);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const envelope = data && typeof data === "object" ? data.error : null;
    const error = new ApiError(
      response.status,
      typeof envelope?.code === "string" ? envelope.code : `HTTP_${response.status}`,
      typeof envelope?.message === "string" ? envelope.message : response.statusText,
      typeof envelope?.request_id === "string" ? envelope.request_id : null,
    );
    if (response.status === 401 && error.code === "SYS_AUTH_MISSING_CLAIMS" && token) {
      // The token was refused (expired, revoked, wrong audience): ask for another one.
      session.authRequired = true;
      session.setToken(null);
    }
    throw error;
  }
  return data;
}

/**
 * Find out whether the API asks for a token: a read without one either works (the API is
 * open) or is refused with 401 SYS_AUTH_MISSING_CLAIMS. A stored token is then checked too.
 */
export async function probe() {
  try {
    await api("workflows", { token: null });
    session.authRequired = false;
  } catch (error) {
    if (error.status === 401 && error.code === "SYS_AUTH_MISSING_CLAIMS") {
      session.authRequired = true;
    } else {
      throw error;
    }
  }
  if (session.authRequired && session.token) {
    try {
      await api("workflows");
    } catch (error) {
      if (error.status !== 401) throw error; // a 401 has dropped the token already
    }
  }
  notify();
}

/** Whether an error means "this server does not have that endpoint" (the router's 404). */
export function noSuchEndpoint(error) {
  return (
    error instanceof ApiError &&
    error.status === 404 &&
    /^no such endpoint/.test(error.message)
  );
}
