// What the console and the demo share: the event types a stream names, building the page from text (never
// from HTML), idempotency keys and dates. Loaded before either page's script.
"use strict";

const EVENT_TYPES = [
  "AIReplyFailed", "AgentMessageSent", "AssistantMessageSent", "ConversationAssigned", "ConversationHandedBack",
  "ConversationHandedOff", "ConversationParked", "ConversationReopened", "ConversationResolved", "ConversationResumed",
  "ConversationStarted", "InternalNoteAdded", "MessagesProcessed", "ProcessingConflictDetected", "ToolCalled",
  "VisitorDataErased", "VisitorForgotten", "VisitorMessageReceived", "WorkflowCompleted", "WorkflowFailed",
  "WorkflowStarted", "WorkflowTransitioned", "WorkflowVariableSet", "WorkflowWaitingForInput",
];

function $(id) { return document.getElementById(id); }

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An idempotency key for an action (crypto.randomUUID needs a secure context; this does not).
function requestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function when(date) {
  if (!date) return "";
  const parsed = new Date(date);
  return isNaN(parsed) ? String(date) : parsed.toLocaleString();
}

// One event of a timeline: its position and type, the rest (stream, actor, lock token, hash, data and
// metadata) on demand.
function eventItem(event) {
  const metadata = event.metadata || {};
  const actor = metadata.actor || metadata.userId || metadata.causedBy || "";
  const details = element("details", {},
    element("summary", {}, `#${event.globalPosition} ${event.type}`, event.erased ? " (erased)" : ""),
    element("dl", { class: "facts" },
      element("dt", {}, "stream"), element("dd", {}, `${event.stream} v${event.streamVersion}`),
      element("dt", {}, "recorded"), element("dd", {}, when(event.recordedAt)),
      element("dt", {}, "actor"), element("dd", {}, typeof actor === "string" ? actor : JSON.stringify(actor)),
      element("dt", {}, "lock token"), element("dd", {}, metadata.lockToken || ""),
      element("dt", {}, "hash"), element("dd", { class: "mono", "data-field": "hash" }, "")),
    element("pre", {}, JSON.stringify({ data: event.data, metadata: event.metadata }, null, 2)));
  return element("li", { "data-position": String(event.globalPosition), "data-type": event.type }, details);
}
