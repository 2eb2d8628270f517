"""The console in a real browser: headless Chromium driven by Selenium against a running `convo serve`.

Run by ConsoleBrowserTests (Swift), which starts the server, makes the keys and passes them in the
environment. Every wait is for something on the page, bounded; on a failure the page's screenshot and
HTML are kept in CONVO_CONSOLE_ARTIFACTS and the step that failed is printed.
"""

import json
import os
import re
import subprocess
import sys
import time
import traceback
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ["CONVO_CONSOLE_URL"]
AGENT_KEY = os.environ["CONVO_CONSOLE_AGENT_KEY"]
READ_KEY = os.environ["CONVO_CONSOLE_READ_KEY"]
INGEST_KEY = os.environ["CONVO_CONSOLE_INGEST_KEY"]
ADMIN_KEY = os.environ["CONVO_CONSOLE_ADMIN_KEY"]
CONVERSATION = os.environ["CONVO_CONSOLE_CONVERSATION"]
DATABASE_URL = os.environ["CONVO_CONSOLE_DATABASE_URL"]
ARTIFACTS = os.environ.get("CONVO_CONSOLE_ARTIFACTS", ".")
WAIT = float(os.environ.get("CONVO_CONSOLE_WAIT", "30"))

step = "starting the browser"
SCREENSHOTS = os.environ.get("CONVO_CONSOLE_SCREENSHOTS")


def snap(driver, name):
    """Keeps a screenshot of the page when CONVO_CONSOLE_SCREENSHOTS names a directory (to look at the pages)."""
    if SCREENSHOTS:
        driver.save_screenshot(os.path.join(SCREENSHOTS, name + ".png"))


def api(method, path, key, body=None):
    request = urllib.request.Request(BASE + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Authorization", "Bearer " + key)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def ingest(message_id, text):
    api("POST", f"/v1/conversations/{CONVERSATION}/messages", INGEST_KEY, {"visitorUid": "v-console", "messageId": message_id, "text": text})


def browser():
    options = webdriver.ChromeOptions()
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"]:
        options.add_argument(argument)
    binary = os.environ.get("CONVO_CHROMIUM", "/usr/bin/chromium")
    options.binary_location = binary
    service = Service(executable_path=os.environ.get("CONVO_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def until(driver, condition, what):
    try:
        # (An element the page redraws while a condition looks at it is looked for again at the next poll.)
        return WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what}: not within {WAIT} s")


def text_in(locator, text):
    def check(driver):
        for found in driver.find_elements(*locator):
            if text in found.text:
                return found
        return False
    return check


def click(driver, locator, what):
    """Clicks what `locator` finds when it is there, found afresh on each try (a list the page redraws while
    the test looks replaces its elements)."""
    def attempt(d):
        try:
            d.find_element(*locator).click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False
    until(driver, attempt, what)


LABELLED = """
return Array.from(document.querySelectorAll('input, select, textarea, button')).filter((control) => {
  if (control.closest('[hidden]') || control.type === 'hidden') return false;
  const named = (control.labels && control.labels.length > 0) || control.getAttribute('aria-label') || (control.tagName === 'BUTTON' && control.textContent.trim());
  return !named;
}).map((control) => control.outerHTML.slice(0, 120));
"""


def assert_labelled(driver, page):
    """Every control shown on the page has a name a screen reader can say: a label, an aria-label or its text."""
    unnamed = driver.execute_script(LABELLED)
    assert not unnamed, f"{page}: controls without a label: {unnamed}"


def sign_in(driver, key):
    driver.get(BASE + "/console")
    field = until(driver, EC.visibility_of_element_located((By.ID, "key")), "the sign-in form")
    # Labelled: the field is found by its label's text too.
    label = driver.find_element(By.CSS_SELECTOR, "label[for=key]")
    assert label.text == "Key", label.text
    field.send_keys(key, Keys.ENTER)
    until(driver, EC.visibility_of_element_located((By.ID, "inbox")), "the inbox after signing in")


def main():
    global step
    driver = browser()
    try:
        step = "an admin adds a webhook endpoint that refuses every connection"
        api("PUT", "/v1/webhooks/failing-desk", ADMIN_KEY, {"url": "http://127.0.0.1:9/hook", "eventTypes": ["message.created"]})

        step = "the visitor writes"
        ingest("m-1", "where is my order?")

        step = "a wrong key is refused with a message"
        driver.get(BASE + "/console")
        until(driver, EC.visibility_of_element_located((By.ID, "key")), "the sign-in form").send_keys("cvk_0000000000000000_" + "A" * 43, Keys.ENTER)
        until(driver, text_in((By.ID, "sign-in-error"), "unknown or revoked"), "the refusal")

        step = "sign in with an agent key; the key is not kept by the page"
        sign_in(driver, AGENT_KEY)
        assert AGENT_KEY not in driver.execute_script("return document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
        assert "agent" in driver.find_element(By.ID, "who").text

        step = "the inbox lists the conversation"
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-conversation="{CONVERSATION}"]')), "the conversation's row")

        step = "the conversation page shows the transcript and the answer"
        click(driver, (By.CSS_SELECTOR, f'tr[data-conversation="{CONVERSATION}"] a'), "the conversation's link")
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.visitor"), "where is my order"), "the visitor's message")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "#transcript li.assistant")), "the assistant's reply")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#timeline li[data-type="VisitorMessageReceived"]')), "the event timeline")

        step = "the conversation's place in its workflow, its history and its conflicts"
        at_node = (By.CSS_SELECTOR, '#conversation-facts dd[data-fact="at node"]')
        def current_matches(d):
            marked = d.find_elements(By.CSS_SELECTOR, "#conversation-graph g.node.current")
            return len(marked) == 1 and marked[0].get_attribute("data-node") == d.find_element(*at_node).text != ""
        until(driver, current_matches, "the current node marked on the workflow's graph")
        until(driver, text_in((By.CSS_SELECTOR, "#history li"), 'caused by "where is my order?"'), "the workflow history with its cause")
        until(driver, text_in((By.ID, "conversation-conflicts-note"), "None"), "the conversation's conflicts (none)")
        assert_labelled(driver, "the conversation page")
        snap(driver, "conversation")

        step = "a message sent meanwhile appears without a reload"
        marker = driver.execute_script("window.__noReload = 'still here'; return window.__noReload")
        ingest("m-live", "a live message from the visitor")
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.visitor"), "a live message from the visitor"), "the live message in the transcript")
        assert driver.execute_script("return window.__noReload") == marker, "the page reloaded"

        step = "why this reply? opens the explanation"
        driver.find_element(By.CSS_SELECTOR, "#transcript li.assistant button.why").click()
        until(driver, EC.visibility_of_element_located((By.ID, "explain")), "the explanation")
        until(driver, text_in((By.ID, "explain-body"), '"answered"'), "the messages the reply answered")

        step = "the chain verifies"
        driver.find_element(By.ID, "verify").click()
        until(driver, text_in((By.ID, "verify-result"), "chain verified"), "the verification's result")

        step = "take over and reply as the agent; the visitor's transcript (the API) has it"
        driver.find_element(By.ID, "take-over").click()
        until(driver, text_in((By.ID, "action-result"), "ConversationAssigned"), "the take-over")
        reply = driver.find_element(By.ID, "reply-text")
        reply.send_keys("An agent here: it ships today.")
        driver.find_element(By.CSS_SELECTOR, "#reply-form button[type=submit]").click()
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.agent"), "An agent here: it ships today."), "the agent's reply in the transcript")
        transcript = api("GET", f"/v1/conversations/{CONVERSATION}/messages", READ_KEY)
        assert any(m["role"] == "agent" and m["text"] == "An agent here: it ships today." for m in transcript["messages"]), transcript
        assigned = (By.CSS_SELECTOR, '#conversation-facts dd[data-fact="assigned to"]')
        until(driver, lambda d: d.find_element(*assigned).text not in ("", "the AI"), "the assignment in the facts")

        step = "an event's chained hash is shown when it is opened"
        driver.find_element(By.CSS_SELECTOR, '#timeline li[data-type="VisitorMessageReceived"] summary').click()
        hash_field = (By.CSS_SELECTOR, '#timeline li[data-type="VisitorMessageReceived"] [data-field="hash"]')
        until(driver, lambda d: len(d.find_element(*hash_field).text) == 64, "the event's hash")

        step = "the demo: a visitor chats, sees the assistant's reply and the events as they are stored"
        driver.execute_script("location.hash = '#/inbox'")
        until(driver, EC.visibility_of_element_located((By.ID, "inbox")), "the inbox")
        until(driver, lambda d: d.execute_script("return state.stream && state.stream.url.endsWith('/v1/stream') && state.stream.readyState") == 1, "the inbox's event stream open")
        driver.execute_script("window.__noReload = 'inbox'")
        console_tab = driver.current_window_handle
        driver.switch_to.new_window("tab")
        demo_tab = driver.current_window_handle
        driver.get(BASE + "/demo")
        chat = until(driver, EC.visibility_of_element_located((By.ID, "chat-text")), "the demo's chat")
        assert driver.find_element(By.CSS_SELECTOR, "label[for=chat-text]").text == "Your message"
        link = (By.ID, "console-link")
        until(driver, lambda d: "#/conversations/demo-" in (d.find_element(*link).get_attribute("href") or ""), "the demo's visitor")
        demo_conversation = driver.find_element(*link).get_attribute("href").split("#/conversations/")[1]
        chat.send_keys("where is my order?", Keys.ENTER)
        until(driver, text_in((By.CSS_SELECTOR, "#chat li.visitor"), "where is my order?"), "the visitor's message in the widget")
        until(driver, text_in((By.CSS_SELECTOR, "#chat li.assistant"), "working days"), "the assistant's reply in the widget")
        assert_labelled(driver, "the demo")
        for event_type in ["ConversationStarted", "VisitorMessageReceived", "WorkflowStarted", "AssistantMessageSent"]:
            until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, f'#log li[data-type="{event_type}"]')), f"{event_type} in the event log")
        chat.send_keys("I want to talk to a human", Keys.ENTER)
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#log li[data-type="ConversationHandedOff"]')), "the hand-off in the event log")
        snap(driver, "demo")

        step = "the demo's conversation appears in the console's inbox without a reload"
        driver.switch_to.window(console_tab)
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-conversation="{demo_conversation}"]')), "the demo conversation in the inbox")
        assert driver.execute_script("return window.__noReload") == "inbox", "the console reloaded"
        assert_labelled(driver, "the inbox")

        step = "the inbox filters by status: the handed-off demo conversation is pending, not open"
        demo_row = (By.CSS_SELECTOR, f'tr[data-conversation="{demo_conversation}"]')
        for status, listed in [("open", False), ("pending", True), ("", True)]:
            Select(driver.find_element(By.ID, "filter-status")).select_by_value(status)
            driver.find_element(By.CSS_SELECTOR, "#inbox-filter button[type=submit]").click()
            until(driver, lambda d: bool(d.find_elements(*demo_row)) == listed, f"the demo conversation {'listed' if listed else 'left out'} with status '{status}'")

        step = "the agent takes the demo conversation over and replies; the visitor's widget shows it"
        click(driver, (By.CSS_SELECTOR, f'tr[data-conversation="{demo_conversation}"] a'), "the demo conversation's link")
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.visitor"), "talk to a human"), "the demo visitor's messages")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#timeline li[data-type="ConversationHandedOff"]')), "the hand-off in the timeline")
        driver.find_element(By.ID, "take-over").click()
        until(driver, text_in((By.ID, "action-result"), "ConversationAssigned"), "the take-over")
        driver.find_element(By.ID, "reply-text").send_keys("Ada here, I'm looking at your order.")
        driver.find_element(By.CSS_SELECTOR, "#reply-form button[type=submit]").click()
        until(driver, text_in((By.ID, "action-result"), "AgentMessageSent"), "the agent's reply stored")
        driver.switch_to.window(demo_tab)
        until(driver, text_in((By.CSS_SELECTOR, "#chat li.agent"), "Ada here, I'm looking at your order."), "the agent's reply in the visitor's widget")
        driver.close()
        driver.switch_to.window(console_tab)
        driver.execute_script(f"location.hash = '#/conversations/{CONVERSATION}'")
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.agent"), "An agent here"), "the first conversation again")

        step = "keyboard: the controls are reached with Tab"
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        reached = set()
        for _ in range(60):
            active = driver.switch_to.active_element
            reached.add(active.get_attribute("id") or active.text)
            active.send_keys(Keys.TAB)
        for control in ["take-over", "reply-text", "verify", "sign-out"]:
            assert control in reached, f"{control} not reached by Tab: {sorted(reached)}"

        step = "sign out; the session no longer works, even with the old cookie"
        driver.find_element(By.ID, "sign-out").click()
        until(driver, EC.visibility_of_element_located((By.ID, "key")), "the sign-in form after signing out")
        driver.get(BASE + "/console")
        until(driver, EC.visibility_of_element_located((By.ID, "key")), "the sign-in form after a reload")

        step = "a read-only key sees the conversation and no agent action"
        sign_in(driver, READ_KEY)
        driver.get(BASE + f"/console#/conversations/{CONVERSATION}")
        driver.refresh()
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.agent"), "An agent here"), "the transcript for the read-only key")
        assert not driver.find_element(By.ID, "agent-actions").is_displayed(), "agent actions shown to a read-only key"
        driver.execute_script("location.hash = '#/workflows/support'")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#workflow-graph g.node[data-node="greet"]')), "the workflow for the read-only key")
        assert not driver.find_element(By.ID, "workflow-editor").is_displayed(), "the workflow editor shown to a read-only key"
        driver.execute_script(f"location.hash = '#/conversations/{CONVERSATION}'")
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.agent"), "An agent here"), "the conversation again")

        step = "a tampered event is flagged by verification"
        # The conversation's first workflow event is changed behind the store's back (the trigger that refuses
        # updates is switched off for it, as only the database's owner can).
        tamper = [
            "ALTER TABLE events DISABLE TRIGGER events_refuse_update_delete",
            f"UPDATE events SET data = data || '{{\"tampered\": true}}' WHERE stream_name = 'workflow-{CONVERSATION}' AND stream_version = 1",
            "ALTER TABLE events ENABLE TRIGGER events_refuse_update_delete",
        ]
        subprocess.run(["psql", DATABASE_URL, "-q", "-v", "ON_ERROR_STOP=1"] + [arg for sql in tamper for arg in ("-c", sql)], check=True, timeout=60)
        driver.find_element(By.ID, "verify").click()
        result = until(driver, text_in((By.ID, "verify-result"), "verification FAILED"), "the tampered event's finding")
        assert "hash_mismatch" in result.text and f"workflow-{CONVERSATION} v1" in result.text, result.text

        step = "an admin publishes a workflow with an error and sees it marked on its node"
        driver.find_element(By.ID, "sign-out").click()
        until(driver, EC.visibility_of_element_located((By.ID, "key")), "the sign-in form")
        sign_in(driver, ADMIN_KEY)
        driver.execute_script("location.hash = '#/workflows'")
        click(driver, (By.CSS_SELECTOR, 'tr[data-workflow="support"] a'), "the support workflow in the list")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#workflow-graph g.node[data-node="greet"]')), "the graph")
        edges = driver.find_elements(By.CSS_SELECTOR, "#workflow-graph g.edge")
        assert len(edges) == 10, f"{len(edges)} edges drawn"
        assert driver.find_elements(By.CSS_SELECTOR, '#workflow-graph g.node-condition[data-node="route"]'), "the condition node"
        editor = driver.find_element(By.ID, "workflow-json")
        published = json.loads(editor.get_attribute("value"))
        broken = json.loads(json.dumps(published))
        next(node for node in broken["nodes"] if node["id"] == "greet")["next"] = "nowhere"
        driver.execute_script("arguments[0].value = arguments[1]", editor, json.dumps(broken, indent=2))
        driver.find_element(By.CSS_SELECTOR, "#workflow-editor button[type=submit]").click()
        until(driver, text_in((By.CSS_SELECTOR, "#workflow-issues li"), "node greet"), "the problem listed")
        marked = until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#workflow-graph g.node.invalid[data-node="greet"]')), "the problem marked on its node")
        snap(driver, "workflow-invalid")
        assert "nowhere" in marked.get_attribute("aria-label"), marked.get_attribute("aria-label")
        assert driver.find_elements(By.CSS_SELECTOR, '#workflow-graph g.node-missing[data-node="nowhere"]'), "the missing target drawn"
        assert api("GET", "/v1/workflows/support", ADMIN_KEY)["versions"] == [1], "a workflow with an error was published"

        step = "a fixed version is published and compared with the first"
        fixed = json.loads(json.dumps(published))
        next(node for node in fixed["nodes"] if node["id"] == "greet")["text"] = "Hello from version 2!"
        driver.execute_script("arguments[0].value = arguments[1]", editor, json.dumps(fixed, indent=2))
        driver.find_element(By.CSS_SELECTOR, "#workflow-editor button[type=submit]").click()
        until(driver, text_in((By.ID, "workflow-result"), "Published support v2"), "the new version")
        until(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "#workflow-graph g.node.invalid"), "the draft's marks gone")
        Select(driver.find_element(By.ID, "workflow-compare")).select_by_value("1")
        until(driver, text_in((By.CSS_SELECTOR, "#workflow-diff-list li"), "node greet changed"), "the difference listed")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#workflow-graph g.node.changed[data-node="greet"]')), "the changed node marked")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#workflow-graph g.node.changed")) == 1
        assert_labelled(driver, "the workflow page")
        snap(driver, "workflow")

        step = "keyboard: a graph node is reached with Tab and opened with Enter"
        driver.find_element(By.ID, "workflow-version").send_keys(Keys.TAB)
        for _ in range(20):
            active = driver.switch_to.active_element
            if active.get_attribute("data-node"):
                break
            active.send_keys(Keys.TAB)
        node = driver.switch_to.active_element.get_attribute("data-node")
        assert node, "no graph node reached by Tab"
        driver.switch_to.active_element.send_keys(Keys.ENTER)
        until(driver, text_in((By.ID, "workflow-node"), f'"id": "{node}"'), "the node's definition")

        step = "the operations page: projections measured, a forgotten visitor listed"
        api("DELETE", "/v1/visitors/v-console?reason=asked%20by%20email", ADMIN_KEY)
        driver.execute_script("location.hash = '#/operations'")
        until(driver, text_in((By.CSS_SELECTOR, 'tr[data-projection="conversations"] td[data-state]'), "running"), "the conversations projection running")
        until(driver, text_in((By.CSS_SELECTOR, 'tr[data-projection="workflow_state"] td[data-state]'), "running"), "the workflow_state projection running")
        until(driver, text_in((By.CSS_SELECTOR, "#forgotten-list li"), "v-console"), "the forgotten visitor")
        assert_labelled(driver, "the operations page")
        assert "asked by email" in driver.find_element(By.CSS_SELECTOR, "#forgotten-list li").text
        snap(driver, "operations")
        until(driver, EC.visibility_of_element_located((By.ID, "parked-empty")), "no parked conversation in a healthy run")
        failing = (By.CSS_SELECTOR, 'li[data-webhook="failing-desk"]')
        until(driver, lambda d: re.search(r"· [1-9][0-9]* failing deliver", d.find_element(*failing).text), "the failing webhook deliveries")
        assert "HTTP" not in driver.find_element(*failing).text, "a refused connection shown as an HTTP answer"

        step = "done"
        print("console: every step passed")
        return 0
    except Exception:
        name = os.path.join(ARTIFACTS, "console-failure")
        try:
            driver.save_screenshot(name + ".png")
            with open(name + ".html", "w") as page:
                page.write(driver.page_source)
        except Exception:
            pass
        print(f"console: FAILED at step: {step}\n{traceback.format_exc()}\n(screenshot and page in {name}.png/.html)")
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
