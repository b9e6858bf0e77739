"""Rendering every "look inside" view for one answer of the default model (figures as the page builds them)."""

from pathlib import Path

from tokenpacker import SamplingSettings, open_image

from .common import timeit

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"


def run(quick: bool = False) -> dict:
    from app.runtime import ModelRuntime
    from app.session import ChatSession
    from app.settings import AppSettings
    from app.inspector import render

    runtime = ModelRuntime(AppSettings(device="cpu")).start(background=False)
    rows = {}
    for name, question in (("shapes.png", "What color is the triangle?"), ("large-small-objects.png", "How many objects are there?")):
        session = ChatSession()
        session.ask(question, open_image(EXAMPLES / name), str(EXAMPLES / name))
        answer = runtime.pipeline.ask(session.image, session.history(), settings=SamplingSettings(max_new_tokens=8), capture=True)
        session.finish(answer)
        session.point = (100.0, 100.0)  # a clicked point: the probe views render too

        def draw():
            return render(runtime, session, None, "whole answer", None, 0, 99, "mean", "tiles", None, True)

        rows[name] = {"grid": answer.grid, "visual_tokens": answer.num_visual_tokens,
                      "render_s": timeit(draw, repeats=3 if quick else 7)}  # fmt: skip
    return {"summary": {"render_s": max(r["render_s"] for r in rows.values())}, "rows": rows}
