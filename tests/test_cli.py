import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import scene

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run([sys.executable, "-m", "tokenpacker", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    scene(1024, 768, seed=2).save(path)
    return path


def test_ask_prints_the_answer_and_writes_json(official, hd_model, image_path, tmp_path):
    out = tmp_path / "answer.json"
    result = run("ask", "--model", official(scale_factor=2, aspect="slice", patch_num=9), "--image", image_path,
                 "--question", "What is in the image?", "--max-new-tokens", 5, "--device", "cpu", "--dtype", "float32",
                 "--json", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    expected = hd_model.ask(scene(1024, 768, seed=2), "What is in the image?",
                            settings=__import__("tokenpacker").SamplingSettings(max_new_tokens=5))  # fmt: skip
    assert result.stdout.strip() == expected.text
    assert data["token_ids"] == expected.token_ids
    assert data["logprobs"] == pytest.approx(expected.logprobs, abs=1e-5)
    assert data["num_visual_tokens"] == 1015 and data["grid"] == [2, 3]
    assert set(data["timings"]) >= {"vision_s", "projector_s", "prefill_s", "decode_s"}
    layout = data["layout"]
    assert len(layout) == 1008 and set(layout[0]) == {"pos", "view", "gy", "gx", "box", "padding"}
    assert len(data["views"]) == 7 and len(data["separators"]) == 7
    region = np.array(data["region_attention"])
    assert region.shape == (7, 12, 12, 4) and np.allclose(region.sum(-1), 1, atol=1e-5)
    answer_attention = np.array(data["answer_attention"])
    assert answer_attention.shape == (5, 1008) and (answer_attention >= 0).all()


def test_temperature_zero_is_greedy(official, image_path):
    model = official(scale_factor=2, aspect="pad")
    a = run("ask", "--model", model, "--image", image_path, "--question", "Hi?", "--max-new-tokens", 4, "--temperature", 0)
    b = run("ask", "--model", model, "--image", image_path, "--question", "Hi?", "--max-new-tokens", 4)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model", "--image", "{image}"], "does not exist"),
        (["--model", "{model}", "--image", "/nonexistent.png"], "cannot open"),
        (["--model", "{model}", "--image", "{bad}"], "not an image file"),
        (["--model", "{model}", "--image", "{image}", "--max-tiles", "0"], "at least 1"),
        (["--model", "{model}", "--image", "{image}", "--temperature", "-2"], "temperature"),
        (["--model", "{model}", "--image", "{image}", "--device", "cuda"], "no CUDA GPU"),
    ],
)
def test_errors_are_one_line(official, image_path, tmp_path, args, message):
    bad = tmp_path / "fake.png"
    bad.write_text("this is not a png")
    values = {"image": image_path, "model": official(scale_factor=2, aspect="pad"), "bad": bad}
    result = run("ask", "--question", "Hi?", *[a.format(**values) for a in args])
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
