"""The console in a real browser: headless Chromium driven by Selenium against a running `convo serve`.

Run by ConsoleBrowserTests (Swift), which starts the server, makes the keys and passes them in the
environment. Every wait is for something on the page, bounded; on a failure the page's screenshot and
HTML are kept in CONVO_CONSOLE_ARTIFACTS and the step that failed is printed.
"""

import json
import os
import subprocess
import sys
import time
import traceback
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["CONVO_CONSOLE_URL"]
AGENT_KEY = os.environ["CONVO_CONSOLE_AGENT_KEY"]
READ_KEY = os.environ["CONVO_CONSOLE_READ_KEY"]
INGEST_KEY = os.environ["CONVO_CONSOLE_INGEST_KEY"]
CONVERSATION = os.environ["CONVO_CONSOLE_CONVERSATION"]
DATABASE_URL = os.environ["CONVO_CONSOLE_DATABASE_URL"]
ARTIFACTS = os.environ.get("CONVO_CONSOLE_ARTIFACTS", ".")
WAIT = float(os.environ.get("CONVO_CONSOLE_WAIT", "30"))

step = "starting the browser"


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
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what}: not within {WAIT} s")


def text_in(locator, text):
    def check(driver):
        for found in driver.find_elements(*locator):
            if text in found.text:
                return found
        return False
    return check


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
        row = until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-conversation="{CONVERSATION}"]')), "the conversation's row")

        step = "the conversation page shows the transcript and the answer"
        row.find_element(By.TAG_NAME, "a").click()
        until(driver, text_in((By.CSS_SELECTOR, "#transcript li.visitor"), "where is my order"), "the visitor's message")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "#transcript li.assistant")), "the assistant's reply")
        until(driver, EC.presence_of_element_located((By.CSS_SELECTOR, '#timeline li[data-type="VisitorMessageReceived"]')), "the event timeline")

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
