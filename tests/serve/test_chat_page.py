"""The web chat page at ``/``, in headless Chromium (Debian's package) via playwright."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(model_dir, start_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("page-log") / "serve.log"
    with start_server(model_dir, log) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        yield page
        browser.close()


def test_chat_page_streams_a_reply(page, server, http_json):
    requests = []
    page.on("request", lambda r: requests.append((r.method, r.url, r.post_data)))
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny-chat'")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    page.fill("#input", "Tell me a story.")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state='done']", timeout=30_000)
    assert page.inner_text(".msg.user") == "Tell me a story."
    shown = page.eval_on_selector(".msg.assistant", "e => e.textContent")
    # The streamed reply equals the server's non-streamed greedy answer.
    status, body = http_json("POST", server + "/v1/chat/completions", {
        "model": "tiny-chat", "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 12, "temperature": 0,
    })  # fmt: skip
    assert status == 200 and shown == body["choices"][0]["message"]["content"] and shown
    posts = [r for r in requests if r[0] == "POST"]
    assert len(posts) == 1 and '"stream":true' in posts[0][2]
    assert page.query_selector(".msg.error") is None
    # A second turn sends the whole conversation.
    page.fill("#input", "And then?")
    page.press("#input", "Enter")
    page.wait_for_function(
        "document.querySelectorAll(\".msg.assistant[data-state='done']\").length === 2"
    )
    assert '"role":"assistant"' in [r for r in requests if r[0] == "POST"][1][2]
