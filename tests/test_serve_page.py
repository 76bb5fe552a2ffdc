"""The page at GET / in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium with the driver given explicitly: nothing is downloaded at run time).

A cond-dcgan version is registered straight into the session stack's MLflow (no training: the page
only needs images) and served with `ganray serve NAME@champion`, then, as a second application, with
`--private`: the page asks for the token once and keeps it for the session. The screenshots are kept
under test-artifacts/ at the repository root.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from conftest import ROOT, ganray
from orchestrator.stack.processes import free_port
from stack_mlflow import mlflow_client, register_untrained, serve_token

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"
VOCABULARY = ["blonde hair", "blue eyes", "hat", "glasses"]


@pytest.fixture(scope="module")
def page_url(stack, ganray_home):
    c = mlflow_client(ganray_home)
    version = register_untrained(c, "page", "cond-dcgan", VOCABULARY, seed=5)
    c.set_registered_model_alias("page", "champion", str(version))
    proc = ganray(ganray_home, "serve", "page@champion", "--port", str(free_port()), timeout=400)
    try:
        yield proc.stdout.strip().splitlines()[-1], version
    finally:
        ganray(ganray_home, "serve", "--stop", "page", check=False, timeout=180)


@pytest.fixture
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gpage-", dir="/tmp")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1100,800"):
        options.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_picks_tags_generates_and_shows_the_version(page_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, version = page_url
    page = requests.get(url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script src" not in page.text and "<link" not in page.text  # no external assets
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(ec.element_to_be_clickable((By.ID, "generate")))
    boxes = browser.find_elements(By.CSS_SELECTOR, "#tags input[type=checkbox]")
    assert [b.get_attribute("value") for b in boxes] == VOCABULARY
    assert f"page version {version}" in browser.find_element(By.ID, "model-info").text
    assert not browser.find_element(By.ID, "prompt-box").is_displayed()  # a tag model takes no prompt
    assert not browser.find_element(By.ID, "truncation-box").is_displayed()  # nor a truncation
    boxes[VOCABULARY.index("hat")].click()
    seed, count = browser.find_element(By.ID, "seed"), browser.find_element(By.ID, "count")
    seed.clear()
    seed.send_keys("42")
    count.clear()
    count.send_keys("9")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.execute_script("const i = document.getElementById('grid');"
                                          "return i.complete && i.naturalWidth > 0;"))
    width = browser.execute_script("return document.getElementById('grid').naturalWidth")
    assert width == 3 * (16 + 2) + 2  # 3 columns of 16 px cells
    answered = browser.find_element(By.ID, "answered")
    assert answered.get_attribute("data-version") == str(version)
    assert f"answered by page version {version}" in answered.text and "hat" in answered.text
    assert browser.find_element(By.ID, "error").text == ""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    # A refused request shows the server's reason on the page.
    count.clear()
    count.send_keys("65")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert "n must be between 1 and 64" in browser.find_element(By.ID, "error").text


@pytest.fixture(scope="module")
def private_url(page_url, ganray_home):
    c = mlflow_client(ganray_home)
    version = register_untrained(c, "page-private", "cond-dcgan", VOCABULARY, seed=6)
    proc = ganray(ganray_home, "serve", f"page-private/{version}", "--private", timeout=400)
    try:
        yield proc.stdout.strip().splitlines()[-1], version, serve_token(ganray_home, "page-private")
    finally:
        ganray(ganray_home, "serve", "--stop", "page-private", check=False, timeout=180)


def test_a_private_page_asks_the_token_once_and_keeps_it_for_the_session(private_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, version, token = private_url
    assert requests.get(url + "model", timeout=30).status_code == 401  # what the page's first call gets
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    box = wait.until(ec.visibility_of_element_located((By.ID, "token-box")))
    assert not browser.find_element(By.ID, "generate").is_enabled()
    assert browser.find_elements(By.CSS_SELECTOR, "#tags input") == []  # no model data without the token
    field = browser.find_element(By.ID, "token")
    field.send_keys("z" * 43)  # a wrong token: refused, and not kept
    browser.find_element(By.ID, "token-save").click()
    wait.until(lambda d: "refused (403)" in d.find_element(By.ID, "token-error").text)
    assert browser.execute_script("return sessionStorage.length") == 0
    field.send_keys(token)
    browser.find_element(By.ID, "token-save").click()
    wait.until(ec.element_to_be_clickable((By.ID, "generate")))
    assert not box.is_displayed() and f"page-private version {version}" in browser.find_element(By.ID,
                                                                                                "model-info").text
    boxes = browser.find_elements(By.CSS_SELECTOR, "#tags input[type=checkbox]")
    boxes[VOCABULARY.index("glasses")].click()
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "answered").get_attribute("data-version") == str(version))
    # Reloaded, the tab keeps its token for the session: no second prompt; it never is in the URL.
    browser.refresh()
    wait.until(ec.element_to_be_clickable((By.ID, "generate")))
    assert not browser.find_element(By.ID, "token-box").is_displayed() and token not in browser.current_url
    assert browser.execute_script("return Object.values(sessionStorage)") == [token]
    browser.find_elements(By.CSS_SELECTOR, "#tags input[type=checkbox]")[VOCABULARY.index("hat")].click()
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "answered").get_attribute("data-version") == str(version))
    assert browser.find_element(By.ID, "error").text == ""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_page_private.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
