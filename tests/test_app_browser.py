"""The page in a real browser: Debian's chromium driven by Playwright (its own browser download is not used).

The app runs in-process on the embedded default model; Stop is tried on a larger random-weights model
(official layout) whose answers are long enough to be interrupted. Screenshots of every view go to
test-artifacts/screenshots/.
"""

import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.checkpoints import make_clip_dir, write_official_checkpoint
from tokenpacker.synthetic.scenes import COLORS

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (setup.sh --test installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(settings):
    from app.runtime import ModelRuntime
    from app.ui import ASSETS, CSS, build

    runtime = ModelRuntime(settings).start(background=False)
    assert runtime.ready, runtime.status
    demo = build(runtime).queue(default_concurrency_limit=4)
    demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(ASSETS / "examples")], css=CSS, max_file_size=settings.max_file_size)  # fmt: skip
    return demo


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def default_app():
    from app.settings import AppSettings

    settings = AppSettings(device="cpu", port=_free_port())
    demo = _serve(settings)
    yield f"http://127.0.0.1:{settings.port}"
    demo.close()


@pytest.fixture(scope="module")
def slow_app(tmp_path_factory, tokenizer_dir):
    """A random-weights model big enough that a long answer takes seconds: something to Stop."""
    from app.settings import AppSettings

    root = tmp_path_factory.mktemp("slow")
    clip = make_clip_dir(root / "clip")
    model = write_official_checkpoint(root / "model", tokenizer_dir, clip, llm_hidden=512, aspect="pad")
    # Random weights may pick </s> at any step, which would end the answer before Stop is pressed: zero its
    # row of lm_head, so its logit is 0 while hundreds of others are random, and greedy decoding never picks it.
    state = torch.load(model / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"][2] = 0.0
    torch.save(state, model / "pytorch_model.bin")
    settings = AppSettings(model=str(model), device="cpu", port=_free_port())
    demo = _serve(settings)
    yield f"http://127.0.0.1:{settings.port}"
    demo.close()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _set_slider(number_box, value: str) -> None:
    """Type into a slider's number box until the slider's range input shows the value. A fill right after the
    settings accordion opens is sometimes dropped (twice in at most 15 runs here); the answer then runs with the
    default 64 tokens, short enough to end before Stop is pressed."""
    slider = number_box.locator("xpath=ancestor::div[.//input[@type='range']][1]").locator("input[type=range]")
    for _ in range(5):
        number_box.fill(value)
        number_box.press("Enter")
        try:
            expect(slider).to_have_value(value, timeout=3_000)
            return
        except AssertionError:
            continue
    raise AssertionError(f"the slider never took the value {value}")


def _ask(page, question: str, image: Path | None = None) -> None:
    if image is not None:
        page.locator("#ask input[type=file]").set_input_files(str(image))
        page.wait_for_timeout(500)
    page.locator("#ask textarea").fill(question)
    page.locator("#ask textarea").press("Enter")


def _assistant_messages(page):
    return page.locator("#chat .message.bot, #chat [data-testid='bot']")


def _plot_ready(page, selector: str, timeout: float = 30_000) -> None:
    page.locator(f"{selector} .js-plotly-plot").first.wait_for(state="visible", timeout=timeout)
    plot = f"{selector} .js-plotly-plot"
    marks = page.locator(f"{plot} .heatmaplayer image, {plot} .scatterlayer path.point, {plot} .imagelayer image, "
                         f"{plot} .barlayer path, {plot} .shapelayer path")  # fmt: skip
    try:  # plotly draws asynchronously after the element appears
        marks.first.wait_for(state="attached", timeout=timeout)
    except Exception:
        pass
    assert marks.count() > 0, f"{selector} shows an empty figure"


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(400)


def test_chat_look_inside_click_and_download(browser, default_app, tmp_path):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(default_app)
    page.locator("#model-info").get_by_text("device").wait_for(timeout=60_000)
    info = page.locator("#model-info").inner_text()
    assert "cpu" in info
    assert "Trained on synthetic scenes" in info and "of 1,000 held-out questions" in info  # what it knows, and how well
    assert "count of a shape 0.68" in info and "evaluation.txt" in info

    _ask(page, "What color is the triangle?", ROOT / "assets" / "examples" / "shapes.png")
    bot = _assistant_messages(page)
    bot.first.wait_for(timeout=60_000)
    page.locator("#status").get_by_text("visual tokens").wait_for(timeout=60_000)
    answer = bot.last.inner_text().strip()
    assert answer in COLORS, answer  # the default model answers in the task's vocabulary (its accuracy: #5)
    assert "1015 visual tokens" in page.locator("#status").inner_text()  # 640 x 480 -> HD 2x3 + thumbnail (SPEC §2)
    assert "grid 2x3" in page.locator("#status").inner_text()
    page.locator("#probs .tp-token").first.wait_for(timeout=30_000)  # filled by the look-inside pass after the answer
    _shot(page, "01-chat")

    for tab, plot in [("Heatmap", "#heat-plot"), ("Point queries", "#points-plot"), ("Region map", "#region-map-plot"),
                      ("Composed map", "#composed-plot"), ("HD partition", "#partition-plot")]:  # fmt: skip
        _open_tab(page, tab)
        _plot_ready(page, plot)
        _shot(page, f"02-{tab.lower().replace(' ', '-')}")

    # Click a point on the image: region-to-point weights and the words coloured by attention there.
    _open_tab(page, "Click to probe")
    image = page.locator("#probe-image img")
    image.wait_for(timeout=30_000)
    box = image.bounding_box()
    image.click(position={"x": box["width"] * 160 / 640, "y": box["height"] * 150 / 480})  # the red triangle
    _plot_ready(page, "#region-plot")
    page.locator("#words").get_by_text(answer).wait_for(timeout=30_000)
    _shot(page, "03-probe")

    # Click a word: the heatmap switches to that word's attention.
    page.locator("#words").get_by_text(answer).first.click()
    page.wait_for_timeout(1500)
    _open_tab(page, "Heatmap")
    _plot_ready(page, "#heat-plot")
    page.locator("#heat-plot").get_by_text("word").first.wait_for(timeout=30_000)  # the click's redraw (slow when busy)
    assert "word" in page.locator("#heat-plot").inner_text()
    _shot(page, "04-word-heatmap")

    # Download a PNG of the heatmap.
    page.locator("#png-button").click()
    link = page.locator("#download a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / "figure.png"
    info.value.save_as(saved)
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and saved.stat().st_size > 5000

    # A second image in the same conversation is refused with a readable message; the chat goes on.
    _ask(page, "And this one?", ROOT / "assets" / "examples" / "tall.png")
    page.locator("#chat").get_by_text("already has an image").wait_for(timeout=30_000)
    _ask(page, "What shape is the blue object?")
    page.wait_for_function("document.querySelectorAll('#chat .message.bot, #chat [data-testid=\"bot\"]').length >= 3", timeout=60_000)
    _shot(page, "05-second-turn")
    page.close()


def test_stop_really_stops_and_the_app_keeps_serving(browser, slow_app):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(slow_app)
    page.locator("#model-info").get_by_text("device").wait_for(timeout=60_000)
    assert "held-out" not in page.locator("#model-info").inner_text()  # an official checkpoint has no evaluation.txt
    page.get_by_text("Generation settings").click()
    tokens = page.locator("#ask").locator("xpath=ancestor::div[contains(@class,'column')]").get_by_label("Max new tokens").first
    _set_slider(tokens, "1024")
    _ask(page, "Describe the picture in detail", ROOT / "assets" / "examples" / "shapes.png")
    _assistant_messages(page).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    page.locator("#stop").click()
    try:
        page.locator("#chat").get_by_text("(stopped)").wait_for(timeout=30_000)
    except PlaywrightTimeout as e:  # say how the answer ended (e.g. '64 tokens': it finished before Stop)
        raise AssertionError(f"no '(stopped)' in the chat; status: {page.locator('#status').inner_text()!r}") from e
    stopped_text = _assistant_messages(page).last.inner_text()
    time.sleep(2)
    assert _assistant_messages(page).last.inner_text() == stopped_text  # nothing more arrives
    status = page.locator("#status").inner_text()
    assert "(stopped)" in status and "1024 tokens" not in status
    _shot(page, "06-stopped")

    _set_slider(tokens, "3")
    _ask(page, "What is in the image?")
    page.wait_for_function("document.querySelectorAll('#chat .message.bot, #chat [data-testid=\"bot\"]').length >= 2", timeout=60_000)
    page.locator("#status").get_by_text("3 tokens (length)").wait_for(timeout=60_000)
    _shot(page, "07-after-stop")
    page.close()
