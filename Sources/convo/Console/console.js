// The convo console: a small client over the public /v1 API and its event streams, nothing else.
// Signed in by a session cookie (HttpOnly: this script never sees it); every request that changes
// something carries the session's CSRF token. Text from the server is put in the page as text, never as HTML.
"use strict";

const MESSAGE_TYPES = new Set(["VisitorMessageReceived", "AssistantMessageSent", "AgentMessageSent", "VisitorDataErased"]);

const state = {
  session: null, inboxNext: null, inboxShown: [], inboxSequence: 0, stream: null, timers: [], conversation: null,
  workflowsNext: null, workflow: null, workflowVersion: null, positionWorkflow: null, positionDocument: null,
};
const SECTIONS = ["sign-in", "inbox", "conversation", "workflows", "workflow", "operations"];

class APIError extends Error {
  constructor(status, code, message, details) { super(message); this.status = status; this.code = code; this.details = details || []; }
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
    throw new APIError(response.status, error.code, error.message, error.details);
  }
  return payload;
}

function show(sectionId) {
  for (const id of SECTIONS) $(id).hidden = id !== sectionId;
  for (const link of document.querySelectorAll("#nav a")) {
    if (sectionId.startsWith(link.dataset.page)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
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

function inboxRow(entry) {
  const link = element("a", { href: "#/conversations/" + encodeURIComponent(entry.conversationId) }, entry.conversationId);
  return element("tr", { "data-conversation": entry.conversationId },
    element("td", {}, link), element("td", {}, entry.visitorUid || ""), element("td", {}, entry.status),
    element("td", {}, entry.assignedTo || ""), element("td", { class: entry.unread > 0 ? "unread" : "" }, entry.unread),
    element("td", {}, when(entry.lastActivityAt)));
}

// `mode`: "first" (a new filter: its first page), "more" (the next page, added below), or "refresh" (what is
// shown, asked again as deep as it goes, redrawn only when it changed, keeping the focused row's focus).
async function loadInbox(mode) {
  const rows = $("inbox-rows");
  // A later load (a new filter) wins over an earlier one still on its way.
  const sequence = ++state.inboxSequence;
  const params = new URLSearchParams();
  const filters = { status: $("filter-status").value, owner: $("filter-owner").value, assignedTo: $("filter-assignee").value.trim(), visitor: $("filter-visitor").value.trim() };
  for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
  if (mode === "more" && state.inboxNext !== null) params.set("after", String(state.inboxNext));
  params.set("limit", String(mode === "refresh" ? Math.min(1000, Math.max(50, rows.children.length)) : 50));
  try {
    const page = await api("GET", "/v1/conversations?" + params);
    if (sequence !== state.inboxSequence) return;
    if (mode === "more") {
      rows.append(...page.conversations.map(inboxRow));
      state.inboxShown = (state.inboxShown || []).concat(page.conversations);
    } else {
      const signature = JSON.stringify(page.conversations);
      if (mode === "first" || signature !== JSON.stringify(state.inboxShown || [])) {
        const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#inbox-rows tr");
        const focusedId = focused ? focused.dataset.conversation : null;
        rows.replaceChildren(...page.conversations.map(inboxRow));
        state.inboxShown = page.conversations;
        if (focusedId) {
          const again = rows.querySelector(`tr[data-conversation="${CSS.escape(focusedId)}"] a`);
          if (again) again.focus();
        }
      }
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
  loadInbox("first");
  // Live: an event of any of the tenant's conversations asks the inbox again, at once and a moment later (the
  // rows are a projection of the events, a little behind them); and every 15 s in any case.
  const stream = new EventSource("/v1/stream");
  state.stream = stream;
  let soon = null, later = null;
  const changed = () => {
    clearTimeout(soon);
    clearTimeout(later);
    const refresh = () => { if (state.stream === stream) loadInbox("refresh"); };
    soon = setTimeout(refresh, 250);
    later = setTimeout(refresh, 2000);
  };
  for (const type of EVENT_TYPES) stream.addEventListener(type, changed);
  stream.onmessage = changed;
  every(15000, () => loadInbox("refresh"));
}

// MARK: Conversation

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
  await showPosition(conversation, workflow);
}

// The conversation's workflow version, drawn with its current node marked (the drawing is redone when the
// node changes; the version's definition is asked once).
async function showPosition(conversation, workflow) {
  const container = $("conversation-graph");
  if (!workflow.workflowId) { container.replaceChildren(element("p", { class: "note" }, "No workflow has started yet.")); return; }
  const key = `${workflow.workflowId}@${workflow.workflowVersion}`;
  if (state.positionWorkflow !== key) {
    const stored = await api("GET", `/v1/workflows/${encodeURIComponent(workflow.workflowId)}?version=${workflow.workflowVersion}`);
    state.positionWorkflow = key;
    state.positionDocument = documentOf(stored);
  }
  if (state.conversation !== conversation) return;
  const classes = new Map(workflow.currentNodeId ? [[workflow.currentNodeId, "current"]] : []);
  drawWorkflow(container, state.positionDocument, { classes });
}

async function loadHistory(conversation) {
  const history = await api("GET", `/v1/conversations/${encodeURIComponent(conversation)}/workflow-state/history`);
  if (state.conversation !== conversation) return;
  $("history").replaceChildren(...history.changes.map((change) => {
    const move = change.fromNode || change.toNode ? `${change.fromNode || "—"} → ${change.toNode || "—"}` : change.type;
    const cause = change.cause ? ` · caused by "${change.cause.text}" (${change.cause.messageId})` : "";
    return element("li", { "data-position": String(change.globalPosition) },
      `v${change.streamVersion} ${move} (${change.statusBefore} → ${change.status})${cause} · ${when(change.recordedAt)}`);
  }));
}

async function loadConflicts(conversation) {
  try {
    const page = await api("GET", `/v1/audit/conflicts?conversation=${encodeURIComponent(conversation)}`);
    if (state.conversation !== conversation) return;
    $("conversation-conflicts").replaceChildren(...page.conflicts.map((conflict) => element("li", { "data-position": String(conflict.globalPosition) },
      `${when(conflict.recordedAt)}: expected v${conflict.expectedVersion}, found v${conflict.actualVersion}; lock token ${conflict.lockToken} of ${conflict.instance} fenced out`)));
    $("conversation-conflicts-note").textContent = page.conflicts.length ? "" : "None: no write of this conversation was fenced out.";
  } catch (error) {
    $("conversation-conflicts-note").textContent = error.status === 403 ? "Conflicts need a key with the read scope." : error.message;
  }
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

// Runs `work` every `milliseconds` while the page is visible, until the page changes.
function every(milliseconds, work) {
  state.timers.push(setInterval(() => { if (!document.hidden) work(); }, milliseconds));
}

function stopLive() {
  if (state.stream) { state.stream.close(); state.stream = null; }
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
}

async function openConversation(conversation) {
  state.conversation = conversation;
  show("conversation");
  $("conversation-title").textContent = "Conversation " + conversation;
  $("timeline").replaceChildren();
  $("transcript").replaceChildren();
  $("history").replaceChildren();
  $("conversation-conflicts").replaceChildren();
  $("conversation-graph").replaceChildren();
  $("explain").hidden = true;
  $("verify-result").textContent = "";
  $("action-result").textContent = "";
  $("agent-actions").hidden = !canAct();
  try {
    await Promise.all([loadFacts(conversation), loadTranscript(conversation), loadHistory(conversation)]);
    loadConflicts(conversation);
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
  let conflicted = false;
  const onEvent = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    if (document.querySelector(`#timeline li[data-position="${event.globalPosition}"]`)) return;
    const item = eventItem(event);
    // The chained hash is the audit trail's: asked for when the event is opened.
    item.querySelector("details").addEventListener("toggle", () => fillHash(item, conversation, event.globalPosition), { once: true });
    $("timeline").append(item);
    if (MESSAGE_TYPES.has(event.type)) messagesChanged = true;
    if (event.type === "ProcessingConflictDetected") conflicted = true;
    clearTimeout(refresh);
    refresh = setTimeout(() => {
      if (state.conversation !== conversation) return;
      loadFacts(conversation).catch(() => {});
      loadHistory(conversation).catch(() => {});
      if (conflicted) { conflicted = false; loadConflicts(conversation); }
      if (messagesChanged) {
        messagesChanged = false;
        loadTranscript(conversation).catch(() => {});
      }
    }, 150);
  };
  for (const type of EVENT_TYPES) stream.addEventListener(type, onEvent);
  stream.onmessage = onEvent;
}

async function fillHash(item, conversation, position) {
  const field = item.querySelector('[data-field="hash"]');
  try {
    const page = await api("GET", `/v1/audit/events?conversation=${encodeURIComponent(conversation)}&after=${position - 1}&limit=1`);
    const event = page.events.find((candidate) => candidate.globalPosition === position);
    field.textContent = event ? event.hash : "not in the audit trail";
  } catch (error) {
    field.textContent = error.message;
  }
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

// MARK: Workflows

async function loadWorkflows(append) {
  const params = new URLSearchParams({ limit: "100" });
  if (append && state.workflowsNext) params.set("after", state.workflowsNext);
  try {
    const page = await api("GET", "/v1/workflows?" + params);
    const rows = $("workflow-rows");
    if (!append) rows.replaceChildren();
    for (const entry of page.workflows) {
      rows.append(element("tr", { "data-workflow": entry.workflowId },
        element("td", {}, element("a", { href: "#/workflows/" + encodeURIComponent(entry.workflowId) }, entry.workflowId)),
        element("td", {}, entry.name || ""), element("td", {}, entry.latestVersion), element("td", {}, entry.versionCount),
        element("td", {}, when(entry.publishedAt)), element("td", {}, entry.publishedBy)));
    }
    state.workflowsNext = page.next || null;
    $("workflows-more").hidden = !state.workflowsNext;
    $("workflows-empty").hidden = rows.children.length > 0;
    $("workflows-error").textContent = "";
  } catch (error) {
    $("workflows-error").textContent = error.message;
  }
}

function openWorkflows() {
  show("workflows");
  $("workflow-new").hidden = !canAdminister();
  loadWorkflows(false);
}

function canAdminister() { return state.session && state.session.scopes.includes("admin"); }

const NEW_WORKFLOW = {
  id: "my-workflow", name: "A new workflow", start: "greet",
  nodes: [
    { id: "greet", type: "message", text: "Hello! How can I help?", next: "wait" },
    { id: "wait", type: "wait_for_input", next: "handoff" },
    { id: "handoff", type: "handoff", team: "support", message: "A person will reply shortly." },
  ],
};

function showNode(doc, id) {
  const node = workflowNodes(doc).find((candidate) => candidate.id === id);
  $("workflow-node").textContent = node ? JSON.stringify(node, null, 2) : `${id}: not a node of this workflow`;
  $("workflow-node").hidden = false;
}

function drawVersion(doc, marks) {
  drawWorkflow($("workflow-graph"), doc, marks, (id) => showNode(doc, id));
  $("workflow-node").hidden = true;
}

async function loadVersion(id, version) {
  const query = version ? `?version=${version}` : "";
  return api("GET", `/v1/workflows/${encodeURIComponent(id)}${query}`);
}

function documentOf(stored) { return Object.assign({ id: stored.workflowId }, stored.definition); }

async function showVersion(id, version) {
  const stored = await loadVersion(id, version);
  if (state.workflow !== id) return;
  state.workflowVersion = stored;
  const versions = $("workflow-version"), compare = $("workflow-compare");
  versions.replaceChildren(...stored.versions.slice().reverse().map((v) => element("option", { value: String(v), selected: v === stored.version }, `v${v}`)));
  const compared = compare.value;
  compare.replaceChildren(element("option", { value: "" }, "nothing"),
    ...stored.versions.filter((v) => v !== stored.version).reverse().map((v) => element("option", { value: String(v), selected: String(v) === compared }, `v${v}`)));
  $("workflow-meta").textContent = `v${stored.version} of ${stored.versions.length}, published ${when(stored.publishedAt)} by ${stored.publishedBy}`;
  $("workflow-json").value = JSON.stringify(documentOf(stored), null, 2);
  await showComparison();
}

// The shown version against the chosen one: nodes added or changed are marked on the graph, the rest listed.
async function showComparison() {
  const current = state.workflowVersion;
  const other = $("workflow-compare").value;
  if (!current) return;
  if (!other) {
    $("workflow-diff").hidden = true;
    drawVersion(documentOf(current));
    return;
  }
  const before = await loadVersion(current.workflowId, Number(other));
  const diff = diffWorkflows(documentOf(before), documentOf(current));
  const classes = new Map([...diff.added.map((id) => [id, "added"]), ...diff.changed.map((id) => [id, "changed"])]);
  drawVersion(documentOf(current), { classes });
  const lines = [
    ...diff.fields.map((text) => ["field", text]),
    ...diff.added.map((id) => ["added", `node ${id} added`]),
    ...diff.changed.map((id) => ["changed", `node ${id} changed`]),
    ...diff.removed.map((id) => ["removed", `node ${id} removed`]),
  ];
  $("workflow-diff-title").textContent = `Differences from v${other} to v${current.version}`;
  $("workflow-diff-list").replaceChildren(...(lines.length ? lines : [["same", "no difference"]]).map(([kind, text]) => element("li", { class: "diff-" + kind }, text)));
  $("workflow-diff").hidden = false;
}

async function openWorkflow(id) {
  state.workflow = id;
  state.workflowVersion = null;
  show("workflow");
  $("workflow-title").textContent = id === "new" ? "New workflow" : "Workflow " + id;
  $("workflow-result").textContent = "";
  $("workflow-issues").replaceChildren();
  $("workflow-diff").hidden = true;
  $("workflow-versions").hidden = id === "new";
  $("workflow-meta").textContent = "";
  $("workflow-editor").hidden = !canAdminister();
  $("editor-title").hidden = !canAdminister();
  if (id === "new") {
    $("workflow-json").value = JSON.stringify(NEW_WORKFLOW, null, 2);
    drawVersion(NEW_WORKFLOW);
    return;
  }
  try {
    await showVersion(id);
  } catch (error) {
    $("workflow-graph").replaceChildren(element("p", { class: "error", role: "alert" }, error.message));
  }
}

// The draft in the editor, or null (with the reason shown) when it is not JSON.
function draft() {
  try {
    return JSON.parse($("workflow-json").value);
  } catch (error) {
    $("workflow-result").textContent = "The draft is not valid JSON: " + error.message;
    $("workflow-result").className = "error";
    return null;
  }
}

async function publishDraft() {
  $("workflow-issues").replaceChildren();
  const doc = draft();
  if (!doc) return;
  if (typeof doc.id !== "string" || !doc.id) {
    $("workflow-result").textContent = "The draft needs an id.";
    $("workflow-result").className = "error";
    return;
  }
  try {
    const published = await api("PUT", `/v1/workflows/${encodeURIComponent(doc.id)}`, doc);
    $("workflow-result").textContent = published.created
      ? `Published ${published.workflowId} v${published.version}.`
      : `Nothing new: v${published.version} of ${published.workflowId} has this content.`;
    $("workflow-result").className = "ok";
    if (state.workflow === published.workflowId) await showVersion(published.workflowId);
    else location.hash = "#/workflows/" + encodeURIComponent(published.workflowId);
  } catch (error) {
    $("workflow-result").textContent = `${error.code}: ${error.message}`;
    $("workflow-result").className = "error";
    const issues = new Map();
    for (const detail of error.details) {
      const key = detail.nodeId || "";
      if (!issues.has(key)) issues.set(key, []);
      issues.get(key).push(detail.message);
      const item = element("li", { "data-node": detail.nodeId || "" }, detail.nodeId ? `node ${detail.nodeId}: ${detail.message}` : detail.message);
      $("workflow-issues").append(item);
    }
    // The draft is drawn with its problems on their nodes.
    $("workflow-diff").hidden = true;
    drawVersion(doc, { issues });
  }
}

// MARK: Operations

function cell(value) { return element("td", {}, value === undefined || value === null ? "" : value); }

async function loadProjections() {
  try {
    const { projections } = await api("GET", "/v1/projections");
    $("projection-rows").replaceChildren(...projections.map((p) => {
      const rebuild = p.lastRebuild ? `${p.lastRebuild.outcome} ${when(p.lastRebuild.finishedAt || p.lastRebuild.startedAt)} (${p.lastRebuild.events} events)` : "never";
      return element("tr", { "data-projection": p.name, class: p.problem ? "problem" : "" },
        cell(p.name), element("td", { "data-state": p.state }, p.problem ? `${p.state}: ${p.problem}` : p.state),
        cell(p.storedVersion === undefined || p.storedVersion === p.version ? `v${p.version}` : `v${p.storedVersion} (binary v${p.version})`),
        cell(p.checkpoint), cell(p.head), cell(p.lag), cell(`${p.waitingSeconds.toFixed(1)} s`),
        cell(`${p.activeRunners} active, ${p.standby} standing by`), cell(rebuild));
    }));
    $("projections-error").textContent = "";
  } catch (error) {
    $("projections-error").textContent = error.message;
  }
}

async function loadParked() {
  try {
    const { conversations } = await api("GET", "/v1/parked-conversations");
    $("parked-rows").replaceChildren(...conversations.map((entry) => {
      const retry = element("button", { type: "button", disabled: !canAdminister() }, "Retry");
      retry.setAttribute("aria-label", "Retry " + entry.conversationId);
      retry.addEventListener("click", async () => {
        try {
          await api("POST", `/v1/conversations/${encodeURIComponent(entry.conversationId)}/retry`, { requestId: requestId() });
          $("parked-result").textContent = `${entry.conversationId} handed back to the responder`;
          loadParked();
        } catch (error) {
          $("parked-result").textContent = `${error.code}: ${error.message}`;
        }
      });
      return element("tr", { "data-conversation": entry.conversationId },
        element("td", {}, element("a", { href: "#/conversations/" + encodeURIComponent(entry.conversationId) }, entry.conversationId)),
        cell(when(entry.parkedAt)), cell(entry.attempts), cell(entry.error), element("td", {}, retry));
    }));
    $("parked-empty").hidden = conversations.length > 0;
  } catch (error) {
    $("parked-result").textContent = error.message;
  }
}

async function loadWebhooks() {
  if (!canAdminister()) {
    $("webhooks-error").textContent = "Webhooks need a key with the admin scope.";
    return;
  }
  try {
    const { webhooks } = await api("GET", "/v1/webhooks");
    const items = await Promise.all(webhooks.map(async (hook) => {
      const { deliveries } = await api("GET", `/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries?status=pending&limit=10`);
      const failing = deliveries.filter((delivery) => delivery.attempts.length > 0);
      const state = hook.enabled ? "enabled" : `DISABLED ${when(hook.disabledAt)}: ${hook.disabledReason || ""}`;
      return element("li", { "data-webhook": hook.id },
        element("strong", {}, hook.id), ` ${hook.url} · ${state} · ${failing.length} failing deliver${failing.length === 1 ? "y" : "ies"}`,
        failing.length ? element("ul", {}, ...failing.map((delivery) => {
          const last = delivery.attempts[delivery.attempts.length - 1];
          return element("li", { class: "error" }, `${delivery.eventType} of ${delivery.conversationId}: ${delivery.attempts.length} attempts, last ${when(last.at)}: ${last.statusCode ? "HTTP " + last.statusCode : last.error || "failed"}`);
        })) : null);
    }));
    $("webhook-list").replaceChildren(...(items.length ? items : [element("li", {}, "No endpoint.")]));
    $("webhooks-error").textContent = "";
  } catch (error) {
    $("webhooks-error").textContent = error.message;
  }
}

async function loadAuditList(type, listId, emptyId, describe) {
  const page = await api("GET", `/v1/audit/events?type=${type}&order=desc&limit=20`);
  $(listId).replaceChildren(...page.events.map((event) => element("li", { "data-position": String(event.globalPosition) }, describe(event))));
  $(emptyId).hidden = page.events.length > 0;
}

async function loadOperations() {
  loadParked();
  loadWebhooks();
  try {
    await Promise.all([
      loadAuditList("ProcessingConflictDetected", "conflict-list", "conflicts-empty", (event) =>
        `${when(event.recordedAt)} · ${event.conversationId || ""}: expected v${event.data.expectedVersion}, found v${event.data.actualVersion}; lock token ${event.data.lockToken || ""} of ${event.data.instance || ""} fenced out`),
      loadAuditList("VisitorForgotten", "forgotten-list", "forgotten-empty", (event) =>
        `${when(event.recordedAt)} · visitor ${event.data.visitorUid} forgotten by ${event.data.requestedBy}: ${event.data.reason} (${(event.data.conversations || []).length} conversations)`),
    ]);
    $("operations-error").textContent = "";
  } catch (error) {
    $("operations-error").textContent = error.message;
  }
}

function openOperations() {
  show("operations");
  loadProjections();
  loadOperations();
  every(2000, loadProjections);
  every(5000, loadOperations);
}

// MARK: Routing

function route() {
  if (!state.session) return;
  stopLive();
  const hash = location.hash || "#/inbox";
  let match;
  if ((match = hash.match(/^#\/conversations\/(.+)$/))) openConversation(decodeURIComponent(match[1]));
  else if ((match = hash.match(/^#\/workflows\/(.+)$/))) openWorkflow(decodeURIComponent(match[1]));
  else if (hash === "#/workflows") openWorkflows();
  else if (hash === "#/operations") openOperations();
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
  $("inbox-filter").addEventListener("submit", (event) => { event.preventDefault(); loadInbox("first"); });
  $("inbox-more").addEventListener("click", () => loadInbox("more"));
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
  $("workflows-more").addEventListener("click", () => loadWorkflows(true));
  $("workflow-new").addEventListener("click", () => { location.hash = "#/workflows/new"; });
  $("workflow-version").addEventListener("change", () => showVersion(state.workflow, Number($("workflow-version").value)).catch((error) => {
    $("workflow-result").textContent = error.message;
  }));
  $("workflow-compare").addEventListener("change", () => showComparison().catch((error) => { $("workflow-result").textContent = error.message; }));
  $("workflow-preview").addEventListener("click", () => {
    const doc = draft();
    if (doc) { $("workflow-result").textContent = ""; $("workflow-issues").replaceChildren(); drawVersion(doc); }
  });
  $("workflow-editor").addEventListener("submit", (event) => { event.preventDefault(); publishDraft(); });
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
