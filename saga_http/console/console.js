// The console's entry point: finds out whether the API wants a token, shows who is signed in
// (or that the API is open), and routes the URL's hash to a page:
//
//   #/                      overview            #/sagas/<id>          one saga
//   #/sagas?status=...      the saga list       #/workflows           workflows, register
//   #/start?workflow=...    start a saga        #/workflows/<name>    one workflow
//
// A page is a function (view, params, ctx) that fills `view` and registers its pollers on
// `ctx`, which is closed when the page is left.

import { ApiError, probe, session } from "./api.js";
import { append, errorBox, fieldError, h, replace } from "./dom.js";
import { PageContext } from "./live.js";
import { overviewPage } from "./pages/overview.js";
import { sagaPage } from "./pages/saga.js";
import { sagasPage } from "./pages/sagas.js";
import { startPage } from "./pages/start.js";
import { workflowPage, workflowsPage } from "./pages/workflows.js";

const view = document.getElementById("view");
const sessionBox = document.getElementById("session");
const nav = document.getElementById("nav");
let current = null;

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  return { parts, query: new URLSearchParams(search) };
}

function resolve(parts) {
  const [section, id, ...rest] = parts;
  if (!section) return { section: "overview", page: overviewPage };
  if (section === "sagas" && !id) return { section: "sagas", page: sagasPage };
  if (section === "sagas" && id && !rest.length) return { section: "sagas", page: sagaPage, id };
  if (section === "start" && !id) return { section: "start", page: startPage };
  if (section === "workflows" && !id) return { section: "workflows", page: workflowsPage };
  if (section === "workflows" && id && !rest.length) return { section: "workflows", page: workflowPage, id };
  return { section: null, page: notFoundPage };
}

function notFoundPage(target) {
  append(
    target,
    h("h1", {}, "Nothing here"),
    h("p", {}, "The console has no such page. ", h("a", { href: "#/" }, "Back to the overview"), "."),
  );
}

function signInPage(target) {
  const field = h("textarea", {
    id: "token",
    class: "input mono",
    rows: 5,
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "eyJhbGciOi…",
    "aria-describedby": "token-error",
  });
  const error = h("p", { id: "token-error", class: "field-error", hidden: true });
  const form = h(
    "form",
    {
      id: "signin",
      class: "card form signin",
      onsubmit: async (event) => {
        event.preventDefault();
        const token = field.value.trim().replace(/^Bearer\s+/i, "");
        error.hidden = true;
        if (token.split(".").length !== 3) {
          fieldError(field, error, "token: a bearer token is three base64url parts separated by dots");
          return;
        }
        session.setToken(token);
        try {
          await probe();
        } catch (failure) {
          fieldError(field, error, failure instanceof ApiError ? `${failure.code}: ${failure.message}` : String(failure));
          return;
        }
        if (!session.token) {
          fieldError(field, error, "token: refused by the server (expired, wrong issuer or audience, or unknown key)");
          return;
        }
        render();
      },
    },
    h("h1", {}, "Sign in"),
    h(
      "p",
      {},
      "This server requires a bearer token. Paste an access token with one of the roles ",
      h("code", {}, "sys_auditor"),
      " (read), ",
      h("code", {}, "sys_operator"),
      " (read and act) or ",
      h("code", {}, "sys_admin"),
      ". It is kept in this tab's session storage only.",
    ),
    h("label", { for: "token", class: "label" }, "Access token"),
    field,
    error,
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "btn btn-primary", id: "signin-submit" }, "Sign in")),
  );
  append(target, form);
}

function renderSession() {
  if (session.authRequired === null) {
    replace(sessionBox);
    return;
  }
  if (session.authRequired === false) {
    replace(
      sessionBox,
      h("span", { class: "pill pill-open", id: "auth-state", title: "No auth section is configured: every caller may read and act" }, "API is open (no auth configured)"),
    );
  } else if (!session.token) {
    replace(sessionBox, h("span", { class: "pill", id: "auth-state" }, "Sign-in required"));
  } else {
    const roles = session.roles.length ? session.roles.join(", ") : "no roles";
    replace(
      sessionBox,
      h(
        "span",
        { class: "pill pill-user", id: "auth-state" },
        h("span", { class: "user" }, session.subject ?? "signed in"),
        h("span", { class: "roles", id: "auth-roles" }, roles),
      ),
      h(
        "button",
        {
          type: "button",
          class: "btn btn-small btn-ghost",
          id: "signout",
          onclick: () => {
            session.setToken(null);
            render();
          },
        },
        "Sign out",
      ),
    );
  }
  document.getElementById("nav-start").hidden = !session.canWrite;
}

function markNav(section) {
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function render() {
  if (current) current.close();
  const ctx = new PageContext();
  current = ctx;
  const { parts, query } = parseHash();
  const target = h("div", { class: "page" });
  renderSession();
  if (session.authRequired === null) {
    try {
      await probe();
    } catch (error) {
      if (ctx.closed) return;
      replace(view, errorBox(error));
      setTimeout(() => current === ctx && render(), 3000);
      return;
    }
    if (ctx.closed) return;
    renderSession();
  }
  if (session.needsToken) {
    markNav(null);
    signInPage(target);
    replace(view, target);
    return;
  }
  const { section, page, id } = resolve(parts);
  markNav(section);
  replace(view, target);
  try {
    await page(target, { id, query }, ctx);
  } catch (error) {
    if (error?.name === "AbortError" || ctx.closed) return;
    append(target, errorBox(error));
  }
}

session.onChange(() => {
  renderSession();
  if (session.needsToken && !document.getElementById("signin")) render();
});
window.addEventListener("hashchange", render);
render();
