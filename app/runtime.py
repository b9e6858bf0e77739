"""The one model the app serves: loaded in the background (the page shows progress), used by one
generation at a time."""

import threading
import traceback

from tokenpacker import TokenPackerError, load
from tokenpacker.synthetic.evaluate import recorded_accuracy

from .settings import AppSettings


TYPE_NAMES = {"color": "colour", "count_shape": "count of a shape"}  # evaluation.txt's question types, for the page


class ModelRuntime:
    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.pipeline = None
        self.recorded = None  # a synthetic-scene checkpoint's held-out accuracy, from its evaluation.txt
        self.status = "Starting…"
        self.error: str | None = None
        self.lock = threading.Lock()  # one generation per model; the Gradio queue orders the waiting ones
        self._thread: threading.Thread | None = None

    def start(self, background: bool = True) -> "ModelRuntime":
        if background:
            self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
            self._thread.start()
        else:
            self._load()
        return self

    def _say(self, message: str) -> None:
        self.status = message
        print(f"[load] {message}", flush=True)

    def _load(self) -> None:
        s = self.settings
        try:
            pipeline = load(s.model, device=s.device, dtype=s.dtype, quantization=s.quantization,
                            vision_tower=s.vision_tower, device_map=s.device_map, progress=self._say)  # fmt: skip
            self.recorded = recorded_accuracy(pipeline.source)  # read once, before `ready`: every page load shows it
            self.pipeline = pipeline
            self.status = "Ready"
        except TokenPackerError as e:
            self.error = str(e)
            self._say(f"Could not load the model: {e}")
        except Exception as e:  # keep serving the page with the reason rather than dying silently
            traceback.print_exc()
            self.error = f"{type(e).__name__}: {e}"
            self._say(f"Could not load the model: {self.error}")

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.pipeline is not None

    @property
    def ready(self) -> bool:
        return self.pipeline is not None

    def header(self) -> str:
        if self.pipeline is None:
            return f"**Model:** {self.status}"
        info = self.pipeline.describe()
        memory = info["memory_bytes"] / 2**20
        quant = info["quantization"]
        precision = info["dtype"] if quant == "none" else f"{info['dtype']}, LLM linears {quant}" + (" NF4" * (quant == "4bit"))
        line = (f"**Model:** `{info['model']}` · **device** {info['device']} · **precision** {precision} · "
               f"**weights** {memory:,.1f} MiB · **mode** {info['mode']} (s={info['scale_factor']}, "
               f"{info['tokens_per_view']} tokens/view, patch_num {info['patch_num']}) · context {info['context_length']}")  # fmt: skip
        record = self.recorded
        if record is None:
            return line
        per_type = " · ".join(f"{TYPE_NAMES.get(kind, kind)} {accuracy:.2f}"
                              for kind, accuracy in record["per_type"].items())
        return (f"{line}\n\n**Trained on synthetic scenes** (circles, squares and triangles in six colours): right on "
                f"{record['accuracy']:.1%} of {record['n']:,} held-out questions ({per_type}), as its `evaluation.txt` "
                "records. Other images and questions are outside what it learnt.")
