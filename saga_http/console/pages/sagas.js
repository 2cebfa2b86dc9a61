// The saga list: the API's own paginated list (GET /api/v1/sagas) with its filters (status,
// workflow, correlation id), one page at a time, refreshed every 5 s while "Live" is on and
// the tab is visible. Nothing here loads more than one page.

import { api, session } from "../api.js";
import {
  ago,
  badge,
  clock,
  count,
  empty,
  errorBox,
  h,
  link,
  replace,
  route,
  shortId,
  STATUSES,
  time,
} from "../dom.js";

const REFRESH_MS = 5000;
const PAGE_SIZES = ["20", "50", "100"];
let live = true; // kept while the console is open

function filtersForm(query, workflowNames) {
  const status = h(
    "select",
    { id: "filter-status", name: "status", class: "input" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: query.get("status") === s }, s)),
  );
  const workflow = h("input", {
    id: "filter-workflow",
    name: "workflow_name",
    class: "input",
    list: "workflow-names",
    placeholder: "Any workflow",
    value: query.get("workflow_name") ?? "",
    autocomplete: "off",
  });
  const correlation = h("input", {
    id: "filter-correlation",
    name: "correlation_id",
    class: "input",
    placeholder: "Any correlation id",
    value: query.get("correlation_id") ?? "",
    autocomplete: "off",
  });
  const size = h(
    "select",
    { id: "filter-page-size", name: "page_size", class: "input" },
    PAGE_SIZES.map((n) => h("option", { value: n, selected: (query.get("page_size") ?? "20") === n }, `${n} a page`)),
  );
  return h(
    "form",
    {
      class: "filters",
      id: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = route(["sagas"], {
          status: status.value,
          workflow_name: workflow.value.trim(),
          correlation_id: correlation.value.trim(),
          page_size: size.value === "20" ? "" : size.value,
        });
      },
    },
    h("label", { class: "filter" }, h("span", { class: "label" }, "Status"), status),
    h("label", { class: "filter" }, h("span", { class: "label" }, "Workflow"), workflow),
    h("label", { class: "filter" }, h("span", { class: "label" }, "Correlation id"), correlation),
    h("label", { class: "filter" }, h("span", { class: "label" }, "Page size"), size),
    h(
      "div",
      { class: "filter filter-actions" },
      h("button", { type: "submit", class: "btn btn-primary", id: "filter-apply" }, "Apply"),
      h("a", { class: "btn btn-ghost", href: "#/sagas" }, "Clear"),
    ),
    h("datalist", { id: "workflow-names" }, workflowNames.map((name) => h("option", { value: name }))),
  );
}

function sagaTable(sagas) {
  return h(
    "table",
    { class: "table table-sagas", id: "saga-table" },
    h(
      "thead",
      {},
      h("tr", {}, ["Saga", "Workflow", "Status", "Step", "Correlation id", "Created", "Updated"].map((t) => h("th", {}, t))),
    ),
    h(
      "tbody",
      {},
      sagas.map((saga) =>
        h(
          "tr",
          { dataset: { sagaId: saga.saga_id } },
          h("td", { class: "mono" }, link(["sagas", saga.saga_id], shortId(saga.saga_id), { title: saga.saga_id, class: "saga-link" })),
          h("td", {}, saga.workflow_name),
          h("td", {}, badge(saga.status)),
          h("td", { class: "num" }, String(saga.current_step)),
          h("td", { class: "mono ellipsis", title: saga.correlation_id ?? "" }, saga.correlation_id ?? ""),
          h("td", {}, time(saga.created_at)),
          h("td", { title: saga.updated_at ?? "" }, ago(saga.updated_at)),
        ),
      ),
    ),
  );
}

function pager(query, pagination) {
  const page = Number(pagination.page) || 1;
  const size = Number(pagination.page_size) || 20;
  const total = Number(pagination.total_count) || 0;
  const first = total ? (page - 1) * size + 1 : 0;
  const last = Math.min(total, page * size);
  const to = (n) => route(["sagas"], { ...Object.fromEntries(query), page: n === 1 ? "" : n });
  const pages = Math.max(1, Math.ceil(total / size));
  return h(
    "div",
    { class: "pager", id: "pager" },
    h("span", { class: "muted", id: "pager-range" }, total ? `${count(first)}–${count(last)} of ${count(total)}` : "0 sagas"),
    h(
      "span",
      { class: "pager-links" },
      page > 1 ? h("a", { class: "btn btn-small", href: to(1) }, "« First") : null,
      page > 1 ? h("a", { class: "btn btn-small", href: to(page - 1), id: "pager-prev" }, "‹ Previous") : null,
      h("span", { class: "pager-page" }, `Page ${count(page)} of ${count(pages)}`),
      pagination.has_next ? h("a", { class: "btn btn-small", href: to(page + 1), id: "pager-next" }, "Next ›") : null,
    ),
  );
}

export async function sagasPage(view, { query }, ctx) {
  const liveBox = h("input", {
    type: "checkbox",
    id: "live",
    checked: live,
    onchange: () => {
      live = liveBox.checked;
      if (live) poller.kick();
    },
  });
  const updated = h("span", { class: "muted updated", id: "list-updated" });
  const result = h("div", { class: "card card-flush", id: "saga-list" }, h("p", { class: "empty" }, "Loading…"));
  const form = h("div", { class: "filters-box" });
  replace(
    view,
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, "Sagas"),
      h(
        "div",
        { class: "page-tools" },
        updated,
        h("label", { class: "toggle" }, liveBox, " Live"),
        session.canWrite ? h("a", { class: "btn btn-primary", href: "#/start", id: "start-link" }, "Start a saga") : null,
      ),
    ),
    form,
    result,
  );
  const params = Object.fromEntries(
    ["status", "workflow_name", "correlation_id", "page", "page_size"].map((k) => [k, query.get(k) ?? ""]),
  );
  api("workflows", { signal: ctx.signal })
    .then((data) => replace(form, filtersForm(query, data.workflows.map((w) => w.name))))
    .catch(() => replace(form, filtersForm(query, [])));
  let shown = false;
  const poller = ctx.poll(async () => {
    if (shown && !live) return true;
    try {
      const page = await api("sagas", { query: params, signal: ctx.signal });
      if (ctx.closed) return false;
      replace(
        result,
        page.sagas.length ? sagaTable(page.sagas) : empty("No saga matches these filters."),
        pager(query, page.pagination),
      );
      updated.textContent = `Updated ${clock(Date.now(), true)}`;
    } catch (error) {
      if (error.name === "AbortError") throw error;
      replace(result, errorBox(error));
    }
    shown = true;
    return true;
  }, REFRESH_MS);
}
