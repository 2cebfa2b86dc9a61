// The overview: sagas by status, started and ended per minute over the last hour, the outbox
// backlog (GET /api/v1/stats), and the sagas that need a look: the newest FAILED and PAUSED
// (the list endpoint, ten each). Refreshed every 5 s while the tab is visible.

import { api, noSuchEndpoint } from "../api.js";
import { activityChart } from "../charts.js";
import {
  ago,
  badge,
  card,
  clock,
  count,
  duration,
  empty,
  errorBox,
  h,
  link,
  replace,
  route,
  shortId,
  STATUSES,
} from "../dom.js";

const REFRESH_MS = 5000;
const NEED_A_LOOK = 10;

function tiles(counts) {
  return h(
    "div",
    { class: "tiles", id: "status-counts" },
    STATUSES.map((status) =>
      h(
        "a",
        {
          class: `tile tile-${status.toLowerCase()}`,
          href: route(["sagas"], { status }),
          dataset: { status },
        },
        h("span", { class: "tile-label" }, status),
        h("span", { class: "tile-count" }, count(counts?.[status] ?? (counts ? 0 : null))),
      ),
    ),
  );
}

function activityCard(activity) {
  const points = Array.isArray(activity) ? activity : [];
  const started = points.reduce((n, p) => n + (Number(p.started) || 0), 0);
  const ended = points.reduce((n, p) => n + (Number(p.ended) || 0), 0);
  return card(
    "Last hour",
    h(
      "div",
      { class: "legend" },
      h("span", { class: "key key-started" }, "Started ", h("strong", {}, count(started))),
      h("span", { class: "key key-ended" }, "Ended ", h("strong", {}, count(ended))),
      h("span", { class: "muted" }, "per minute"),
    ),
    h("div", { class: "chart-box", id: "activity" }, activityChart(points)),
  );
}

function outboxCard(outbox) {
  const backlog = outbox?.backlog;
  const oldest = outbox?.oldest_age_secs;
  return card(
    "Event outbox",
    h(
      "div",
      { class: "metric", id: "outbox" },
      h("span", { class: `metric-value${backlog > 0 ? " metric-warn" : ""}`, id: "outbox-backlog" }, count(backlog)),
      h("span", { class: "metric-label" }, "events waiting to be published"),
    ),
    h(
      "p",
      { class: "muted" },
      typeof oldest === "number" ? `Oldest waiting ${duration(oldest * 1000)}.` : "Nothing waiting.",
    ),
  );
}

function lookTable(id, sagas) {
  if (!sagas.length) return empty("None.");
  return h(
    "table",
    { class: "table", id },
    h("thead", {}, h("tr", {}, ["Saga", "Workflow", "Status", "Error", "Updated"].map((t) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      sagas.map((saga) =>
        h(
          "tr",
          {},
          h("td", { class: "mono" }, link(["sagas", saga.saga_id], shortId(saga.saga_id), { title: saga.saga_id })),
          h("td", {}, saga.workflow_name),
          h("td", {}, badge(saga.status)),
          h("td", { class: "error-cell" }, saga.error_message ?? ""),
          h("td", { title: saga.updated_at ?? "" }, ago(saga.updated_at)),
        ),
      ),
    ),
  );
}

async function recent(status, signal) {
  try {
    const page = await api("sagas", { query: { status, page_size: NEED_A_LOOK }, signal });
    return { sagas: page.sagas, total: page.pagination?.total_count ?? page.sagas.length };
  } catch (error) {
    // A server without PAUSED (SPEC §11) refuses the filter: nothing can be paused there.
    if (error.status === 400) return { sagas: [], total: 0, unsupported: true };
    throw error;
  }
}

export async function overviewPage(view, _params, ctx) {
  const updated = h("span", { class: "muted updated" });
  const body = h("div", { class: "overview" });
  replace(
    view,
    h("div", { class: "page-head" }, h("h1", {}, "Overview"), updated),
    body,
  );
  ctx.poll(async () => {
    const [stats, failed, paused] = await Promise.allSettled([
      api("stats", { signal: ctx.signal }),
      recent("FAILED", ctx.signal),
      recent("PAUSED", ctx.signal),
    ]);
    if (ctx.closed) return false;
    const parts = [];
    if (stats.status === "fulfilled") {
      parts.push(
        tiles(stats.value.counts),
        h("div", { class: "grid-2" }, activityCard(stats.value.activity), outboxCard(stats.value.outbox)),
      );
    } else if (noSuchEndpoint(stats.reason)) {
      parts.push(tiles(null), h("div", { class: "alert" }, "This server does not serve /api/v1/stats: counts and activity are not available."));
    } else {
      parts.push(tiles(null), errorBox(stats.reason));
    }
    const look = h("div", { class: "need-a-look" });
    for (const [title, id, result] of [
      ["Failed", "need-a-look-failed", failed],
      ["Paused", "need-a-look-paused", paused],
    ]) {
      const status = title.toUpperCase();
      let content;
      if (result.status === "rejected") content = errorBox(result.reason);
      else if (result.value.unsupported) content = empty("This server has no PAUSED status.");
      else content = lookTable(id, result.value.sagas);
      const total = result.status === "fulfilled" ? result.value.total : null;
      look.append(
        h(
          "div",
          { class: "look-section" },
          h(
            "h3",
            {},
            badge(status),
            " ",
            total ? h("a", { class: "more", href: route(["sagas"], { status }) }, `${count(total)} in all →`) : null,
          ),
          content,
        ),
      );
    }
    parts.push(card("Need a look", look));
    replace(body, parts);
    updated.textContent = `Updated ${clock(Date.now(), true)} · refreshes every ${REFRESH_MS / 1000} s`;
    return true;
  }, REFRESH_MS);
}
