"""Opens one conversation in the console in headless Chromium, several times, and prints how long each took
from the navigation until every event is in the timeline and every message in the transcript
("render ms N" per run). Run by `convo-bench console`, which passes the server, key and counts."""

import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["CONVO_RENDER_URL"]
KEY = os.environ["CONVO_RENDER_KEY"]
CONVERSATION = os.environ["CONVO_RENDER_CONVERSATION"]
EVENTS = int(os.environ["CONVO_RENDER_EVENTS"])
MESSAGES = int(os.environ["CONVO_RENDER_MESSAGES"])
RUNS = int(os.environ.get("CONVO_RENDER_RUNS", "5"))

# Resolves with performance.now() (milliseconds since the navigation began) in the first animation frame
# where the page shows every event and message.
WAIT_FOR_PAGE = """
const [events, messages, done] = arguments;
function check() {
  const shown = document.querySelectorAll('#timeline li').length;
  const said = document.querySelectorAll('#transcript li').length;
  if (shown >= events && said >= messages) done(performance.now());
  else requestAnimationFrame(check);
}
check();
"""


def main():
    options = webdriver.ChromeOptions()
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"]:
        options.add_argument(argument)
    options.binary_location = os.environ.get("CONVO_CHROMIUM", "/usr/bin/chromium")
    driver = webdriver.Chrome(service=Service(executable_path=os.environ.get("CONVO_CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
    try:
        driver.set_script_timeout(60)
        driver.get(BASE + "/console")
        WebDriverWait(driver, 30).until(EC.visibility_of_element_located((By.ID, "key"))).send_keys(KEY, Keys.ENTER)
        WebDriverWait(driver, 30).until(EC.visibility_of_element_located((By.ID, "inbox")))
        for run in range(RUNS + 1):
            driver.get("about:blank")
            driver.get(f"{BASE}/console#/conversations/{CONVERSATION}")
            milliseconds = driver.execute_async_script(WAIT_FOR_PAGE, EVENTS, MESSAGES)
            if run > 0:  # the first warms the browser's cache
                print(f"render ms {milliseconds:.0f}", flush=True)
        return 0
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
