// JSON values as a collapsible, formatted tree (details/summary), every key and value as
// text. A very large value is shown as indented text instead, so a 256 KiB payload does not
// become tens of thousands of nodes.

import { append, h } from "./dom.js";

const TREE_LIMIT = 1500; // values in a tree before it is shown as plain text

function size(value, budget) {
  let n = 0;
  const stack = [value];
  while (stack.length && n <= budget) {
    const item = stack.pop();
    n += 1;
    if (item && typeof item === "object") stack.push(...Object.values(item));
  }
  return n;
}

function scalar(value) {
  if (value === null) return h("span", { class: "j-null" }, "null");
  switch (typeof value) {
    case "string":
      return h("span", { class: "j-string" }, JSON.stringify(value));
    case "number":
      return h("span", { class: "j-number" }, String(value));
    case "boolean":
      return h("span", { class: "j-bool" }, String(value));
    default:
      return h("span", { class: "j-null" }, String(value));
  }
}

function node(value, depth, openDepth) {
  if (!value || typeof value !== "object") return scalar(value);
  const isArray = Array.isArray(value);
  const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
  const [open, close] = isArray ? ["[", "]"] : ["{", "}"];
  if (entries.length === 0) return h("span", { class: "j-punct" }, open + close);
  const noun = isArray ? (entries.length === 1 ? "item" : "items") : entries.length === 1 ? "key" : "keys";
  const details = h(
    "details",
    { class: "j-node", open: depth < openDepth },
    h(
      "summary",
      {},
      h("span", { class: "j-punct" }, open),
      h("span", { class: "j-count" }, ` ${entries.length} ${noun} `),
      h("span", { class: "j-punct j-close-inline" }, close),
    ),
  );
  const list = h("div", { class: "j-children" });
  for (const [key, child] of entries) {
    append(
      list,
      h(
        "div",
        { class: "j-row" },
        isArray ? null : h("span", { class: "j-key" }, JSON.stringify(String(key))),
        isArray ? null : h("span", { class: "j-punct" }, ": "),
        node(child, depth + 1, openDepth),
      ),
    );
  }
  append(details, list, h("span", { class: "j-punct j-close" }, close));
  return details;
}

/**
 * A JSON value for reading: a tree opened `openDepth` levels deep, with a toggle to the raw
 * indented text. `null`/`undefined` show as "none".
 */
export function jsonView(value, { openDepth = 2, label } = {}) {
  if (value === undefined) return h("span", { class: "muted" }, "none");
  const raw = h("pre", { class: "json-raw", hidden: true }, JSON.stringify(value, null, 2));
  const big = size(value, TREE_LIMIT) > TREE_LIMIT;
  const tree = big ? null : h("div", { class: "json-tree" }, node(value, 0, openDepth));
  if (big) raw.hidden = false;
  const toggle = h(
    "button",
    {
      type: "button",
      class: "btn btn-small btn-ghost",
      onclick: () => {
        const showRaw = raw.hidden;
        raw.hidden = !showRaw;
        if (tree) tree.hidden = showRaw;
        toggle.textContent = showRaw ? "Tree" : "Raw";
      },
    },
    "Raw",
  );
  return h(
    "div",
    { class: "json", "aria-label": label || "JSON" },
    big ? null : h("div", { class: "json-tools" }, toggle),
    tree,
    raw,
  );
}
