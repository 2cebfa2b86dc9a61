// Start a saga (POST /api/v1/sagas): a workflow, a JSON payload checked before it is sent,
// an optional correlation id. An error names its field and is shown next to it; on success the
// console opens the new saga and follows it live.

import { api, ApiError, session } from "../api.js";
import { card, clearFieldError, errorBox, fieldError, h, replace, route } from "../dom.js";
import { parsePayload } from "./payload.js";

const EXAMPLE = '{\n  "order_id": "A-1",\n  "card": "ok"\n}';

export async function startPage(view, { query }, ctx) {
  replace(view, h("div", { class: "page-head" }, h("h1", {}, "Start a saga")));
  if (!session.canWrite) {
    view.append(
      h("div", { class: "alert", id: "read-only" }, "Your token's roles can read but not start sagas (starting needs sys_operator)."),
    );
    return;
  }
  const { workflows } = await api("workflows", { signal: ctx.signal });
  if (ctx.closed) return;
  if (!workflows.length) {
    view.append(
      card(null, h("p", {}, "No workflow is registered yet. ", h("a", { href: "#/workflows" }, "Register one"), " first.")),
    );
    return;
  }
  const wanted = query.get("workflow");
  const workflow = h(
    "select",
    { id: "start-workflow", class: "input", "aria-describedby": "start-workflow-error" },
    workflows.map((w) =>
      h("option", { value: w.name, selected: w.name === wanted }, `${w.name}${w.version ? ` (v${w.version})` : ""} — ${w.step_count} step${w.step_count === 1 ? "" : "s"}`),
    ),
  );
  const payload = h("textarea", {
    id: "start-payload",
    class: "input mono",
    rows: 10,
    spellcheck: "false",
    "aria-describedby": "start-payload-error",
    value: EXAMPLE,
  });
  const correlation = h("input", {
    id: "start-correlation",
    class: "input",
    autocomplete: "off",
    placeholder: "optional, e.g. the order id",
    "aria-describedby": "start-correlation-error",
  });
  const errors = {
    workflow_name: [workflow, h("p", { id: "start-workflow-error", class: "field-error", hidden: true })],
    payload: [payload, h("p", { id: "start-payload-error", class: "field-error", hidden: true })],
    correlation_id: [correlation, h("p", { id: "start-correlation-error", class: "field-error", hidden: true })],
  };
  const general = h("div", { id: "start-error" });
  const submit = h("button", { type: "submit", class: "btn btn-primary", id: "start-submit" }, "Start saga");

  const form = h(
    "form",
    {
      class: "form",
      id: "start-form",
      onsubmit: async (event) => {
        event.preventDefault();
        replace(general);
        for (const [field, box] of Object.values(errors)) clearFieldError(field, box);
        const parsed = parsePayload(payload.value, "payload");
        if (parsed.error) {
          fieldError(payload, errors.payload[1], parsed.error);
          payload.focus();
          return;
        }
        const body = { workflow_name: workflow.value, payload: parsed.value };
        if (correlation.value.trim()) body.correlation_id = correlation.value.trim();
        submit.disabled = true;
        try {
          const started = await api("sagas", { method: "POST", body, signal: ctx.signal });
          location.hash = route(["sagas", started.saga_id]);
        } catch (error) {
          if (error.name === "AbortError") return;
          const field = error instanceof ApiError && [400, 404].includes(error.status) ? fieldOf(error.message) : null;
          if (field) fieldError(errors[field][0], errors[field][1], error.message);
          else replace(general, errorBox(error));
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("label", { class: "label", for: "start-workflow" }, "Workflow"),
    workflow,
    errors.workflow_name[1],
    h("label", { class: "label", for: "start-payload" }, "Payload (a JSON object)"),
    payload,
    errors.payload[1],
    h("label", { class: "label", for: "start-correlation" }, "Correlation id"),
    correlation,
    errors.correlation_id[1],
    general,
    h("div", { class: "form-actions" }, submit),
  );
  view.append(card(null, form));
}

/** The start field a server message is about ("payload: ...", "correlation_id ..."). */
function fieldOf(message) {
  const match = /^(workflow_name|payload|correlation_id)\b/.exec(String(message));
  if (match) return match[1];
  if (/^workflow not found/.test(String(message))) return "workflow_name";
  return null;
}
