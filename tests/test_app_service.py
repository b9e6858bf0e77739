"""The running app as a service, over loopback with gradio_client: broken inputs, concurrency, isolation.

Every request goes through the real queue and HTTP API the page uses (the `ask` then `answer` events).
"""

import random
import re
import socket
import threading
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.broken_inputs import write_catalogue
from tokenpacker.synthetic.scenes import COLORS, Scene, SceneObject

CLIENTS, REQUESTS = 8, 25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """(url, runtime) of an app on the default model, in this process."""
    from app.runtime import ModelRuntime
    from app.settings import AppSettings
    from app.ui import ASSETS, CSS, build

    settings = AppSettings(device="cpu", port=_free_port())
    runtime = ModelRuntime(settings).start(background=False)
    demo = build(runtime).queue(default_concurrency_limit=4, max_size=256)
    demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(ASSETS / "examples")], css=CSS, max_file_size="5mb")  # fmt: skip
    yield f"http://127.0.0.1:{settings.port}", runtime
    demo.close()


@pytest.fixture(scope="module")
def app_url(served):
    return served[0]


def _chat_text(chat) -> list[tuple[str, str]]:
    """(role, text) of each message; file messages become ("user", "<file NAME>")."""
    out = []
    for message in chat:
        content = message["content"]
        if isinstance(content, list):  # Gradio 6 sends content as a list of typed parts
            parts = []
            for part in content:
                if part.get("type") == "text":
                    parts.append(part["text"])
                else:
                    file = part.get("file") or part
                    parts.append(f"<file {Path(str(file if isinstance(file, str) else file.get('path', ''))).name}>")
            content = " ".join(parts)
        elif isinstance(content, dict):
            content = f"<file {Path(str(content.get('path', ''))).name}>"
        out.append((message["role"], content))
    return out


def _ask(client: Client, question: str, image: Path | None = None):
    files = [handle_file(str(image))] if image else []
    chat, _ = client.predict({"text": question, "files": files}, api_name="/ask")
    chat, status = client.predict(0, 1, 8, 9, api_name="/answer")
    return _chat_text(chat), status


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_broken_files_get_a_readable_note_and_the_app_keeps_serving(app_url, tmp_path):
    client = Client(app_url, verbose=False)
    catalogue = write_catalogue(tmp_path / "broken")
    for name, (path, expected) in catalogue.items():
        client.predict(api_name="/reset")
        chat, _ = client.predict({"text": "What color is the square?", "files": [handle_file(str(path))]}, api_name="/ask")
        last = _chat_text(chat)[-1]
        if expected is None:
            assert last == ("user", "What color is the square?"), (name, last)
            chat, status = client.predict(0, 1, 4, 9, api_name="/answer")
            assert _chat_text(chat)[-1][0] == "assistant" and "visual tokens" in status, name
        else:
            assert last[0] == "assistant" and last[1].startswith("⚠️") and expected in last[1], (name, last)
            assert "Traceback" not in last[1] and "\n" not in last[1]
    client.predict(api_name="/reset")
    shapes = Path(__file__).resolve().parent.parent / "assets" / "examples" / "shapes.png"
    chat, status = _ask(client, "What color is the triangle?", shapes)
    assert chat[-1][0] == "assistant" and chat[-1][1] in COLORS and "1015 visual tokens" in status


@pytest.mark.parametrize(
    "text, settings, expected",
    [
        ("", (0, 1, 8, 9), "please type a question"),
        ("x" * 9000, (0, 1, 8, 9), "characters long"),
        ("Hi?", (-1, 1, 8, 9), "temperature"),
        ("Hi?", (0, 0, 8, 9), "top-p"),
        ("Hi?", (0, 1, 0, 9), "max new tokens"),
        ("Hi?", (0, 1, 8, 0), "max HD tiles"),
        ("what is <image> this", (0, 1, 8, 9), "reserved"),
    ],
)
def test_bad_prompts_and_settings(app_url, text, settings, expected):
    client = Client(app_url, verbose=False)
    chat, _ = client.predict({"text": text, "files": []}, api_name="/ask")
    messages = _chat_text(chat)
    if messages and messages[-1][0] == "assistant":
        assert expected in messages[-1][1]
        return
    try:
        chat, _ = client.predict(*settings, api_name="/answer")
        assert expected in _chat_text(chat)[-1][1]
    except AppError as e:  # Gradio's own range check on the slider refuses the value first: one line, nothing run
        assert re.fullmatch(r"Value -?[\d.]+ is (less|greater) than (minimum|maximum) value [\d.]+\.", str(e)), str(e)
    client.predict(api_name="/reset")
    chat, _ = _ask(client, "How many objects are there?")  # and the app still answers
    assert chat[-1][0] == "assistant" and not chat[-1][1].startswith("⚠️")


def test_no_image_answers_from_text_and_says_so(app_url):
    client = Client(app_url, verbose=False)
    chat, status = _ask(client, "How many objects are there?")
    assert chat[-1][0] == "assistant" and "No image" in status


def test_paths_outside_the_upload_area_are_refused(app_url):
    client = Client(app_url, verbose=False)
    with pytest.raises(AppError):  # Gradio refuses files that were not uploaded; our handler would too
        client.predict({"text": "Hi?", "files": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]}, api_name="/ask")
    chat, status = _ask(client, "Hi?")  # still serving this client
    assert chat[-1][0] == "assistant"


def test_concurrent_sessions_never_mix(app_url, tmp_path):
    """8 clients x 25 requests on loopback: no errors, every answer in its own session, steady memory."""
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "red", "blue"]
    shapes = ["circle", "square", "triangle", "circle", "square", "triangle", "square", "circle"]
    images = []
    for i, (color, shape) in enumerate(zip(colors, shapes)):
        path = tmp_path / f"client-{i}.png"
        Scene(400, 300, (235, 235, 235), 0, [SceneObject(shape, color, 200, 150, 120)], i).render().save(path)
        images.append(path)
    errors, wrong, rss = [], [], []

    def run(i: int):
        client = Client(app_url, verbose=False)
        rng = random.Random(i)
        for r in range(REQUESTS):
            question = rng.choice([f"What color is the {shapes[i]}?", f"What shape is the {colors[i]} object?",
                                   "How many objects are there?"]) + f" (client {i}, request {r})"  # fmt: skip
            try:
                client.predict(api_name="/reset")
                chat, status = _ask(client, question, images[i])
            except Exception as e:  # noqa: BLE001 - any failure is what this test counts
                errors.append(f"client {i} request {r}: {type(e).__name__}: {e}")
                continue
            users = [text for role, text in chat if role == "user"]
            if users != [f"<file client-{i}.png>", question] or chat[-1][0] != "assistant":
                wrong.append((i, r, chat))
            if i == 0 and r in (2, REQUESTS - 1):
                rss.append(_rss_mb())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors, errors[:3]
    assert not wrong, wrong[:2]
    assert len(rss) == 2 and rss[1] - rss[0] < 300, f"RSS grew from {rss[0]:.0f} MB to {rss[1]:.0f} MB"


def test_out_of_memory_is_caught_and_the_app_keeps_serving(served, monkeypatch):
    import torch

    url, runtime = served
    client = Client(url, verbose=False)
    calls = {"n": 0}

    def out_of_memory(*args, **kwargs):  # what a too-large request does on a GPU
        calls["n"] += 1
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        yield  # a generator, like the real stream

    monkeypatch.setattr(runtime.pipeline, "stream", out_of_memory)
    chat, _ = _ask(client, "What color is the square?")
    assert calls["n"] == 1 and chat[-1][1].startswith("⚠️") and "out of memory" in chat[-1][1]
    monkeypatch.undo()
    chat, status = _ask(client, "What color is the square?")
    assert chat[-1][0] == "assistant" and not chat[-1][1].startswith("⚠️")
    assert re.search(r"\d+ tokens", status)
