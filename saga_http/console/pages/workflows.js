// Workflows: every registered name with its version and steps (GET /api/v1/workflows), one
// workflow's diagram with its compensations and its YAML, and a form that registers a new
// one (POST /api/v1/workflows) and shows the server's validation error next to the field.
//
// One workflow's definition comes from GET /api/v1/workflows/<name> where the server has it;
// a server without that endpoint gives the step names only, and the page says so.

import { api, ApiError, noSuchEndpoint, session } from "../api.js";
import { workflowDiagram } from "../charts.js";
import {
  append,
  card,
  clearFieldError,
  count,
  empty,
  errorBox,
  fieldError,
  h,
  link,
  replace,
  route,
} from "../dom.js";

const EXAMPLE = `name: order-fulfillment
steps:
  - name: reserve-inventory
    service: inventory-service
    method: InventoryService.Reserve
    compensate: InventoryService.Release
  - name: process-payment
    service: payment-service
    method: PaymentService.Charge
    compensate: PaymentService.Refund
`;

function workflowTable(workflows) {
  if (!workflows.length) return empty("No workflow is registered yet.");
  return h(
    "table",
    { class: "table", id: "workflow-table" },
    h("thead", {}, h("tr", {}, ["Name", "Version", "Steps", "Step names", ""].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      workflows.map((w) =>
        h(
          "tr",
          { dataset: { workflow: w.name } },
          h("td", {}, link(["workflows", w.name], w.name, { class: "workflow-link" })),
          h("td", { class: "num" }, w.version ? `v${w.version}` : "—"),
          h("td", { class: "num" }, count(w.step_count)),
          h("td", { class: "muted ellipsis", title: (w.step_names ?? []).join(" → ") }, (w.step_names ?? []).join(" → ")),
          h(
            "td",
            { class: "row-actions" },
            session.canWrite ? h("a", { class: "btn btn-small", href: route(["start"], { workflow: w.name }) }, "Start") : null,
          ),
        ),
      ),
    ),
  );
}

function registerForm(onRegistered, signal) {
  const field = h("textarea", {
    id: "workflow-yaml",
    class: "input mono",
    rows: 16,
    spellcheck: "false",
    placeholder: EXAMPLE,
    "aria-describedby": "workflow-yaml-error",
  });
  const error = h("p", { id: "workflow-yaml-error", class: "field-error", hidden: true });
  const result = h("div", { id: "register-result", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", id: "register-submit" }, "Register");
  field.addEventListener("input", () => clearFieldError(field, error));
  return h(
    "form",
    {
      class: "form",
      id: "register-form",
      onsubmit: async (event) => {
        event.preventDefault();
        replace(result);
        clearFieldError(field, error);
        if (!field.value.trim()) {
          fieldError(field, error, "workflow_yaml: is required (a workflow definition in YAML)");
          return;
        }
        submit.disabled = true;
        try {
          const made = await api("workflows", { method: "POST", body: { workflow_yaml: field.value }, signal });
          replace(
            result,
            h(
              "div",
              { class: "alert alert-success", role: "status" },
              "Registered ",
              link(["workflows", made.name], made.name),
              made.version ? ` version ${made.version}` : "",
              ` with ${made.step_count} step${made.step_count === 1 ? "" : "s"}.`,
            ),
          );
          onRegistered(made);
        } catch (failure) {
          if (failure.name === "AbortError") return;
          if (failure instanceof ApiError && failure.status >= 400 && failure.status < 500) {
            fieldError(field, error, failure.message);
            selectLine(field, failure.message);
          } else {
            replace(result, errorBox(failure));
          }
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("label", { class: "label", for: "workflow-yaml" }, "Workflow YAML"),
    field,
    error,
    h("div", { class: "form-actions" }, submit, result),
  );
}

/** When an error names a line ("line 4"), select that line of the YAML. */
function selectLine(field, message) {
  const match = /line (\d+)/.exec(message);
  if (!match) return;
  const lines = field.value.split("\n");
  const n = Math.min(Number(match[1]), lines.length) - 1;
  if (n < 0) return;
  const start = lines.slice(0, n).reduce((sum, line) => sum + line.length + 1, 0);
  field.focus();
  field.setSelectionRange(start, start + lines[n].length);
}

export async function workflowsPage(view, _params, ctx) {
  const list = h("div", { id: "workflow-list" }, empty("Loading…"));
  replace(view, h("div", { class: "page-head" }, h("h1", {}, "Workflows")), card("Registered", list));
  const refresh = async () => {
    const { workflows } = await api("workflows", { signal: ctx.signal });
    if (!ctx.closed) replace(list, workflowTable(workflows));
  };
  if (session.canWrite) {
    view.append(
      card(
        "Register a workflow",
        h("p", { class: "muted" }, "Registering a name that exists adds a new version; running sagas keep the version they started with."),
        registerForm(() => refresh().catch(() => {}), ctx.signal),
      ),
    );
  }
  await refresh();
}

// ------------------------------------------------------------------ one workflow

function yamlScalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value !== "string") return String(value);
  const plain = /^[A-Za-z_./][\w./ -]*$/.test(value) && !/^(true|false|null|yes|no|on|off)$/i.test(value);
  return plain && value.trim() === value ? value : JSON.stringify(value);
}

/** A definition (JSON) written as YAML, for a server that does not keep the original text. */
export function toYaml(value, indent = "") {
  const lines = [];
  const entries = Array.isArray(value) ? value.map((v) => [null, v]) : Object.entries(value);
  for (const [key, v] of entries) {
    if (v === null || v === undefined) continue;
    const lead = key === null ? `${indent}- ` : `${indent}${key}:`;
    const nested = typeof v === "object";
    if (nested && (Array.isArray(v) ? v.length === 0 : Object.keys(v).length === 0)) {
      lines.push(`${lead}${key === null ? "" : " "}${Array.isArray(v) ? "[]" : "{}"}`);
    } else if (nested && key === null && !Array.isArray(v)) {
      const inner = toYaml(v, `${indent}  `).split("\n");
      lines.push(`${indent}- ${inner[0].trimStart()}`, ...inner.slice(1));
    } else if (nested) {
      lines.push(lead, toYaml(v, `${indent}  `));
    } else {
      lines.push(`${lead}${key === null ? "" : " "}${yamlScalar(v)}`);
    }
  }
  return lines.filter((l) => l !== "").join("\n");
}

/** The keys of a workflow document (what the API adds around it left out). */
function definitionOnly(definition) {
  const { version: _v, step_count: _c, step_names: _n, workflow_yaml: _y, ...rest } = definition;
  return rest;
}

function stepTable(steps) {
  return h(
    "table",
    { class: "table", id: "workflow-steps" },
    h("thead", {}, h("tr", {}, ["#", "Step", "Service", "Method", "Compensate", "Timeout", "Attempts"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      steps.map((s, i) =>
        h(
          "tr",
          {},
          h("td", { class: "num" }, String(i + 1)),
          h("td", {}, s.name),
          h("td", { class: "mono" }, s.service ?? ""),
          h("td", { class: "mono" }, s.method ?? ""),
          h("td", { class: "mono" }, s.compensate ?? h("span", { class: "muted" }, "none (SKIPPED)")),
          h("td", { class: "num" }, s.timeout_secs !== undefined ? `${s.timeout_secs} s` : "—"),
          h("td", { class: "num" }, s.retry?.max_attempts !== undefined ? String(s.retry.max_attempts) : "—"),
        ),
      ),
    ),
  );
}

async function loadWorkflow(name, signal) {
  try {
    const data = await api(`workflows/${encodeURIComponent(name)}`, { signal });
    const definition = data.workflow ?? data;
    if (Array.isArray(definition.steps) && definition.steps.every((s) => s && typeof s === "object")) {
      return { definition, yaml: typeof data.workflow_yaml === "string" ? data.workflow_yaml : null, detailed: true };
    }
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404) && !noSuchEndpoint(error)) throw error;
  }
  const { workflows } = await api("workflows", { signal });
  const summary = workflows.find((w) => w.name === name);
  if (!summary) return null;
  const steps = (summary.step_names ?? []).map((step) => ({ name: step }));
  return { definition: { ...summary, steps }, yaml: null, detailed: false };
}

export async function workflowPage(view, { id: name }, ctx) {
  replace(
    view,
    h("nav", { class: "crumbs" }, h("a", { href: "#/workflows" }, "Workflows"), " › ", name),
  );
  const found = await loadWorkflow(name, ctx.signal);
  if (ctx.closed) return;
  if (!found) {
    view.append(h("h1", {}, "Workflow not found"), errorBox(`no workflow named ${name}`));
    return;
  }
  const { definition, yaml, detailed } = found;
  const steps = definition.steps;
  append(
    view,
    h(
      "div",
      { class: "page-head" },
      h(
        "h1",
        {},
        definition.name ?? name,
        definition.version ? h("span", { class: "pill pill-version", id: "workflow-version" }, `version ${definition.version}`) : null,
      ),
      session.canWrite ? h("a", { class: "btn btn-primary", href: route(["start"], { workflow: name }), id: "workflow-start" }, "Start a saga") : null,
    ),
    card(
      "Diagram",
      detailed ? null : h("p", { class: "muted", id: "diagram-note" }, "This server lists step names only: services and compensations are not shown."),
      h("div", { class: "diagram-box", id: "workflow-diagram" }, workflowDiagram(steps, { detailed })),
    ),
    detailed ? card("Steps", stepTable(steps)) : null,
    card(
      "YAML",
      yaml !== null || detailed
        ? h("pre", { class: "code", id: "workflow-yaml-text" }, yaml ?? toYaml(definitionOnly(definition)))
        : empty("This server does not return the definition's YAML."),
    ),
  );
}
