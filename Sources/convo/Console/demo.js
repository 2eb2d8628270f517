// The demo: a visitor's chat widget over /demo (no key: the server made this browser a visitor of its demo
// tenant by a cookie), beside the live event log of the visitor's conversation. Messages are read from the
// events, so the chat shows exactly what was stored.
"use strict";

const CHAT_TYPES = { VisitorMessageReceived: "visitor", AssistantMessageSent: "assistant", AgentMessageSent: "agent" };
const seen = new Set();

function chatItem(event) {
  const role = CHAT_TYPES[event.type];
  const data = event.data || {};
  const who = role === "visitor" ? "you" : role === "agent" ? (data.agentName || "agent") : "assistant";
  return element("li", { class: "message " + role, "data-role": role, "data-event": event.eventId },
    element("span", { class: "role" }, who), " ", element("span", { class: "text" }, event.erased ? "[erased]" : data.text),
    " ", element("time", {}, when(event.recordedAt)));
}

function onEvent(message) {
  let event;
  try { event = JSON.parse(message.data); } catch (_) { return; }
  if (seen.has(event.globalPosition)) return;
  seen.add(event.globalPosition);
  $("log").append(eventItem(event));
  if (CHAT_TYPES[event.type]) {
    const chat = $("chat");
    chat.append(chatItem(event));
    chat.lastElementChild.scrollIntoView({ block: "nearest" });
  }
}

async function send(text) {
  const response = await fetch("/demo/messages", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "Accept": "application/json" },
    body: JSON.stringify({ messageId: requestId(), text }),
  });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* keep the status text */ }
    throw new Error(message);
  }
}

async function start() {
  let visitor;
  try {
    const response = await fetch("/demo/visitor", { method: "POST", credentials: "same-origin", headers: { "Accept": "application/json" } });
    if (!response.ok) throw new Error(response.statusText);
    visitor = await response.json();
  } catch (error) {
    $("chat-error").textContent = "The demo could not start: " + error.message;
    return;
  }
  $("who").textContent = `tenant ${visitor.tenant} · visitor ${visitor.visitorUid}`;
  $("console-link").href = "/console#/conversations/" + encodeURIComponent(visitor.conversationId);
  // EventSource reconnects by itself, with Last-Event-ID: nothing is missed or shown twice.
  const stream = new EventSource("/demo/stream");
  stream.onopen = () => { $("stream-state").textContent = "live"; };
  stream.onerror = () => { $("stream-state").textContent = "reconnecting…"; };
  for (const type of EVENT_TYPES) stream.addEventListener(type, onEvent);
  stream.onmessage = onEvent;
  $("chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("chat-text").value.trim();
    if (!text) return;
    try {
      await send(text);
      $("chat-text").value = "";
      $("chat-error").textContent = "";
    } catch (error) {
      $("chat-error").textContent = error.message;
    }
  });
  $("chat-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("chat-form").requestSubmit(); }
  });
}

document.addEventListener("DOMContentLoaded", start);
