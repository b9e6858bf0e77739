"""The page: chat on the left, "look inside" the selected answer on the right.

Handlers are thin: session + widget values in, a library call or a views.py/figures.py call, values out.
Library errors become readable notes in the chat; the model runs one generation at a time (queue).
"""

import ctypes
import ctypes.util
from pathlib import Path

import gradio as gr
import torch

from tokenpacker import Answer, SamplingSettings, TokenPackerError, open_image

from . import figures, inspector, views
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
                    if not _uploaded(path):
                        raise TokenPackerError("only images uploaded through the page can be used")
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
            try:
                settings, tiles = _settings(temp, p, new_tokens, tiles)
            except TokenPackerError as e:
                s.drop_pending()
                yield s, s.messages() + [_error_note(str(e))], ""
                return
            answer = None
            try:
                with runtime.lock:
                    for answer in runtime.pipeline.stream(s.image, s.history(), settings, max_tiles=tiles,
                                                          capture=s.image is not None,
                                                          should_stop=lambda: s.stop_requested):  # fmt: skip
                        yield s, s.messages(streaming=answer), gr.skip()
                if s.image is None:
                    answer.notices.append("No image in this conversation: the answer comes from the text alone, "
                                          "so there is nothing to look inside.")  # fmt: skip
                s.finish(answer)
                yield s, s.messages(), _status(answer)
                _release_freed_heap()  # after the last update, so the page does not wait for it
            except TokenPackerError as e:
                s.drop_pending()
                yield s, s.messages() + [_error_note(str(e))], ""
            except (torch.cuda.OutOfMemoryError, MemoryError):
                _free_memory()
                s.drop_pending()
                yield s, s.messages() + [_error_note("out of memory: try fewer HD tiles, fewer new tokens or a "
                                                     "shorter conversation (caches were freed)")], ""  # fmt: skip
            except Exception as e:  # anything else: free what we can, tell the user, keep serving
                _free_memory()
                s.drop_pending()
                yield s, s.messages() + [_error_note(f"generation failed ({type(e).__name__}: {e}); please try again")], ""

        def request_stop(s: ChatSession):
            # The running answer checks this flag before every token and ends itself as "stopped", keeping
            # what it has (and its trace); no task is cancelled, so nothing is left half-updated.
            s.stop_requested = True
            return s

        def retract(s: ChatSession):
            s.retract_last()
            return s, s.messages()

        def reset():
            fresh = ChatSession()
            return fresh, [], "", "", None, gr.update(choices=[], value=None)

        respond_inputs = [session, temperature, top_p, max_new_tokens, max_tiles]
        chat_outputs = [session, chat, status]
        asked = box.submit(submit, [box, session], [session, chat, box], api_name="ask")
        answering = asked.then(respond, respond_inputs, chat_outputs, concurrency_limit=1, concurrency_id="model",
                               api_name="answer")  # fmt: skip
        regenerating = regenerate.click(retract, [session], [session, chat], api_name="retract").then(
            respond, respond_inputs, chat_outputs, concurrency_limit=1, concurrency_id="model", api_name="regenerate")  # fmt: skip
        stop.click(request_stop, [session], [session], queue=False)
        clear.click(reset, None, [session, chat, status, probs, download, answer_pick], api_name="reset")

        # -- look inside ------------------------------------------------------------------------------
        inspector_outputs = [answer_pick, item, first_layer, last_layer, view_pick, heat_plot, points_plot,
                             probe_image, words, region_plot, region_map_plot, composed_plot, partition_plot,
                             budget, gallery, scores_plot, candidates, probs]  # fmt: skip

        def inspect(*values):
            return inspector.render(runtime, *values)

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
            return s, gr.update(value=inspector.answer_label(s, s.selected))

        def pick_word(s: ChatSession, evt: gr.SelectData):
            answer = s.answer
            if answer is None or answer.trace is None:
                return gr.skip(), gr.skip()
            choices = inspector.item_choices(answer.trace, "word")
            index = evt.index if isinstance(evt.index, int) else 0
            return "word", gr.update(choices=choices, value=choices[index] if index < len(choices) else None)

        words.select(pick_word, [session], [mode, item]).then(inspect, controls + [color_probs], inspector_outputs)

        chat.select(select_message, [session], [session, answer_pick]).then(inspect, controls + [color_probs], inspector_outputs)

        def download_png(*values):
            return inspector.figure_png(runtime, *values)

        png_button.click(download_png, [session, png_view] + controls[2:], [download])
        trace_button.click(inspector.export_trace, [session], [download])
        demo.load(lambda: runtime.header(), None, [header])
        timer = gr.Timer(1.0)
        timer.tick(lambda: (runtime.header(), gr.Timer(active=not runtime.ready)), None, [header, timer])
    return demo


def _settings(temperature, top_p, new_tokens, tiles) -> tuple[SamplingSettings, int]:
    """Slider values -> validated settings (an API caller can send anything)."""
    try:
        settings = SamplingSettings(max_new_tokens=int(new_tokens), temperature=float(temperature), top_p=float(top_p))
        tiles = int(tiles)
    except (TypeError, ValueError, OverflowError):
        raise TokenPackerError(f"invalid generation settings: {temperature!r}, {top_p!r}, {new_tokens!r}, {tiles!r}") from None
    if not 1 <= tiles <= 25:
        raise TokenPackerError(f"max HD tiles must be from 1 to 25, got {tiles}")
    return settings.validate(), tiles


def _uploaded(path: str | None) -> bool:
    """Only files in Gradio's upload folder (or our examples) are opened, never an arbitrary path."""
    from gradio.utils import get_upload_folder

    if not path:
        return False
    resolved = Path(path).resolve()
    return any(resolved.is_relative_to(Path(root).resolve()) for root in (get_upload_folder(), ASSETS / "examples"))


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return libc if hasattr(libc, "malloc_trim") else None
    except (OSError, TypeError):  # no C library found by that name (find_library gave None off Linux/macOS)
        return None


_LIBC = _load_libc()  # glibc, where there is one (Linux, as on Spaces)


def _release_freed_heap() -> None:
    """Give the heap that a finished answer freed back to the OS. glibc keeps freed blocks in per-thread arenas,
    and with Gradio's worker threads a CPU server's RSS kept climbing: 8 clients x 60 answers took it from 625 to
    1278 MB, and a trim brought it back to 718 (the objects were gone; the memory was not). Once per answer, after its last
    update: median 16-18 ms, max 120-190 (experiments/app-memory). A no-op without glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
