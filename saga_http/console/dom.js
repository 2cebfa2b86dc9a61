// Building the page safely, and formatting values for people.
//
// Every value that comes from the server becomes a text node or an attribute value set with
// setAttribute: nothing here parses HTML, so a payload holding "<script>" or
// "\"><img onerror=...>" shows as those characters. Event handlers are functions only, and
// links only ever point inside the console.

const SVG_NS = "http://www.w3.org/2000/svg";
// Properties set as DOM properties rather than attributes (form state).
const PROPERTIES = new Set(["value", "checked", "disabled", "selected", "readOnly", "open"]);

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${key} must be a function`);
      el.addEventListener(key.slice(2), value);
    } else if (key === "style" || key === "innerHTML" || key === "outerHTML") {
      throw new TypeError(`${key} is not allowed`);
    } else if (key === "text") {
      el.textContent = String(value);
    } else if (key === "dataset") {
      for (const [name, v] of Object.entries(value)) el.dataset[name] = String(v);
    } else if (key === "href") {
      const href = String(value);
      if (!href.startsWith("#")) throw new TypeError(`links stay inside the console: ${href}`);
      el.setAttribute("href", href);
    } else if (PROPERTIES.has(key)) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

/** Append children: strings and numbers as text nodes, nodes as they are, arrays flattened. */
export function append(parent, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** An HTML element: h("a", {href: "#/sagas", class: "x"}, "text", node, ...). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  return append(el, children);
}

/** An SVG element, same rules as h(). */
export function svg(tag, props = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  return append(el, children);
}

/** Replace everything inside `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A link to a console route, e.g. link(["sagas", id], "open"). */
export function link(parts, label, props = {}) {
  return h("a", { ...props, href: route(parts) }, label);
}

/** The hash of a console route: route(["sagas", id], {status: "FAILED"}). */
export function route(parts, query) {
  const path = "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
  const search = query ? new URLSearchParams(clean(query)).toString() : "";
  return search ? `${path}?${search}` : path;
}

function clean(query) {
  return Object.fromEntries(
    Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ""),
  );
}

export const STATUSES = [
  "STARTED",
  "RUNNING",
  "COMPLETED",
  "COMPENSATING",
  "FAILED",
  "CANCELLED",
  "PAUSED",
];
export const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

/** A coloured badge for a saga or step status. */
export function badge(status, props = {}) {
  const name = String(status ?? "UNKNOWN");
  const cls = `badge status-${name.toLowerCase().replace(/[^a-z]/g, "")}`;
  return h("span", { ...props, class: props.class ? `${cls} ${props.class}` : cls }, name);
}

/** A card: a titled panel. */
export function card(title, ...children) {
  return h(
    "section",
    { class: "card" },
    title ? h("h2", { class: "card-title" }, title) : null,
    children,
  );
}

/** A short form of an id for tables (the full one is the title). */
export function shortId(id) {
  const text = String(id ?? "");
  return text.length > 13 ? `${text.slice(0, 8)}…${text.slice(-4)}` : text;
}

const DATE_TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });
const TIME_SECONDS = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

export function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** A timestamp as local date and time; the exact RFC 3339 text is the title. */
export function time(iso) {
  const t = parseTime(iso);
  if (t === null) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: iso }, DATE_TIME.format(t));
}

/** A local time of day: 10:05 (or 10:05:03 with `seconds`). */
export function clock(ms, seconds = false) {
  return (seconds ? TIME_SECONDS : TIME).format(ms);
}

/** A duration in ms for people: 850 ms, 1.25 s, 3 min 04 s, 2 h 05 min. */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const secs = ms / 1000;
  if (secs < 60) return `${secs.toFixed(secs < 10 ? 2 : 1)} s`;
  const mins = Math.floor(secs / 60);
  if (mins < 60) return `${mins} min ${String(Math.floor(secs % 60)).padStart(2, "0")} s`;
  const hours = Math.floor(mins / 60);
  if (hours < 48) return `${hours} h ${String(mins % 60).padStart(2, "0")} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** "12 s ago", from an RFC 3339 timestamp. */
export function ago(iso) {
  const t = parseTime(iso);
  return t === null ? "—" : `${duration(Math.max(0, Date.now() - t))} ago`;
}

const NUMBER = new Intl.NumberFormat();
export function count(n) {
  return typeof n === "number" ? NUMBER.format(n) : "—";
}

/** An error box: code, message and request id of an API error, all as text. */
export function errorBox(error, props = {}) {
  const box = h("div", { role: "alert", ...props, class: "alert alert-error" });
  if (error && error.code) {
    append(box, h("strong", {}, error.code), " ", error.message);
    if (error.requestId) append(box, h("span", { class: "muted request-id" }, ` (request ${error.requestId})`));
  } else {
    append(box, String(error?.message ?? error));
  }
  return box;
}

/** An empty-state line inside a card. */
export function empty(text) {
  return h("p", { class: "empty" }, text);
}

/** Show `message` in `box` (the element under a form field) and mark the field invalid. */
export function fieldError(field, box, message) {
  field.setAttribute("aria-invalid", "true");
  box.textContent = message;
  box.hidden = false;
}

/** Clear what fieldError showed. */
export function clearFieldError(field, box) {
  field.removeAttribute("aria-invalid");
  box.textContent = "";
  box.hidden = true;
}
