// The convo console: a small client over the public /v1 API and its event streams, nothing else.
// Signed in by a session cookie (HttpOnly: this script never sees it); every request that changes
// something carries the session's CSRF token. Text from the server is put in the page as text, never as HTML.
"use strict";

const EVENT_TYPES = [
  "AIReplyFailed", "AgentMessageSent", "AssistantMessageSent", "ConversationAssigned", "ConversationHandedBack",
  "ConversationHandedOff", "ConversationParked", "ConversationReopened", "ConversationResolved", "ConversationResumed",
  "ConversationStarted", "InternalNoteAdded", "MessagesProcessed", "ProcessingConflictDetected", "ToolCalled",
  "VisitorDataErased", "VisitorForgotten", "VisitorMessageReceived", "WorkflowCompleted", "WorkflowFailed",
  "WorkflowStarted", "WorkflowTransitioned", "WorkflowVariableSet", "WorkflowWaitingForInput",
];
const MESSAGE_TYPES = new Set(["VisitorMessageReceived", "AssistantMessageSent", "AgentMessageSent", "VisitorDataErased"]);

const state = { session: null, inboxNext: null, stream: null, inboxTimer: null, conversation: null };

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

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrfToken;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  let payload = null;
  try { payload = await response.json(); } catch (_) { payload = null; }
  if (!response.ok) {
    const error = payload && payload.error ? payload.error : { code: "http_" + response.status, message: response.statusText };
    if (response.status === 401 && path !== "/console/session") showSignIn("Your session ended: sign in again.");
    throw new APIError(response.status, error.code, error.message);
  }
  return payload;
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

function show(sectionId) {
  for (const id of ["sign-in", "inbox", "conversation"]) $(id).hidden = id !== sectionId;
  $("main").focus();
}

function showSignIn(message) {
  state.session = null;
  stopLive();
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in-error").textContent = message || "";
  show("sign-in");
  $("key").focus();
}

function signedIn(session) {
  state.session = session;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `${session.tenant} · ${session.scopes.join(", ")}`;
  route();
}

function canAct() { return state.session && state.session.scopes.includes("agent"); }

// MARK: Inbox

async function loadInbox(append) {
  const params = new URLSearchParams({ limit: "50" });
  const status = $("filter-status").value;
  const visitor = $("filter-visitor").value.trim();
  if (status) params.set("status", status);
  if (visitor) params.set("visitor", visitor);
  if (append && state.inboxNext !== null) params.set("after", String(state.inboxNext));
  try {
    const page = await api("GET", "/v1/conversations?" + params);
    const rows = $("inbox-rows");
    if (!append) rows.replaceChildren();
    for (const entry of page.conversations) {
      const link = element("a", { href: "#/conversations/" + encodeURIComponent(entry.conversationId) }, entry.conversationId);
      rows.append(element("tr", { "data-conversation": entry.conversationId },
        element("td", {}, link), element("td", {}, entry.visitorUid || ""), element("td", {}, entry.status),
        element("td", {}, entry.assignedTo || ""), element("td", { class: entry.unread > 0 ? "unread" : "" }, entry.unread),
        element("td", {}, when(entry.lastActivityAt))));
    }
    state.inboxNext = page.next === undefined ? null : page.next;
    $("inbox-more").hidden = state.inboxNext === null;
    $("inbox-empty").hidden = rows.children.length > 0;
    $("inbox-error").textContent = "";
  } catch (error) {
    $("inbox-error").textContent = error.message;
  }
}

function openInbox() {
  show("inbox");
  loadInbox(false);
  // The inbox has no stream of its own: its first page is asked again every few seconds.
  state.inboxTimer = setInterval(() => { if (!document.hidden) loadInbox(false); }, 3000);
}

// MARK: Conversation

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
      element("dt", {}, "hash"), element("dd", { class: "mono" }, metadata.hash || "")),
    element("pre", {}, JSON.stringify({ data: event.data, metadata: event.metadata }, null, 2)));
  return element("li", { "data-position": String(event.globalPosition), "data-type": event.type }, details);
}

// Messages are added, never rebuilt: what the reader is looking at (or about to click) stays where it is. A
// message's text may still change (an erasure turns it into "[erased]").
async function loadTranscript(conversation) {
  const page = await api("GET", `/v1/conversations/${encodeURIComponent(conversation)}/messages?limit=1000`);
  if (state.conversation !== conversation) return;
  const list = $("transcript");
  for (const message of page.messages) {
    const existing = list.querySelector(`li[data-event="${message.eventId}"]`);
    if (existing) {
      const text = existing.querySelector(".text");
      if (text.textContent !== message.text) text.textContent = message.text;
      continue;
    }
    const item = element("li", { class: "message " + message.role, "data-role": message.role, "data-event": message.eventId },
      element("span", { class: "role" }, message.role), " ", element("span", { class: "text" }, message.text),
      " ", element("time", {}, when(message.at)));
    if (message.role === "assistant") {
      const why = element("button", { type: "button", class: "why" }, "Why this reply?");
      why.addEventListener("click", () => explain(conversation, message.eventId));
      item.append(" ", why);
    }
    list.append(item);
  }
}

async function loadFacts(conversation) {
  const facts = await api("GET", `/v1/conversations/${encodeURIComponent(conversation)}`);
  const workflow = facts.workflowState || {};
  const rows = [
    ["visitor", facts.visitorUid], ["status", facts.status], ["assigned to", facts.assignedTo || "the AI"],
    ["workflow", workflow.workflowId ? `${workflow.workflowId} v${workflow.workflowVersion || ""}` : ""],
    ["at node", workflow.currentNodeId || ""], ["started", when(facts.startedAt)], ["last activity", when(facts.lastActivityAt)],
  ];
  $("conversation-facts").replaceChildren(...rows.flatMap(([term, value]) => [element("dt", {}, term), element("dd", { "data-fact": term }, value || "")]));
}

async function explain(conversation, eventId) {
  try {
    const chain = await api("GET", `/v1/conversations/${encodeURIComponent(conversation)}/explain/${encodeURIComponent(eventId)}`);
    $("explain-body").textContent = JSON.stringify(chain, null, 2);
  } catch (error) {
    $("explain-body").textContent = error.message;
  }
  $("explain").hidden = false;
  $("explain").scrollIntoView();
}

function stopLive() {
  if (state.stream) { state.stream.close(); state.stream = null; }
  if (state.inboxTimer) { clearInterval(state.inboxTimer); state.inboxTimer = null; }
}

async function openConversation(conversation) {
  state.conversation = conversation;
  show("conversation");
  $("conversation-title").textContent = "Conversation " + conversation;
  $("timeline").replaceChildren();
  $("transcript").replaceChildren();
  $("explain").hidden = true;
  $("verify-result").textContent = "";
  $("action-result").textContent = "";
  $("agent-actions").hidden = !canAct();
  try {
    await Promise.all([loadFacts(conversation), loadTranscript(conversation)]);
  } catch (error) {
    $("conversation-facts").replaceChildren(element("p", { class: "error", role: "alert" }, error.message));
    return;
  }
  // Every stored event, then live ones: the stream starts at the beginning and follows.
  const stream = new EventSource(`/v1/conversations/${encodeURIComponent(conversation)}/stream?after=0`);
  state.stream = stream;
  // A burst of events is followed by one refresh of the facts, and of the transcript when a message came.
  let refresh = null;
  let messagesChanged = false;
  const onEvent = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    if (document.querySelector(`#timeline li[data-position="${event.globalPosition}"]`)) return;
    $("timeline").append(eventItem(event));
    if (MESSAGE_TYPES.has(event.type)) messagesChanged = true;
    clearTimeout(refresh);
    refresh = setTimeout(() => {
      if (state.conversation !== conversation) return;
      loadFacts(conversation).catch(() => {});
      if (messagesChanged) {
        messagesChanged = false;
        loadTranscript(conversation).catch(() => {});
      }
    }, 150);
  };
  for (const type of EVENT_TYPES) stream.addEventListener(type, onEvent);
  stream.onmessage = onEvent;
}

async function act(path, body, done) {
  try {
    const result = await api("POST", `/v1/conversations/${encodeURIComponent(state.conversation)}/${path}`, body);
    $("action-result").textContent = `${result.type} stored at position ${result.globalPosition}`;
    if (done) done();
  } catch (error) {
    $("action-result").textContent = `${error.code}: ${error.message}`;
  }
}

// MARK: Routing

function route() {
  if (!state.session) return;
  stopLive();
  const hash = location.hash || "#/inbox";
  const match = hash.match(/^#\/conversations\/(.+)$/);
  if (match) openConversation(decodeURIComponent(match[1]));
  else openInbox();
}

function wire() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    try {
      signedIn(await api("POST", "/console/session", { key }));
    } catch (error) {
      $("sign-in-error").textContent = error.message;
    }
  });
  $("sign-out").addEventListener("click", async () => {
    try { await api("DELETE", "/console/session"); } catch (_) { /* signed out either way */ }
    showSignIn("Signed out.");
  });
  $("inbox-filter").addEventListener("submit", (event) => { event.preventDefault(); loadInbox(false); });
  $("inbox-more").addEventListener("click", () => loadInbox(true));
  $("verify").addEventListener("click", async () => {
    $("verify-result").textContent = "verifying…";
    try {
      const report = await api("GET", `/v1/conversations/${encodeURIComponent(state.conversation)}/verify`);
      const ok = report.issueCount === 0;
      $("verify-result").textContent = ok
        ? `chain verified: ${report.events} events in ${report.streams} streams, no issue`
        : `verification FAILED: ${report.issueCount} issue(s): ` + report.issues.slice(0, 5).map((issue) => `${issue.kind} at ${issue.stream} v${issue.streamVersion}: ${issue.message}`).join("; ");
      $("verify-result").className = ok ? "ok" : "error";
    } catch (error) {
      $("verify-result").textContent = error.message;
      $("verify-result").className = "error";
    }
  });
  $("take-over").addEventListener("click", () => act("assignment", { requestId: requestId() }));
  $("resolve").addEventListener("click", () => act("resolve", { requestId: requestId() }));
  $("reply-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("agent-messages", { messageId: requestId(), text: $("reply-text").value }, () => { $("reply-text").value = ""; });
  });
  $("note-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("notes", { noteId: requestId(), text: $("note-text").value }, () => { $("note-text").value = ""; });
  });
  $("handback-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("handback", { requestId: requestId(), nodeId: $("handback-node").value.trim() });
  });
  window.addEventListener("hashchange", route);
}

async function start() {
  wire();
  try {
    signedIn(await api("GET", "/console/session"));
  } catch (_) {
    showSignIn("");
  }
}

document.addEventListener("DOMContentLoaded", start);
