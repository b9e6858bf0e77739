"""The page: chat on the left, "look inside" the selected answer on the right.

Handlers are thin: session + widget values in, a library call or a views.py/figures.py call, values out.
Library errors become readable notes in the chat; the model runs one generation at a time (queue).
"""

import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from tokenpacker import Answer, SamplingSettings, TokenPackerError, open_image

from . import export, figures, views
from .runtime import ModelRuntime
from .session import ChatSession

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLES = [
    ("examples/shapes.png", "What color is the triangle?"),
    ("examples/large-small-objects.png", "How many objects are there?"),
    ("examples/tall.png", "Where is the blue circle?"),
]
CSS = """
.tp-token { border-radius: 3px; padding: 0 1px; }
#probs { font-size: 1.05em; line-height: 1.8em; }
"""

try:  # Hugging Face ZeroGPU: request a GPU for the duration of a generation
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:

    def gpu(fn):
        return fn


def _error_note(message: str) -> dict:
    return {"role": "assistant", "content": f"⚠️ {message}"}


def _status(answer: Answer | None) -> str:
    if answer is None:
        return ""
    t = answer.timings
    parts = [f"**{answer.num_visual_tokens} visual tokens**"]
    if answer.grid:
        parts.append(f"grid {answer.grid[0]}x{answer.grid[1]}")
    parts += [f"{len(answer.token_ids)} tokens ({answer.finish_reason})",
              f"vision {t.get('vision_s', 0):.3f}s", f"projector {t.get('projector_s', 0):.3f}s",
              f"prefill {t.get('prefill_s', 0):.3f}s"]  # fmt: skip
    if "decode_tokens_per_s" in t:
        parts.append(f"decode {t['decode_tokens_per_s']:.1f} tok/s")
    notes = "".join(f"\n\nℹ️ {n}" for n in answer.notices)
    return " · ".join(parts) + notes


def build(runtime: ModelRuntime) -> gr.Blocks:
    with gr.Blocks(title="TokenPacker Studio") as demo:
        session = gr.State(ChatSession())
        gr.Markdown("# TokenPacker Studio\nChat with an image, then look inside each answer: where the model looked, "
                    "through its point queries and region-to-point attention.")  # fmt: skip
        header = gr.Markdown(runtime.header(), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=5):
                chat = gr.Chatbot(label="Chat", height=440, elem_id="chat")
                box = gr.MultimodalTextbox(placeholder="Upload an image and ask about it…", file_types=["image"],
                                           file_count="single", sources=["upload"], elem_id="ask")  # fmt: skip
                with gr.Row():
                    stop = gr.Button("⏹ Stop", variant="stop", elem_id="stop")
                    regenerate = gr.Button("🔄 Regenerate", elem_id="regenerate")
                    clear = gr.Button("🗑 Clear", elem_id="clear")
                status = gr.Markdown(elem_id="status")
                color_probs = gr.Checkbox(value=True, label="Colour the answer by token probability (hover for alternatives)")
                probs = gr.HTML(elem_id="probs")
                with gr.Accordion("Generation settings", open=False):
                    temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                    max_new_tokens = gr.Slider(1, 1024, value=64, step=1, label="Max new tokens")
                    max_tiles = gr.Slider(1, 25, value=9, step=1, label="Max HD tiles")
                gr.Examples([[{"text": q, "files": [str(ASSETS / f)]}] for f, q in EXAMPLES], inputs=[box],
                            label="Examples")  # fmt: skip
            with gr.Column(scale=6):
                gr.Markdown("## Look inside the answer")
                with gr.Row():
                    answer_pick = gr.Dropdown(label="Answer", choices=[], interactive=True, elem_id="answer-pick")
                    mode = gr.Radio(["whole answer", "word", "token"], value="whole answer", label="Attention of")
                    item = gr.Dropdown(label="Word / token", choices=[], interactive=True, elem_id="item-pick")
                with gr.Row():
                    first_layer = gr.Slider(0, 31, value=0, step=1, label="First LLM layer")
                    last_layer = gr.Slider(0, 31, value=31, step=1, label="Last LLM layer")
                    reduce = gr.Radio(["mean", "max"], value="mean", label="Heads")
                with gr.Tabs():
                    with gr.Tab("Heatmap", elem_id="tab-heatmap"):
                        heat_plot = gr.Plot(elem_id="heat-plot")
                    with gr.Tab("Point queries", elem_id="tab-points"):
                        which = gr.Radio(["tiles", "thumbnail"], value="tiles", label="Views")
                        points_plot = gr.Plot(elem_id="points-plot")
                    with gr.Tab("Click to probe", elem_id="tab-probe"):
                        gr.Markdown("Click a point of the image: its point queries' region-to-point weights, "
                                    "and the answer's words coloured by how much they attended there.")  # fmt: skip
                        probe_image = gr.Image(label="Click the image", interactive=False, elem_id="probe-image")
                        words = gr.HighlightedText(label="Answer words: colour = attention to the clicked point; "
                                                   "click a word to map its attention", elem_id="words",
                                                   combine_adjacent=False, show_legend=False)  # fmt: skip
                        region_plot = gr.Plot(elem_id="region-plot")
                    with gr.Tab("Region map", elem_id="tab-region-map"):
                        view_pick = gr.Dropdown(label="View", choices=[], interactive=True)
                        region_map_plot = gr.Plot(elem_id="region-map-plot")
                    with gr.Tab("Composed map", elem_id="tab-composed"):
                        composed_plot = gr.Plot(elem_id="composed-plot")
                    with gr.Tab("HD partition", elem_id="tab-partition"):
                        partition_plot = gr.Plot(elem_id="partition-plot")
                        budget = gr.Markdown(elem_id="budget")
                        gallery = gr.Gallery(label="What each view saw (CLIP input)", columns=5, height=220)
                        scores_plot = gr.Plot(elem_id="scores-plot")
                        candidates = gr.Dataframe(headers=["grid", "fill", "IoU", "score", "allowed", ""],
                                                  label="Candidate grids", interactive=False)  # fmt: skip
                with gr.Row():
                    png_view = gr.Dropdown(["heatmap", "point queries", "region-to-point", "region map", "composed map",
                                            "HD partition"], value="heatmap", label="Figure")  # fmt: skip
                    png_button = gr.Button("Download PNG", elem_id="png-button")
                    trace_button = gr.Button("Download trace (.npz)", elem_id="trace-button")
                download = gr.File(label="Download", elem_id="download")

        controls = [session, answer_pick, mode, item, first_layer, last_layer, reduce, which, view_pick]

        # -- chat -------------------------------------------------------------------------------------
        def submit(message, s: ChatSession):
            if not runtime.ready:
                return s, s.messages() + [_error_note(f"The model is not ready: {runtime.status}")], message
            text = (message or {}).get("text", "").strip()
            files = (message or {}).get("files") or []
            try:
                image = None
                if files:
                    path = files[0] if isinstance(files[0], str) else files[0].get("path")
                    if s.image is not None:
                        raise TokenPackerError("this conversation already has an image; press Clear to start a new one with another image")
                    image = open_image(path, name=Path(path).name)
                    s.image_path = path
                if not text:
                    raise TokenPackerError("please type a question" + (" about the image" if image or s.image else ""))
                if s.pending is not None:
                    raise TokenPackerError("the previous question is still being answered")
            except TokenPackerError as e:
                return s, s.messages() + [_error_note(str(e))], message
            s.ask(text, image, s.image_path)
            return s, s.messages(), {"text": "", "files": []}

        @gpu
        def respond(s: ChatSession, temp, p, new_tokens, tiles):
            if s.pending is None or not runtime.ready:
                yield s, s.messages(), gr.skip()
                return
            settings = SamplingSettings(max_new_tokens=int(new_tokens), temperature=float(temp), top_p=float(p))
            answer = None
            s.stop_requested = False
            try:
                with runtime.lock:
                    for answer in runtime.pipeline.stream(s.image, s.history(), settings, max_tiles=int(tiles),
                                                          capture=s.image is not None,
                                                          should_stop=lambda: s.stop_requested):  # fmt: skip
                        s.streaming = answer
                        yield s, s.messages(streaming=answer), gr.skip()
                s.finish(answer)
                yield s, s.messages(), _status(answer)
            except TokenPackerError as e:
                s.drop_pending()
                yield s, s.messages() + [_error_note(str(e))], ""
            except Exception as e:  # out of memory and the like: free what we can, tell the user, keep serving
                _free_memory()
                s.drop_pending()
                yield s, s.messages() + [_error_note(f"generation failed ({type(e).__name__}); please try again")], ""
            finally:
                s.streaming = None

        def request_stop(s: ChatSession):
            s.stop_requested = True
            return s

        def after_stop(s: ChatSession):
            partial = s.streaming
            if s.pending is not None and partial is not None:  # the generator was cancelled mid-answer
                partial.done, partial.finish_reason = True, "stopped"
                s.finish(partial)
            s.streaming = None
            return s, s.messages(), _status(s.answer)

        def retract(s: ChatSession):
            s.retract_last()
            return s, s.messages()

        def reset():
            fresh = ChatSession()
            return fresh, [], "", "", None, gr.update(choices=[], value=None)

        respond_inputs = [session, temperature, top_p, max_new_tokens, max_tiles]
        chat_outputs = [session, chat, status]
        asked = box.submit(submit, [box, session], [session, chat, box])
        answering = asked.then(respond, respond_inputs, chat_outputs, concurrency_limit=1, concurrency_id="model")
        regenerating = regenerate.click(retract, [session], [session, chat]).then(
            respond, respond_inputs, chat_outputs, concurrency_limit=1, concurrency_id="model")  # fmt: skip
        stop.click(request_stop, [session], [session], queue=False).then(
            after_stop, [session], chat_outputs, cancels=[answering, regenerating])  # fmt: skip
        clear.click(reset, None, [session, chat, status, probs, download, answer_pick])

        # -- look inside ------------------------------------------------------------------------------
        inspector_outputs = [answer_pick, item, first_layer, last_layer, view_pick, heat_plot, points_plot,
                             probe_image, words, region_plot, region_map_plot, composed_plot, partition_plot,
                             budget, gallery, scores_plot, candidates, probs]  # fmt: skip

        def inspect(s: ChatSession, pick, mode_value, item_value, first, last, reduce_value, which_value, view_value, color):
            return render_inspector(runtime, s, pick, mode_value, item_value, first, last, reduce_value,
                                    which_value, view_value, color)  # fmt: skip

        for done in (answering, regenerating):
            done.then(inspect, controls + [color_probs], inspector_outputs)
        for control in (answer_pick, mode, item, first_layer, last_layer, reduce, which, view_pick, color_probs):
            control.input(inspect, controls + [color_probs], inspector_outputs)

        def probe(s: ChatSession, first, last, reduce_value, evt: gr.SelectData):
            answer = s.answer
            if answer is None or answer.trace is None:
                return gr.skip(), gr.skip()
            trace = answer.trace
            display = views.display_image(s.image)
            x = evt.index[0] * trace.layout.image_size[0] / display.width
            y = evt.index[1] * trace.layout.image_size[1] / display.height
            s.point = (x, y)
            layers = list(range(int(first), int(last) + 1))
            hit = views.tokens_at(trace, x, y)
            region = figures.region_detail(views.region_detail(trace, hit[0])) if hit else None
            return views.word_attention_at(trace, x, y, layers, reduce_value), region

        probe_image.select(probe, [session, first_layer, last_layer, reduce], [words, region_plot])

        def select_message(s: ChatSession, evt: gr.SelectData):
            assistant = [i for i, m in enumerate(s.messages()) if m["role"] == "assistant"]
            if evt.index in assistant:
                s.selected = assistant.index(evt.index)
            return s, gr.update(value=_answer_label(s, s.selected))

        def pick_word(s: ChatSession, evt: gr.SelectData):
            answer = s.answer
            if answer is None or answer.trace is None:
                return gr.skip(), gr.skip()
            choices = _item_choices(answer.trace, "word")
            index = evt.index if isinstance(evt.index, int) else 0
            return "word", gr.update(choices=choices, value=choices[index] if index < len(choices) else None)

        words.select(pick_word, [session], [mode, item]).then(inspect, controls + [color_probs], inspector_outputs)

        chat.select(select_message, [session], [session, answer_pick]).then(inspect, controls + [color_probs], inspector_outputs)

        def download_png(s: ChatSession, figure, pick, mode_value, item_value, first, last, reduce_value, which_value, view_value):
            return export_figure(runtime, s, figure, mode_value, item_value, first, last, reduce_value, which_value, view_value)

        png_button.click(download_png, [session, png_view] + controls[1:], [download])
        trace_button.click(export_trace, [session], [download])
        demo.load(lambda: runtime.header(), None, [header])
        timer = gr.Timer(1.0)
        timer.tick(lambda: (runtime.header(), gr.Timer(active=not runtime.ready)), None, [header, timer])
    return demo


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _answer_label(s: ChatSession, index: int) -> str | None:
    if not 0 <= index < len(s.answers):
        return None
    return f"{index + 1}: {s.questions[index][:40]} → {s.answers[index].text[:30]}"


def _selection(trace, mode_value, item_value, first, last, reduce_value) -> views.Selection:
    index = int(str(item_value).split(":")[0]) if item_value else None
    kind = {"whole answer": "answer", "word": "word", "token": "token"}[mode_value or "whole answer"]
    return views.selection(trace, kind, index, int(first), int(last), reduce_value or "mean")


def _item_choices(trace, mode_value) -> list[str]:
    if mode_value == "word":
        return [f"{i}: {w}" for i, (w, _) in enumerate(trace.words())]
    if mode_value == "token":
        return [f"{i}: {t!r}" for i, t in enumerate(trace.token_texts[: trace.num_rows])]
    return []


def render_inspector(runtime, s: ChatSession, pick, mode_value, item_value, first, last, reduce_value, which_value,
                     view_value, color) -> tuple:  # fmt: skip
    """Every view of the selected answer (about 0.1-0.3 s for the default model)."""
    labels = [_answer_label(s, i) for i in range(len(s.answers))]
    if pick in labels:
        s.selected = labels.index(pick)
    answer = s.answer
    html = views.answer_html(answer, runtime.pipeline.tokenizer.id_to_piece) if (answer and color) else ""
    if answer is None or answer.trace is None:
        empty = [gr.update(choices=labels, value=_answer_label(s, s.selected))] + [gr.skip()] * 16 + [html]
        return tuple(empty)
    trace = answer.trace
    layers = trace.num_layers
    first, last = min(int(first), layers - 1), min(int(last), layers - 1)
    if first > last:
        first, last = last, first
    choices = _item_choices(trace, mode_value)
    if item_value not in choices:
        item_value = choices[0] if choices else None
    choice = _selection(trace, mode_value, item_value, first, last, reduce_value)
    image = s.image
    view_labels = [f"{v.index}: {v.name}" for v in trace.layout.views]
    view_value = view_value if view_value in view_labels else view_labels[0]
    view_index = int(view_value.split(":")[0])
    pixel_values = runtime.pipeline.image_processor(image, max_tiles=_tile_limit(answer)).pixel_values
    config = runtime.pipeline.config
    pictures = views.view_images(pixel_values, config.image_mean, config.image_std)
    region_title, region_grid = views.view_region_map(trace, view_index)
    rows = views.candidate_rows(trace)
    which_value = which_value if (which_value == "tiles" or len(trace.layout.views) > 1) else "tiles"
    point_words = [(w, None) for w, _ in trace.words()]
    region = None
    if s.point is not None:
        hit = views.tokens_at(trace, *s.point)
        point_words = views.word_attention_at(trace, *s.point, choice.layers, choice.reduce)
        region = figures.region_detail(views.region_detail(trace, hit[0])) if hit else None
    return (
        gr.update(choices=labels, value=_answer_label(s, s.selected)),
        gr.update(choices=choices, value=item_value),
        gr.update(maximum=layers - 1, value=first),
        gr.update(maximum=layers - 1, value=last),
        gr.update(choices=view_labels, value=view_value),
        figures.overlay(views.heatmap(image, trace, choice)),
        figures.overlay(views.point_grid(image, trace, choice, which_value)),
        views.display_image(image),
        point_words,
        region,
        figures.view_region_map(region_title, region_grid, pictures[view_index], trace.scale_factor),
        figures.overlay(views.heatmap(image, trace, choice, composed=True)),
        figures.overlay(views.partition(image, trace)),
        views.budget_markdown(trace, answer),
        [(p, v.name) for p, v in zip(pictures, trace.layout.views)],
        figures.candidate_scores(rows) if rows else None,
        rows,
        html,
    )


def _tile_limit(answer: Answer) -> int | None:
    """The views of an answer are re-cut with the tile count it was answered with."""
    return answer.grid[0] * answer.grid[1] if answer.grid else None


def export_figure(runtime, s: ChatSession, figure, mode_value, item_value, first, last, reduce_value, which_value, view_value):
    answer = s.answer
    if answer is None or answer.trace is None:
        raise gr.Error("Ask a question about an image first: there is no answer to export.")
    trace, image = answer.trace, s.image
    choice = _selection(trace, mode_value, item_value, first, last, reduce_value)
    directory = tempfile.mkdtemp(prefix="tokenpacker-png-")
    name = figure.replace(" ", "-")
    if figure == "heatmap":
        return str(export.overlay_png(views.heatmap(image, trace, choice), name, directory))
    if figure == "composed map":
        return str(export.overlay_png(views.heatmap(image, trace, choice, composed=True), name, directory))
    if figure == "point queries":
        return str(export.overlay_png(views.point_grid(image, trace, choice, which_value or "tiles"), name, directory))
    if figure == "HD partition":
        return str(export.overlay_png(views.partition(image, trace), name, directory))
    if figure == "region map":
        view_index = int(str(view_value).split(":")[0]) if view_value else 0
        config = runtime.pipeline.config
        pixels = runtime.pipeline.image_processor(image, max_tiles=_tile_limit(answer)).pixel_values
        picture = views.view_images(pixels[view_index : view_index + 1], config.image_mean, config.image_std)[0]
        title, grid = views.view_region_map(trace, view_index)
        return str(export.region_map_png(title, grid, picture, trace.scale_factor, name, directory))
    hit = views.tokens_at(trace, *s.point) if s.point else []
    k = hit[0] if hit else int(np.argmax(trace.answer_attention()))
    return str(export.region_png(views.region_detail(trace, k), name, directory))


def export_trace(s: ChatSession):
    answer = s.answer
    if answer is None or answer.trace is None:
        raise gr.Error("Ask a question about an image first: there is no trace to download.")
    directory = tempfile.mkdtemp(prefix="tokenpacker-trace-")
    return str(answer.trace.save(Path(directory) / f"trace-answer-{s.selected + 1}.npz"))
