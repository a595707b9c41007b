"""The web chat page at ``/``, in headless Chromium (Debian's package) via playwright."""

from __future__ import annotations

import json
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
    shown = page.eval_on_selector(".msg.assistant", "e => e.dataset.raw")
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


def test_system_prompt_and_model_choice_are_sent(page, server):
    requests = []
    page.on("request", lambda r: requests.append((r.method, r.post_data)))
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').value === 'tiny-chat'")
    page.fill("#system", "Answer in French.")
    page.fill("#max-tokens", "4")
    page.fill("#input", "hi")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state='done']", timeout=30_000)
    (body,) = [json.loads(d) for m, d in requests if m == "POST"]
    assert body["model"] == "tiny-chat"
    assert body["messages"][:2] == [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]  # fmt: skip


def test_markdown_is_rendered_without_raw_html(page, server):
    page.goto(server + "/")
    page.wait_for_function("typeof window.renderMarkdown === 'function'")
    evil = (
        "# Title\n**bold** and *it* with `<b>code</b>`\n- one\n- two <img src=x onerror=alert(1)>"
        "\n\n```\n<script>alert(2)</script>\n```\n[ok](https://example.org) "
        "[bad](javascript:alert(3)) <a href='x'>raw</a>"
    )
    html = page.evaluate(
        "t => window.renderMarkdown(t, document.createElement('div')).innerHTML", evil
    )
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>&lt;b&gt;code&lt;/b&gt;</code>" in html and html.count("<li>") == 2
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert "<pre><code>&lt;script&gt;alert(2)&lt;/script&gt;</code></pre>" in html
    assert '<a href="https://example.org/"' in html or '<a href="https://example.org"' in html
    assert "javascript:" not in html.split("[bad]")[0] and 'href="javascript' not in html
    assert "&lt;a href='x'&gt;raw&lt;/a&gt;" in html and "<script" not in html


def test_image_upload_is_sent_inline_and_accepted(page, vlm_server, http_json, data_url, tmp_path):
    """A VLM server's page: the file input's image goes out as an ``image_url`` data URL part
    beside the text, the server answers it, and the answer equals the same JSON sent by hand."""
    import base64

    url = data_url((16, 16), (200, 30, 30))
    png = tmp_path / "red.png"
    png.write_bytes(base64.b64decode(url.split(",", 1)[1]))
    requests = []
    page.on("request", lambda r: requests.append((r.method, r.post_data)))
    page.goto(vlm_server + "/")
    page.wait_for_function("document.getElementById('model').value === 'tiny-vlm'")
    assert page.get_attribute("#image", "type") == "file"
    assert "image/png" in page.get_attribute("#image", "accept")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "6")
    page.set_input_files("#image", str(png))
    page.fill("#input", "What colour is it?")
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-state='done']", timeout=30_000)
    assert page.query_selector(".msg.error") is None
    assert page.query_selector(".msg.user img") is not None
    assert page.eval_on_selector("#image", "e => e.files.length") == 0  # cleared after sending
    (body,) = [json.loads(d) for m, d in requests if m == "POST"]
    text, image = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "What colour is it?"}
    assert image["type"] == "image_url" and image["image_url"]["url"] == url
    shown = page.eval_on_selector(".msg.assistant", "e => e.dataset.raw")
    status, out = http_json("POST", vlm_server + "/v1/chat/completions", {**body, "stream": False})
    assert status == 200 and out["choices"][0]["message"]["content"] == shown
