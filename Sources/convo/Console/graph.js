// A workflow drawn as a graph (SVG): nodes in rows by their distance from the start node, edges by branch,
// problems marked on their nodes; and the differences between two versions. Pure functions of a workflow
// document, so a draft that does not parse as a workflow is still drawn as far as it goes.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_WIDTH = 170, NODE_HEIGHT = 46, COLUMN_GAP = 40, ROW_GAP = 56, MARGIN = 16;
// Room on the left for the edges that go back up (loops).
const GUTTER = 70;

function svg(tag, attributes, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes || {})) if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  for (const child of children) if (child !== undefined && child !== null) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function workflowNodes(doc) {
  return (doc && Array.isArray(doc.nodes) ? doc.nodes : []).filter((node) => node && typeof node.id === "string");
}

function branchLabel(branch, index) {
  const condition = (branch && branch.if) || {};
  if (condition.op && condition.value !== undefined) {
    const value = String(condition.value);
    return `${condition.op} ${value.length > 16 ? value.slice(0, 15) + "…" : value}`;
  }
  return `branch ${index + 1}`;
}

// Every edge of the document: a node's next, its branches, its default and where it goes on failure.
function workflowEdges(doc) {
  const edges = [];
  for (const node of workflowNodes(doc)) {
    if (typeof node.next === "string") edges.push({ from: node.id, to: node.next, label: "" });
    if (Array.isArray(node.branches)) {
      node.branches.forEach((branch, index) => {
        if (branch && typeof branch.next === "string") edges.push({ from: node.id, to: branch.next, label: branchLabel(branch, index) });
      });
    }
    if (typeof node.default === "string") edges.push({ from: node.id, to: node.default, label: "otherwise" });
    if (typeof node.onFailure === "string") edges.push({ from: node.id, to: node.onFailure, label: "on failure" });
  }
  return edges;
}

// Lays the document out: a target that is not a node is drawn as a "missing" one, so the edge has somewhere
// to go.
function layoutWorkflow(doc) {
  const nodes = workflowNodes(doc).map((node) => ({ id: node.id, type: String(node.type || "?") }));
  const byId = new Map(nodes.map((node) => [node.id, node]));
  const edges = workflowEdges(doc);
  for (const edge of edges) {
    if (!byId.has(edge.to)) {
      const missing = { id: edge.to, type: "missing" };
      byId.set(edge.to, missing);
      nodes.push(missing);
    }
  }
  // Rows by breadth-first distance from the start node; what it does not reach is laid out the same way
  // below, from its first node in document order, so a broken draft still reads as a graph.
  const depth = new Map();
  const walk = (root, row) => {
    depth.set(root, row);
    const queue = [root];
    while (queue.length) {
      const id = queue.shift();
      for (const edge of edges) {
        if (edge.from === id && !depth.has(edge.to)) { depth.set(edge.to, depth.get(id) + 1); queue.push(edge.to); }
      }
    }
  };
  if (doc && typeof doc.start === "string" && byId.has(doc.start)) walk(doc.start, 0);
  for (const node of nodes) {
    if (!depth.has(node.id)) walk(node.id, depth.size ? Math.max(...depth.values()) + 1 : 0);
  }
  const rows = new Map();
  for (const node of nodes) {
    const row = depth.get(node.id);
    if (!rows.has(row)) rows.set(row, []);
    rows.get(row).push(node);
  }
  let columns = 1;
  for (const [row, members] of rows) {
    columns = Math.max(columns, members.length);
    members.forEach((node, column) => {
      node.row = row;
      node.x = GUTTER + column * (NODE_WIDTH + COLUMN_GAP);
      node.y = MARGIN + row * (NODE_HEIGHT + ROW_GAP);
    });
  }
  const rowCount = rows.size ? Math.max(...rows.keys()) + 1 : 1;
  return {
    nodes, byId, edges,
    width: GUTTER + MARGIN + columns * (NODE_WIDTH + COLUMN_GAP),
    height: 2 * MARGIN + rowCount * (NODE_HEIGHT + ROW_GAP),
  };
}

// Draws `doc` into `container`. `marks.issues`: node id → problems (the node is marked invalid, its problems
// in its title); `marks.classes`: node id → a class (added, changed); `onSelect(id)` when a node is chosen.
function drawWorkflow(container, doc, marks, onSelect) {
  const layout = layoutWorkflow(doc);
  const issues = (marks && marks.issues) || new Map();
  const classes = (marks && marks.classes) || new Map();
  const root = svg("svg", {
    width: layout.width, height: layout.height, viewBox: `0 0 ${layout.width} ${layout.height}`, class: "workflow-graph",
    role: "group", "aria-label": `${layout.nodes.length} nodes, ${layout.edges.length} edges`,
  });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))));
  for (const edge of layout.edges) {
    const from = layout.byId.get(edge.from), to = layout.byId.get(edge.to);
    if (!from || !to) continue;
    let d, labelX, labelY;
    if (to.row > from.row) {
      // Down: into the target's top; the label sits just above the target, clear of its siblings'.
      const x1 = from.x + NODE_WIDTH / 2, y1 = from.y + NODE_HEIGHT, x2 = to.x + NODE_WIDTH / 2, y2 = to.y;
      d = `M${x1},${y1} C${x1},${y1 + 30} ${x2},${y2 - 30} ${x2},${y2}`;
      labelX = x2; labelY = y2 - 6;
    } else if (to.row === from.row && to.x > from.x) {
      const y = from.y + NODE_HEIGHT / 2, x1 = from.x + NODE_WIDTH, x2 = to.x;
      d = `M${x1},${y} L${x2},${y}`;
      labelX = (x1 + x2) / 2; labelY = y - 6;
    } else {
      // Back up (a loop) or leftwards: out of the source's left side, through the gutter, into the target's.
      const x1 = from.x, y1 = from.y + NODE_HEIGHT / 2, x2 = to.x, y2 = to.y + NODE_HEIGHT / 2;
      const bend = Math.min(GUTTER - 8, 24 + 10 * Math.abs(from.row - to.row));
      d = `M${x1},${y1} C${x1 - bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
      labelX = Math.max(40, Math.min(x1, x2) - bend); labelY = (y1 + y2) / 2;
    }
    const group = svg("g", { class: "edge", "data-from": edge.from, "data-to": edge.to }, svg("path", { d, "marker-end": "url(#arrow)" }));
    if (edge.label) group.append(svg("text", { x: labelX, y: labelY, class: "edge-label", "text-anchor": "middle" }, edge.label));
    root.append(group);
  }
  for (const node of layout.nodes) {
    const problems = issues.get(node.id) || [];
    const names = ["node", "node-" + node.type.replace(/[^a-z_]/g, "")];
    if (problems.length) names.push("invalid");
    if (classes.has(node.id)) names.push(classes.get(node.id));
    const label = `${node.id}, ${node.type}` + (problems.length ? `; problems: ${problems.join("; ")}` : "") + (classes.has(node.id) ? `; ${classes.get(node.id)}` : "");
    const group = svg("g", { class: names.join(" "), "data-node": node.id, tabindex: 0, role: "button", "aria-label": label, transform: `translate(${node.x},${node.y})` },
      svg("title", {}, label),
      svg("rect", { width: NODE_WIDTH, height: NODE_HEIGHT, rx: 6 }),
      svg("text", { x: 10, y: 19, class: "node-id" }, node.id.length > 22 ? node.id.slice(0, 21) + "…" : node.id),
      svg("text", { x: 10, y: 36, class: "node-type" }, problems.length ? `⚠ ${node.type}` : node.type));
    if (onSelect) {
      group.addEventListener("click", () => onSelect(node.id));
      group.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); onSelect(node.id); } });
    }
    root.append(group);
  }
  container.replaceChildren(root);
  return layout;
}

function canonical(value) {
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  if (value && typeof value === "object") return "{" + Object.keys(value).sort().map((key) => JSON.stringify(key) + ":" + canonical(value[key])).join(",") + "}";
  return JSON.stringify(value);
}

// What changed from `before` to `after`: nodes added, removed and changed (by id), and the workflow's own fields.
function diffWorkflows(before, after) {
  const old = new Map(workflowNodes(before).map((node) => [node.id, canonical(node)]));
  const now = new Map(workflowNodes(after).map((node) => [node.id, canonical(node)]));
  const result = { added: [], removed: [], changed: [], fields: [] };
  for (const [id, text] of now) {
    if (!old.has(id)) result.added.push(id);
    else if (old.get(id) !== text) result.changed.push(id);
  }
  for (const id of old.keys()) if (!now.has(id)) result.removed.push(id);
  for (const field of ["name", "start"]) {
    if ((before || {})[field] !== (after || {})[field]) result.fields.push(`${field}: ${JSON.stringify((before || {})[field])} → ${JSON.stringify((after || {})[field])}`);
  }
  return result;
}
