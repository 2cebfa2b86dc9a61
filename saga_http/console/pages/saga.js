// One saga (GET /api/v1/sagas/<id>): its status and fields, a timeline of every execution and
// compensation, each step log with its request and response, errors, operator actions and
// trace id; and the operator's buttons (cancel, pause, resume with retry / skip / compensate
// and an optional replaced payload), each shown only when the saga's status allows it (SPEC
// §1, §11) and the signed-in roles do. Refreshed every 2 s until the saga ends; a section is
// redrawn only when its data changed, so open panels and a payload being edited stay put.

import { api, ApiError, session } from "../api.js";
import { sagaTimeline } from "../charts.js";
import {
  append,
  badge,
  card,
  clearFieldError,
  duration,
  empty,
  errorBox,
  fieldError,
  h,
  link,
  parseTime,
  replace,
  TERMINAL,
  time,
} from "../dom.js";
import { jsonView } from "../json.js";
import { parsePayload } from "./payload.js";

const REFRESH_MS = 2000;

/** What an operator may do to a saga in this status (the server checks again: 409 if not). */
export function legalActions(saga, logs) {
  const status = saga.status;
  const compensating = status === "COMPENSATING" || logs.some((log) => log.action === "COMPENSATE");
  return {
    cancel: status === "STARTED" || status === "RUNNING" || (status === "PAUSED" && !compensating),
    pause: status === "STARTED" || status === "RUNNING" || status === "COMPENSATING",
    resume: status === "PAUSED",
    forwardPhase: !compensating,
  };
}

const RESUME_ACTIONS = [
  ["", "Default", "retry after a failure, continue after a pause request"],
  ["continue", "Continue", "go on where it stopped"],
  ["retry", "Retry", "run the failed step or compensation again, with its full retry budget"],
  ["skip", "Skip", "log the failed step or compensation SKIPPED and go on"],
  ["compensate", "Compensate", "start compensating now; the saga ends FAILED"],
];

function metaList(saga, workflow, now) {
  const steps = workflow?.step_names ?? [];
  const stepCount = workflow?.step_count ?? steps.length;
  const next = steps[saga.current_step];
  const end = TERMINAL.has(saga.status) ? parseTime(saga.updated_at) : now;
  const start = parseTime(saga.created_at);
  const rows = [
    ["Saga id", h("span", { class: "mono", id: "saga-id" }, saga.saga_id)],
    ["Workflow", link(["workflows", saga.workflow_name], saga.workflow_name)],
    [
      "Current step",
      h(
        "span",
        { id: "saga-current-step" },
        stepCount ? `${saga.current_step} of ${stepCount} done` : String(saga.current_step),
        next && (saga.status === "STARTED" || saga.status === "RUNNING")
          ? h("span", { class: "muted" }, ` · now at ${next}`)
          : null,
      ),
    ],
    ["Correlation id", saga.correlation_id ? h("span", { class: "mono" }, saga.correlation_id) : h("span", { class: "muted" }, "—")],
    ["Initiated by", saga.initiated_by ?? h("span", { class: "muted" }, "—")],
    ["Trace id", saga.trace_id ? h("span", { class: "mono", id: "saga-trace-id" }, saga.trace_id) : h("span", { class: "muted" }, "—")],
    ["Created", time(saga.created_at)],
    ["Updated", time(saga.updated_at)],
    ["Duration", start !== null && end !== null ? duration(end - start) : "—"],
  ];
  return h("dl", { class: "meta" }, rows.map(([k, v]) => h("div", { class: "meta-row" }, h("dt", {}, k), h("dd", {}, v))));
}

function logList(logs, openIds) {
  if (!logs.length) return empty("No step has run yet.");
  return h(
    "div",
    { class: "logs", id: "step-logs" },
    logs.map((log, i) => {
      const started = parseTime(log.started_at);
      const finished = parseTime(log.completed_at);
      const bad = log.status === "FAILED" || log.status === "TIMEOUT";
      const isOpen = openIds.has(log.id) ? openIds.get(log.id) : bad;
      return h(
        "details",
        { class: `log log-${String(log.action).toLowerCase()}`, open: isOpen, dataset: { logId: log.id ?? "" } },
        h(
          "summary",
          {},
          h("span", { class: "log-order" }, `#${i + 1}`),
          h("span", { class: `action action-${String(log.action).toLowerCase()}` }, log.action === "COMPENSATE" ? "↩ COMPENSATE" : "EXECUTE"),
          h("span", { class: "log-step" }, log.step_name),
          badge(log.status ?? "RUNNING"),
          Number.isInteger(log.attempts) ? h("span", { class: "muted" }, `${log.attempts} attempt${log.attempts === 1 ? "" : "s"}`) : null,
          h("span", { class: "muted log-duration" }, started !== null && finished !== null ? duration(finished - started) : "in flight"),
        ),
        h(
          "div",
          { class: "log-body" },
          h(
            "dl",
            { class: "meta meta-compact" },
            h("div", { class: "meta-row" }, h("dt", {}, "Step"), h("dd", {}, `${Number(log.step_index) + 1} · ${log.step_name}`)),
            h("div", { class: "meta-row" }, h("dt", {}, "Started"), h("dd", {}, time(log.started_at))),
            h("div", { class: "meta-row" }, h("dt", {}, "Completed"), h("dd", {}, time(log.completed_at))),
          ),
          log.error_message ? h("div", { class: "alert alert-error log-error" }, log.error_message) : null,
          h(
            "div",
            { class: "payloads" },
            h("div", { class: "payload" }, h("h4", {}, "Request"), jsonView(log.request_payload ?? null, { label: "request payload" })),
            h("div", { class: "payload" }, h("h4", {}, "Response"), jsonView(log.response_payload ?? null, { label: "response payload" })),
          ),
        ),
      );
    }),
  );
}

function operatorTable(actions) {
  if (!actions.length) return empty("No operator action yet.");
  return h(
    "table",
    { class: "table", id: "operator-actions" },
    h("thead", {}, h("tr", {}, ["When", "Action", "Resumed with", "Payload replaced", "By"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      actions.map((a) =>
        h(
          "tr",
          {},
          h("td", {}, time(a.at)),
          h("td", {}, a.action ?? ""),
          h("td", {}, a.resume_action ?? "—"),
          h("td", {}, a.payload_replaced ? "yes" : "no"),
          h("td", {}, a.by ?? h("span", { class: "muted" }, "— (no auth)")),
        ),
      ),
    ),
  );
}

/** The operator's buttons and the resume form, for the saga as it is now. */
function actionsBar(saga, logs, { onDone, signal, message }) {
  const legal = legalActions(saga, logs);
  const bar = h("div", { class: "actions", id: "saga-actions" });
  if (!legal.cancel && !legal.pause && !legal.resume) return bar;
  if (!session.canWrite) {
    append(bar, h("p", { class: "muted", id: "read-only" }, "Read-only: acting on a saga needs the sys_operator role."));
    return bar;
  }
  const buttons = h("div", { class: "action-buttons" });
  const panel = h("div", { class: "action-panel" });

  async function send(path, body, done) {
    replace(message);
    for (const b of buttons.querySelectorAll("button")) b.disabled = true;
    try {
      const answer = await api(`sagas/${encodeURIComponent(saga.saga_id)}/${path}`, { method: "POST", body, signal });
      replace(panel);
      replace(message, h("div", { class: "alert alert-success", role: "status" }, done(answer)));
      onDone();
    } catch (error) {
      if (error.name === "AbortError") return;
      replace(message, errorBox(error));
    } finally {
      for (const b of buttons.querySelectorAll("button")) b.disabled = false;
    }
  }

  if (legal.cancel) {
    append(
      buttons,
      h(
        "button",
        {
          type: "button",
          class: "btn btn-danger",
          id: "action-cancel",
          onclick: () =>
            replace(
              panel,
              h(
                "div",
                { class: "confirm", id: "cancel-confirm" },
                h("p", {}, "Cancel this saga? Steps already done are compensated, newest first, and it ends CANCELLED."),
                h(
                  "div",
                  { class: "form-actions" },
                  h(
                    "button",
                    {
                      type: "button",
                      class: "btn btn-danger",
                      id: "cancel-confirm-yes",
                      onclick: () => send("cancel", undefined, (a) => a.message ?? "Cancel requested."),
                    },
                    "Cancel the saga",
                  ),
                  h("button", { type: "button", class: "btn btn-ghost", onclick: () => replace(panel) }, "Keep it"),
                ),
              ),
            ),
        },
        "Cancel…",
      ),
    );
  }
  if (legal.pause) {
    append(
      buttons,
      h(
        "button",
        {
          type: "button",
          class: "btn",
          id: "action-pause",
          onclick: () =>
            send("pause", undefined, (a) => `${a.message ?? "Pause requested"}: it takes effect at the next step boundary.`),
        },
        "Pause",
      ),
    );
  }
  if (legal.resume) {
    append(
      buttons,
      h(
        "button",
        { type: "button", class: "btn btn-primary", id: "action-resume", onclick: () => replace(panel, resumeForm(saga, legal, send)) },
        "Resume…",
      ),
    );
  }
  return append(bar, buttons, panel);
}

function resumeForm(saga, legal, send) {
  const choices = RESUME_ACTIONS.filter(([value]) => value !== "compensate" || legal.forwardPhase);
  const radios = h(
    "fieldset",
    { class: "choices", id: "resume-actions" },
    h("legend", { class: "label" }, "How to go on"),
    choices.map(([value, label, help], i) =>
      h(
        "label",
        { class: "choice" },
        h("input", { type: "radio", name: "resume-action", value, checked: i === 0, id: `resume-action-${value || "default"}` }),
        h("span", { class: "choice-label" }, label),
        h("span", { class: "muted" }, help),
      ),
    ),
  );
  const replaceBox = h("input", { type: "checkbox", id: "resume-replace-payload" });
  const editor = h("textarea", {
    id: "resume-payload",
    class: "input mono",
    rows: 10,
    spellcheck: "false",
    "aria-describedby": "resume-payload-error",
    value: JSON.stringify(saga.payload ?? {}, null, 2),
    disabled: true,
  });
  const editorError = h("p", { id: "resume-payload-error", class: "field-error", hidden: true });
  replaceBox.addEventListener("change", () => {
    editor.disabled = !replaceBox.checked;
    if (!replaceBox.checked) clearFieldError(editor, editorError);
  });
  editor.addEventListener("input", () => clearFieldError(editor, editorError));
  return h(
    "form",
    {
      class: "form resume-form",
      id: "resume-form",
      onsubmit: (event) => {
        event.preventDefault();
        const body = {};
        const action = radios.querySelector("input:checked")?.value ?? "";
        if (action) body.action = action;
        if (legal.forwardPhase && replaceBox.checked) {
          const parsed = parsePayload(editor.value, "payload");
          if (parsed.error) {
            fieldError(editor, editorError, parsed.error);
            editor.focus();
            return;
          }
          body.payload = parsed.value;
        }
        send("resume", body, (a) => `${a.message ?? "Resumed"}${a.status ? ` (now ${a.status})` : ""}.`);
      },
    },
    radios,
    legal.forwardPhase
      ? h(
          "div",
          { class: "payload-editor" },
          h("label", { class: "choice" }, replaceBox, h("span", { class: "choice-label" }, "Replace the payload first")),
          editor,
          editorError,
        )
      : h("p", { class: "muted" }, "The payload can only be replaced in the forward phase."),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "btn btn-primary", id: "resume-submit" }, "Resume the saga")),
  );
}

export async function sagaPage(view, { id }, ctx) {
  const head = h("div", { class: "page-head" });
  const actions = h("div");
  // The answer to the last action stays while the saga's status (and so the buttons) change.
  const message = h("div", { class: "action-message", id: "action-message", "aria-live": "polite" });
  const problem = h("div");
  const meta = card("Details");
  const timelineBox = h("div", { class: "chart-box timeline-box", id: "timeline" });
  const legend = h(
    "div",
    { class: "legend legend-timeline" },
    ["success", "failed", "timeout", "skipped", "running"].map((s) => h("span", { class: `key key-${s}` }, s.toUpperCase())),
    h("span", { class: "key key-compensate" }, "↩ compensation"),
  );
  const logsBox = h("div");
  const operatorBox = h("div");
  const payloadBox = h("div");
  const shown = new Map(); // section -> signature of what it shows

  replace(
    view,
    h("nav", { class: "crumbs" }, h("a", { href: "#/sagas" }, "Sagas"), " › ", h("span", { class: "mono" }, id)),
    head,
    actions,
    message,
    problem,
    meta,
    card("Timeline", legend, timelineBox),
    card("Step logs", logsBox),
    operatorBox,
    card("Payload", payloadBox),
  );

  function changed(section, value) {
    const signature = JSON.stringify(value);
    if (shown.get(section) === signature) return false;
    shown.set(section, signature);
    return true;
  }

  // The workflow's step names label the timeline's lanes; a saga shows without them too.
  const workflowsLoaded = api("workflows", { signal: ctx.signal }).then(
    (data) => data.workflows,
    () => [],
  );

  const poller = ctx.poll(async () => {
    let detail;
    try {
      detail = await api(`sagas/${encodeURIComponent(id)}`, { signal: ctx.signal });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      if (error instanceof ApiError && (error.status === 404 || error.status === 400)) {
        replace(head, h("h1", {}, "Saga not found"));
        replace(problem, errorBox(error));
        return false;
      }
      replace(problem, errorBox(error));
      return true;
    }
    const workflows = await workflowsLoaded;
    if (ctx.closed) return false;
    const saga = detail.saga;
    const logs = Array.isArray(detail.step_logs) ? detail.step_logs : [];
    const now = Date.now();
    const workflow = workflows.find((w) => w.name === saga.workflow_name) ?? null;
    if (changed("head", [saga.status, saga.workflow_name])) {
      replace(
        head,
        h("h1", {}, saga.workflow_name, " ", badge(saga.status, { id: "saga-status" })),
        h("span", { class: "muted updated" }, TERMINAL.has(saga.status) ? "Ended" : "Live · refreshes every 2 s"),
      );
    }
    const legal = legalActions(saga, logs);
    if (changed("actions", [saga.status, legal, session.canWrite])) {
      replace(actions, actionsBar(saga, logs, { onDone: () => poller.kick(), signal: ctx.signal, message }));
    }
    if (changed("problem", saga.error_message ?? null)) {
      replace(problem, saga.error_message ? h("div", { class: "alert alert-error", id: "saga-error" }, h("strong", {}, "Error "), saga.error_message) : null);
    }
    replace(meta, h("h2", { class: "card-title" }, "Details"), metaList(saga, workflow, now));
    const drawn = logs.length || !TERMINAL.has(saga.status);
    replace(
      timelineBox,
      drawn ? sagaTimeline(saga, logs, { stepNames: workflow?.step_names ?? [], now }) : empty("No step ran."),
    );
    if (changed("logs", logs)) {
      const open = new Map();
      for (const el of logsBox.querySelectorAll("details.log")) open.set(el.dataset.logId, el.open);
      replace(logsBox, logList(logs, open));
    }
    if (changed("operator", detail.operator_actions ?? null)) {
      const ops = Array.isArray(detail.operator_actions) ? detail.operator_actions : null;
      replace(operatorBox, ops ? card("Operator actions", operatorTable(ops)) : null);
    }
    if (changed("payload", saga.payload)) replace(payloadBox, jsonView(saga.payload, { label: "saga payload" }));
    return !TERMINAL.has(saga.status);
  }, REFRESH_MS);
}
