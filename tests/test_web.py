"""`infllava web`: the Gradio page driven in a real browser (Playwright + Debian's chromium, which `make`
installs): upload an image, ask, the streamed answer appears and equals `infllava.answer`; the picture of what
the model sees is shown; a file that is not an image is reported in the page, which keeps working."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

import infllava
from infllava.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    model_dir = build_tiny_model(tmp_path_factory.mktemp("web") / "model")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "infllava_cli", "web", str(model_dir), "--port", str(port),
                             "--max-new-tokens", "12"],
                            env=dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode())
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    yield url, model_dir
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_upload_ask_stream_and_see_the_crops(app, tmp_path):
    url, model_dir = app
    image = tmp_path / "red.png"
    Image.new("RGB", (60, 40), (200, 20, 20)).save(image)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    question = "What colour is it?"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#images input[type=file]", state="attached", timeout=60000)
        # a file that is not an image: a message in the page, not a dead app
        page.locator("#images input[type=file]").set_input_files(str(bad))
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('Image not loaded')",
                               timeout=60000)
        page.locator("#images input[type=file]").set_input_files(str(image))
        page.wait_for_selector("#crops img", timeout=60000)
        assert "/file=" in page.locator("#crops img").get_attribute("src")
        page.locator("#question textarea").fill(question)
        page.locator("#send").click()
        page.wait_for_function(
            "() => { const m = document.querySelectorAll('#chat .message'); "
            "return m.length >= 2 && m[m.length - 1].innerText.trim().length > 0; }", timeout=120000)
        time.sleep(1.0)  # let the stream finish
        shot = tmp_path / "web.png"
        page.screenshot(path=str(shot), full_page=True)
        texts = [t.strip() for t in page.locator("#chat .message").all_inner_texts() if t.strip()]
        browser.close()
    assert shot.stat().st_size > 10_000
    model, processor = infllava.load(model_dir, device="cpu")
    want = infllava.answer(model, processor, str(image), question, max_new_tokens=12)
    assert question in texts[0] and texts[-1] == want
