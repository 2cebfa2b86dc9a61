// The console's drawings, as SVG built node by node (text is always text): the activity
// chart of the overview, a saga's timeline, and a workflow's diagram.

import { clock, duration, parseTime, svg } from "./dom.js";

let uniqueIds = 0;
function uid(prefix) {
  uniqueIds += 1;
  return `${prefix}-${uniqueIds}`;
}

function truncate(text, max) {
  const s = String(text ?? "");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** A round step (1, 2 or 5 times a power of ten) giving at most about `ticks` intervals. */
function niceStep(span, ticks) {
  const raw = Math.max(span / ticks, 1e-9);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * magnitude >= raw) return m * magnitude;
  return 10 * magnitude;
}

function arrowMarker(id, cls) {
  return svg(
    "marker",
    { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", class: cls }),
  );
}

// ------------------------------------------------------------------ overview activity

/** Sagas started and ended per minute: `activity` is [{minute, started, ended}], oldest first. */
export function activityChart(activity) {
  const W = 720;
  const H = 210;
  const left = 40;
  const right = 10;
  const top = 14;
  const bottom = 28;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const points = Array.isArray(activity) ? activity : [];
  const peak = Math.max(1, ...points.map((p) => Math.max(Number(p.started) || 0, Number(p.ended) || 0)));
  const yStep = Math.max(1, niceStep(peak, 4));
  const max = yStep * Math.ceil(peak / yStep);
  const root = svg("svg", {
    class: "chart activity-chart",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": "Sagas started and ended per minute over the last hour",
  });
  for (let value = 0; value <= max; value += yStep) {
    const y = top + plotH - (value / max) * plotH;
    root.append(
      svg("line", { x1: left, x2: W - right, y1: y, y2: y, class: value ? "grid" : "axis" }),
      svg("text", { x: left - 8, y: y + 4, class: "tick", "text-anchor": "end" }, String(value)),
    );
  }
  const slot = plotW / Math.max(points.length, 1);
  const barW = Math.max(1, (slot - 2) / 2);
  points.forEach((point, i) => {
    const x = left + i * slot + 1;
    const started = Number(point.started) || 0;
    const ended = Number(point.ended) || 0;
    const hs = (started / max) * plotH;
    const he = (ended / max) * plotH;
    const when = parseTime(point.minute);
    const label = `${when === null ? point.minute : clock(when)}: ${started} started, ${ended} ended`;
    root.append(
      svg(
        "g",
        { class: "slot" },
        svg("title", {}, label),
        svg("rect", { x, y: top, width: slot, height: plotH, class: "slot-hit" }),
        svg("rect", { x, y: top + plotH - hs, width: barW, height: hs, class: "bar-started" }),
        svg("rect", { x: x + barW, y: top + plotH - he, width: barW, height: he, class: "bar-ended" }),
      ),
    );
    if (i % 15 === 0 || i === points.length - 1) {
      root.append(
        svg(
          "text",
          { x: x + slot / 2, y: H - 8, class: "tick", "text-anchor": "middle" },
          when === null ? "" : clock(when),
        ),
      );
    }
  });
  return root;
}

// ------------------------------------------------------------------ saga timeline

function offsetLabel(ms) {
  if (ms === 0) return "0";
  if (ms < 1000) return `+${Math.round(ms)} ms`;
  if (ms < 60000) return `+${Number((ms / 1000).toFixed(2))} s`;
  return `+${duration(ms)}`;
}

/**
 * A saga's timeline: one lane per step, one bar per step log placed on the time axis, the
 * executions in the upper half of the lane and the compensations (arrow-headed, pointing
 * back) in the lower half; a dashed line follows the saga from each log to the next, down the
 * steps and back up while compensating. `stepNames` (from the workflow) fixes the lanes.
 */
export function sagaTimeline(saga, logs, { stepNames = [], now = Date.now() } = {}) {
  const W = 1000;
  const gutter = 210;
  const rightPad = 130;
  const axisH = 34;
  const laneH = 46;
  const barH = 14;
  const names = [...stepNames];
  for (const log of logs) {
    const i = Number(log.step_index);
    if (Number.isInteger(i) && i >= 0 && i < 10000) {
      while (names.length <= i) names.push(null);
      if (!names[i]) names[i] = log.step_name;
    }
  }
  const lanes = Math.max(names.length, 1);
  const H = axisH + lanes * laneH + 8;
  const terminal = ["COMPLETED", "FAILED", "CANCELLED"].includes(saga.status);
  const times = [];
  for (const log of logs) {
    for (const t of [parseTime(log.started_at), parseTime(log.completed_at)]) if (t !== null) times.push(t);
  }
  const created = parseTime(saga.created_at);
  const t0 = Math.min(...[created, ...times].filter((t) => t !== null), now);
  let tEnd = Math.max(t0 + 1, ...times);
  if (!terminal) tEnd = Math.max(tEnd, now);
  else if (parseTime(saga.updated_at) !== null) tEnd = Math.max(tEnd, parseTime(saga.updated_at));
  const span = Math.max(tEnd - t0, 1);
  const plotW = W - gutter - rightPad;
  const x = (t) => gutter + ((t - t0) / span) * plotW;

  const root = svg("svg", {
    class: "chart timeline",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": "Timeline of the saga's step executions and compensations",
  });
  const flowId = uid("flow");
  root.append(svg("defs", {}, arrowMarker(flowId, "flow-head")));

  // Lanes and their labels.
  for (let i = 0; i < lanes; i += 1) {
    const y = axisH + i * laneH;
    root.append(
      svg("rect", { x: 0, y, width: W, height: laneH, class: i % 2 ? "lane lane-odd" : "lane" }),
      svg("text", { x: 14, y: y + 28, class: "lane-index" }, String(i + 1)),
      svg("text", { x: 36, y: y + 28, class: "lane-name" }, truncate(names[i] ?? `step ${i + 1}`, 24)),
    );
  }
  // Time axis.
  const step = Math.max(1, niceStep(span, 6));
  for (let t = 0; t <= span + 1; t += step) {
    const xt = x(t0 + t);
    root.append(
      svg("line", { x1: xt, x2: xt, y1: axisH - 6, y2: H - 8, class: "grid" }),
      svg("text", { x: xt, y: axisH - 12, class: "tick", "text-anchor": "middle" }, offsetLabel(t)),
    );
  }
  root.append(
    svg("text", { x: 14, y: axisH - 12, class: "tick tick-start" }, `start ${clock(t0, true)}`),
  );

  // The forward step in flight has no log until it ends: drawn from the last thing that
  // happened until now, so a running saga shows where it is.
  const entries = [...logs];
  const current = Number(saga.current_step);
  if ((saga.status === "STARTED" || saga.status === "RUNNING") && Number.isInteger(current) && current < lanes) {
    const last = Math.max(created ?? t0, ...times);
    entries.push({
      step_index: current,
      step_name: names[current] ?? `step ${current + 1}`,
      action: "EXECUTE",
      status: null,
      started_at: new Date(last).toISOString(),
      completed_at: null,
      inflight: true,
    });
  }

  // Bars, and the path from each one to the next.
  const ends = [];
  entries.forEach((log, order) => {
    const lane = Number.isInteger(Number(log.step_index)) ? Number(log.step_index) : 0;
    const compensate = log.action === "COMPENSATE";
    const start = parseTime(log.started_at) ?? t0;
    const finish = parseTime(log.completed_at);
    const running = finish === null;
    const end = running ? Math.max(now, start) : finish;
    const x1 = x(start);
    const w = Math.max(compensate ? 16 : 4, x(end) - x1);
    const y = axisH + lane * laneH + (compensate ? 24 : 7);
    const status = String(log.status ?? "RUNNING");

    const cls = [
      "bar",
      compensate ? "bar-compensate" : "bar-execute",
      `status-${running ? "running" : status.toLowerCase()}`,
      log.inflight ? "bar-inflight" : "",
    ].join(" ");
    const attempts = Number.isInteger(log.attempts) ? log.attempts : null;
    const took = duration(end - start);
    const tip = [
      `${log.action} ${log.step_name} — ${running ? "in flight" : status}`,
      running ? `for ${took} so far` : `took ${took}`,
      attempts ? `${attempts} attempt${attempts === 1 ? "" : "s"}` : null,
      log.error_message ? `error: ${log.error_message}` : null,
    ]
      .filter(Boolean)
      .join("\n");
    const shape = compensate
      ? svg("path", {
          d: `M${x1},${y + barH / 2} L${x1 + 7},${y} H${x1 + w} V${y + barH} H${x1 + 7} Z`,
          class: "bar-shape",
        })
      : svg("rect", { x: x1, y, width: w, height: barH, rx: 3, class: "bar-shape" });
    const labelText = `${running ? "RUNNING" : status}${attempts && attempts > 1 ? ` ×${attempts}` : ""} · ${took}`;
    const labelRight = x1 + w + 8 + labelText.length * 6.4 <= W;
    root.append(
      svg(
        "g",
        {
          class: cls,
          dataset: {
            order,
            step: log.step_name ?? "",
            action: log.action ?? "",
            status: running ? "RUNNING" : status,
            ...(log.inflight ? { inflight: "true" } : {}),
          },
        },
        svg("title", {}, tip),
        shape,
        svg(
          "text",
          {
            x: labelRight ? x1 + w + 8 : x1 - 8,
            y: y + barH - 3,
            class: "bar-label",
            "text-anchor": labelRight ? "start" : "end",
          },
          labelText,
        ),
      ),
    );
    ends.push({ xs: x1, xe: x1 + w, y: y + barH / 2 });
  });
  for (let i = 1; i < ends.length; i += 1) {
    const a = ends[i - 1];
    const b = ends[i];
    if (Math.abs(a.y - b.y) < 1 && b.xs >= a.xe) continue; // same row, side by side
    const mid = Math.max(a.xe, b.xs) + 0;
    root.insertBefore(
      svg("path", {
        d: `M${a.xe},${a.y} C${mid + 14},${a.y} ${b.xs - 14},${b.y} ${b.xs},${b.y}`,
        class: "flow",
        "marker-end": `url(#${flowId})`,
      }),
      root.querySelector("g.bar"),
    );
  }
  return root;
}

// ------------------------------------------------------------------ workflow diagram

/**
 * A workflow's steps left to right, each with its compensation below it, and the
 * compensation path running right to left (newest first). `steps` are objects with at least
 * `name`; `service`, `method` and `compensate` are drawn when known (`detailed`).
 */
export function workflowDiagram(steps, { detailed = true } = {}) {
  const boxW = 200;
  const boxH = detailed ? 62 : 44;
  const gap = 46;
  const padX = 16;
  const topY = 34;
  const compY = topY + boxH + 60;
  const n = Math.max(steps.length, 1);
  const W = padX * 2 + n * boxW + (n - 1) * gap;
  const H = detailed ? compY + boxH + 32 : topY + boxH + 20;
  const fwd = uid("fwd");
  const back = uid("back");
  const root = svg("svg", {
    class: "chart diagram",
    viewBox: `0 0 ${W} ${H}`,
    width: W,
    height: H,
    role: "img",
    "aria-label": "Workflow steps and their compensations",
  });
  root.append(
    svg("defs", {}, arrowMarker(fwd, "arrow-forward"), arrowMarker(back, "arrow-back")),
    svg("text", { x: padX, y: 20, class: "diagram-caption" }, "Forward steps →"),
  );
  if (detailed) {
    root.append(
      // Below the compensations: above them the arrows down would cross it.
      svg("text", { x: padX, y: compY + boxH + 22, class: "diagram-caption diagram-caption-back" }, "← Compensations, newest first"),
    );
  }
  steps.forEach((step, i) => {
    const bx = padX + i * (boxW + gap);
    const group = svg("g", { class: "diagram-step", dataset: { step: step.name ?? "" } });
    group.append(
      svg("title", {}, [step.name, step.service, step.method].filter(Boolean).join("\n")),
      svg("rect", { x: bx, y: topY, width: boxW, height: boxH, rx: 8, class: "box box-step" }),
      svg("text", { x: bx + 12, y: topY + (detailed ? 22 : 27), class: "box-index" }, `${i + 1}`),
      svg("text", { x: bx + 30, y: topY + (detailed ? 22 : 27), class: "box-title" }, truncate(step.name, 21)),
    );
    if (detailed) {
      group.append(
        svg("text", { x: bx + 12, y: topY + 42, class: "box-sub" }, truncate(step.method ?? "", 28)),
        svg("text", { x: bx + 12, y: topY + 56, class: "box-sub box-service" }, truncate(step.service ?? "", 28)),
      );
    }
    root.append(group);
    if (i > 0) {
      root.append(
        svg("line", {
          x1: bx - gap + 2,
          x2: bx - 3,
          y1: topY + boxH / 2,
          y2: topY + boxH / 2,
          class: "arrow arrow-forward-line",
          "marker-end": `url(#${fwd})`,
        }),
      );
    }
    if (!detailed) return;
    const has = typeof step.compensate === "string" && step.compensate !== "";
    const comp = svg("g", {
      class: `diagram-compensation${has ? "" : " diagram-compensation-none"}`,
      dataset: { step: step.name ?? "" },
    });
    comp.append(
      svg("title", {}, has ? `compensate ${step.name}: ${step.compensate}` : `${step.name} has no compensation (logged SKIPPED)`),
      svg("rect", { x: bx, y: compY, width: boxW, height: boxH, rx: 8, class: has ? "box box-comp" : "box box-none" }),
      svg("text", { x: bx + 12, y: compY + 24, class: "box-title" }, has ? "undo" : "no compensation"),
      svg("text", { x: bx + 12, y: compY + 44, class: "box-sub" }, has ? truncate(step.compensate, 28) : "logged SKIPPED"),
    );
    root.append(
      svg("line", {
        x1: bx + boxW / 2,
        x2: bx + boxW / 2,
        y1: topY + boxH + 3,
        y2: compY - 4,
        class: "arrow arrow-down",
        "marker-end": `url(#${back})`,
      }),
      comp,
    );
    if (i > 0) {
      root.append(
        svg("line", {
          x1: bx - 3,
          x2: bx - gap + 4,
          y1: compY + boxH / 2,
          y2: compY + boxH / 2,
          class: "arrow arrow-back-line",
          "marker-end": `url(#${back})`,
        }),
      );
    }
  });
  return root;
}
