"""The page at GET / in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium with the driver given explicitly: nothing is downloaded at run time).

A cond-dcgan version is registered straight into the session stack's MLflow (no training: the page
only needs images) and served with `ganray serve NAME@champion`, then, as a second application, with
`--private`: the page asks for the token once and keeps it for the session. A third, whose metadata carries
the built-in faces' tag-set table, shows its tag groups as one choice each, keeps a face while its tags
change and plays a walk (POST /walk). The screenshots are kept under test-artifacts/ at the repository root.
"""
from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

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


@pytest.fixture  # stopped after its test: the local stack's 2 CPUs hold two replicas (one CPU each) at once
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


@pytest.fixture(scope="module")
def faces_url(page_url, ganray_home):
    """A cond-dcgan of the built-in faces' 15 tags whose metadata carries their tag-set table (240 faces)."""
    from test_tag_groups import faces_table, vocabulary_of

    sets = faces_table(240, 3)
    c = mlflow_client(ganray_home)
    version = register_untrained(c, "page-faces", "cond-dcgan", vocabulary_of(sets), seed=7, tag_sets=sets)
    proc = ganray(ganray_home, "serve", f"page-faces/{version}", timeout=400)
    try:
        yield proc.stdout.strip().splitlines()[-1], version
    finally:
        ganray(ganray_home, "serve", "--stop", "page-faces", check=False, timeout=180)


PIXELS = ("const img = document.getElementById(arguments[0]), c = document.createElement('canvas');"
          "c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');"
          "g.drawImage(img, 0, 0); return Array.from(g.getImageData(0, 0, c.width, c.height).data);")
BLOB = ("const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById(arguments[0]).src).then((r) => r.arrayBuffer()).then((b) => "
        "done(Array.from(new Uint8Array(b))));")


def shown(browser, element_id: str) -> np.ndarray:
    """The pixels (HxWx3) of an image on the page, as the browser decoded them."""
    w, h = browser.execute_script(f"const i = document.getElementById('{element_id}');"
                                  "return [i.naturalWidth, i.naturalHeight];")
    return np.array(browser.execute_script(PIXELS, element_id), np.uint8).reshape(h, w, 4)[..., :3]


def generated(url: str, body: dict) -> np.ndarray:
    r = requests.post(url + "generate?format=npz", json=body, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return np.load(io.BytesIO(r.content))["images"]


def loaded(element_id: str):
    return lambda d: d.execute_script(f"const i = document.getElementById('{element_id}');"
                                      "return i.complete && i.naturalWidth > 0 && !!i.dataset.scale;")


def test_groups_are_one_choice_keep_holds_the_face_while_tags_change_and_walk_plays(faces_url, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from test_tag_groups import BACKS, EYES, HAIR

    url, version = faces_url
    browser.get(url)
    wait = WebDriverWait(browser, 90)
    wait.until(ec.element_to_be_clickable((By.ID, "generate")))
    groups = browser.find_elements(By.CSS_SELECTOR, "#tags .group")
    assert [g.get_attribute("data-group") for g in groups] == ["hair", "eyes", "background"]
    radios = [g.find_elements(By.CSS_SELECTOR, "input[type=radio]") for g in groups]
    for choices, tags in zip(radios, (HAIR, EYES, BACKS)):  # "any" first, and chosen
        assert [r.get_attribute("value") for r in choices] == [""] + tags and choices[0].is_selected()
    toggles = browser.find_elements(By.CSS_SELECTOR, "#tags input[type=checkbox]")
    assert [b.get_attribute("value") for b in toggles] == ["blush", "glasses", "hat", "ribbon"]
    hair = {r.get_attribute("value"): r for r in radios[0]}
    hair["black hair"].click()
    hair["blonde hair"].click()  # one of: black hair is no longer asked
    assert [v for v, r in hair.items() if r.is_selected()] == ["blonde hair"]
    seed, count = browser.find_element(By.ID, "seed"), browser.find_element(By.ID, "count")
    seed.clear()
    seed.send_keys("40")
    count.clear()
    count.send_keys("9")
    browser.find_element(By.ID, "generate").click()
    wait.until(loaded("grid"))
    grid = browser.find_element(By.ID, "grid")
    natural, scale = int(grid.get_attribute("naturalWidth")), int(grid.get_attribute("data-scale"))
    assert natural == 3 * 18 + 2 and scale >= 4 and grid.size["width"] == natural * scale  # drawn large enough
    assert browser.execute_script("return getComputedStyle(arguments[0]).imageRendering", grid) == "pixelated"
    first = shown(browser, "grid")
    np.testing.assert_array_equal(first[2 + 18:18 + 18, 2 + 36:18 + 36],
                                  generated(url, {"seed": 45, "n": 1, "tags": ["blonde hair"]})[0])
    # pick sample 6 (row 1, column 2: seed 45) with a click on its centre, and keep it
    ActionChains(browser).move_to_element_with_offset(grid, (2 + 36 + 8 - natural / 2) * scale, 0).click().perform()
    assert browser.find_element(By.ID, "picked").get_attribute("data-seed") == "45"
    browser.find_element(By.ID, "keep").click()
    assert (seed.get_attribute("value"), count.get_attribute("value")) == ("45", "1")
    assert not seed.is_enabled() and not count.is_enabled() and "keeping the face of seed 45" in \
        browser.find_element(By.ID, "picked").text
    hair["black hair"].click()  # the same face, other hair
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: "1 samples" in d.find_element(By.ID, "answered").text)
    wait.until(loaded("grid"))
    kept = shown(browser, "grid")[2:18, 2:18]
    np.testing.assert_array_equal(kept, generated(url, {"seed": 45, "n": 1, "tags": ["black hair"]})[0])
    assert not np.array_equal(kept, first[20:36, 38:54])
    # walk from the kept face to a new one and back: the page shows the server's animated WebP
    frames = browser.find_element(By.ID, "walk-frames")
    frames.clear()
    frames.send_keys("12")
    browser.find_element(By.ID, "walk-go").click()
    wait.until(loaded("walk"))
    walk = browser.find_element(By.ID, "walk")
    assert walk.get_attribute("data-frames") == "12" and walk.get_attribute("data-space") == "z"
    start, end = map(int, walk.get_attribute("data-seeds").split(","))
    assert start == 45 and end != 45 and "12 frames in z" in browser.find_element(By.ID, "walk-info").text
    assert walk.size["width"] == 16 * int(walk.get_attribute("data-scale")) >= 64
    answer = requests.post(url + "walk?format=webp", json={"seeds": [45, end], "frames": 12, "tags": ["black hair"]},
                           timeout=120)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/webp", answer.text[:300]
    browser.set_script_timeout(30)
    assert bytes(browser.execute_async_script(BLOB, "walk")) == answer.content  # what the page plays
    animation = Image.open(io.BytesIO(answer.content))
    assert animation.n_frames == 12
    assert np.abs(np.asarray(animation.convert("RGB"), int) - kept).max() <= 2  # it starts at the kept face
    assert browser.find_element(By.ID, "error").text == ""
    ARTIFACTS.mkdir(exist_ok=True)
    browser.set_window_size(1100, 1400)  # the whole form, the kept face and the walk in one picture
    shot = ARTIFACTS / "serve_page_walk.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    browser.find_element(By.ID, "release").click()
    assert seed.is_enabled() and count.is_enabled()
