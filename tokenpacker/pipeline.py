"""TokenPackerPipeline: one loaded model, its tokenizer and image processor, answering questions.

    pipe = tokenpacker.load("path/or/hub-id")
    answer = pipe.ask(image, "What is in the image?")
    for partial in pipe.stream(image, turns, capture=True): ...

A request is prepared (prompt, token ids, views, layout), the image is encoded once, the visual
embeddings are spliced in, and the decode loop streams tokens. With `capture=True` the answer carries a
`Trace` (see trace.py): layout, region-to-point weights and answer attention.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .capture import AttentionRecorder
from .configuration import IMAGE_TOKEN_INDEX
from .conversation import Turn, build_prompt
from .errors import ContextLengthError, PromptError
from .generation import GeneratedToken, SamplingSettings, decode
from .image_processing import ImageProcessor, PreparedImage
from .layout import VisualLayout, build_layout
from .modeling import TokenPackerForCausalLM
from .partition import Partition, choose_partition, num_visual_tokens
from .tokenizer import LlamaTokenizer
from .trace import Trace

MAX_QUESTION_CHARS = 8000


@dataclass
class Request:
    """Everything about one prompt before the model runs."""

    turns: list[Turn]
    prompt: str
    input_ids: list[int]  # IMAGE_TOKEN_INDEX where the visual embeddings go
    image: PreparedImage | None
    layout: VisualLayout | None
    notices: list[str] = field(default_factory=list)  # what was changed to make the request fit

    @property
    def num_visual_tokens(self) -> int:
        return self.layout.length if self.layout else 0

    @property
    def sequence_length(self) -> int:
        return len(self.input_ids) - (1 if self.layout else 0) + self.num_visual_tokens


@dataclass
class Answer:
    """An answer as it streams; `done` is True on the last update."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    alternatives: list[list[tuple[int, float]]] = field(default_factory=list)
    num_visual_tokens: int = 0
    grid: tuple[int, int] | None = None  # HD rows x cols; (1, 1) in pad mode; None without an image
    prompt_length: int = 0  # LLM sequence length of the prompt, visual embeddings included
    timings: dict[str, float] = field(default_factory=dict)  # vision_s, projector_s, prefill_s, decode_s, ...
    finish_reason: str | None = None  # "eos", "length" or "stopped"
    notices: list[str] = field(default_factory=list)
    trace: Trace | None = None
    done: bool = False

    def to_json(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "logprobs": self.logprobs,
                "num_visual_tokens": self.num_visual_tokens, "grid": list(self.grid) if self.grid else None,
                "timings": self.timings, "finish_reason": self.finish_reason, "notices": self.notices}  # fmt: skip


class TokenPackerPipeline:
    def __init__(self, model: TokenPackerForCausalLM, tokenizer: LlamaTokenizer, source: str = "",
                 quantization: str | None = None):  # fmt: skip
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.image_processor = ImageProcessor(model.config)
        self.source = source
        self.quantization = quantization

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def context_length(self) -> int:
        return self.config.text_config.max_position_embeddings

    def describe(self) -> dict:
        """What is running: for the page header and `--json` outputs."""
        return {
            "model": self.source, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
            "quantization": self.quantization or "none", "memory_bytes": self.model.get_memory_footprint(),
            "mode": "HD slice" if self.config.image_aspect_ratio == "slice" else "pad",
            "scale_factor": self.config.scale_factor, "tokens_per_view": self.config.tokens_per_view,
            "patch_num": self.config.patch_num, "context_length": self.context_length,
        }  # fmt: skip

    def save_pretrained(self, directory: str | Path) -> None:
        """The project's own format: config.json + model.safetensors + the tokenizer files."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    # -- preparing a request ------------------------------------------------------------------------------
    def prepare(self, image: Image.Image | None, turns: list[Turn] | str, max_tiles: int | None = None,
                reserve: int = 0) -> Request:  # fmt: skip
        """Prompt ids, views and layout for `turns` (or one question), fitting the context window:
        with `reserve` tokens left for the answer, HD tiles are reduced and then the oldest turns dropped,
        each change recorded in `notices`. Raises ContextLengthError when even that does not fit."""
        turns = [Turn(turns)] if isinstance(turns, str) else list(turns)
        for turn in turns:
            if not turn.question.strip():
                raise PromptError("the question is empty")
            if len(turn.question) > MAX_QUESTION_CHARS:
                raise PromptError(f"the question is {len(turn.question)} characters long; the limit is {MAX_QUESTION_CHARS}")
        notices = []
        budget = self.context_length - reserve
        if image is not None and self.config.image_aspect_ratio == "slice":
            max_tiles = self._plan_tiles(image, turns[-1], max_tiles, budget, notices)
        prepared = self.image_processor(image, max_tiles=max_tiles) if image is not None else None
        visual = self._visual_length(prepared)

        dropped = 0
        while True:
            prompt = build_prompt(turns, with_image=prepared is not None)
            input_ids = self.tokenizer.encode_with_image(prompt)
            length = len(input_ids) - (1 if prepared else 0) + visual
            if length <= budget:
                break
            if len(turns) == 1:
                raise ContextLengthError(
                    f"the prompt needs {length} tokens ({visual} visual) but the model's context is "
                    f"{self.context_length} tokens with {reserve} kept for the answer; ask a shorter question"
                    + (" or allow fewer tiles" if prepared is not None else "")
                )
            turns = turns[1:]
            dropped += 1
        if dropped:
            notices.append(f"The {dropped} oldest turn(s) of the conversation were left out to fit the context.")

        layout = None
        if prepared is not None:
            start = input_ids.index(IMAGE_TOKEN_INDEX)
            layout = build_layout(prepared.image_size, prepared.views, prepared.mode, prepared.grid,
                                  self.config.point_grid, start)  # fmt: skip
        return Request(turns, prompt, input_ids, prepared, layout, notices)

    def _plan_tiles(self, image: Image.Image, turn: Turn, max_tiles: int | None, budget: int, notices: list[str]) -> int | None:
        """The largest tile limit at which the image and the current question fit `budget` tokens."""
        text = len(self.tokenizer.encode_with_image(build_prompt([Turn(turn.question)], with_image=True))) - 1
        width, height = image.size

        def plan(limit: int | None) -> Partition:
            return choose_partition(height, width, self.config.patch_num, self.config.view_size, limit)

        def tokens(p: Partition) -> int:
            return num_visual_tokens(p.rows, p.cols, self.config.tokens_per_view)

        partition = chosen = plan(max_tiles)
        while tokens(partition) + text > budget and partition.num_tiles > 1:
            partition = plan(partition.num_tiles - 1)
        if partition.num_tiles == chosen.num_tiles:
            return max_tiles
        notices.append(
            f"The image was cut into {partition.rows}x{partition.cols} tiles instead of {chosen.rows}x{chosen.cols} "
            f"({tokens(partition)} visual tokens instead of {tokens(chosen)}) to fit the {self.context_length}-token context."
        )
        return partition.num_tiles

    def _visual_length(self, prepared: PreparedImage | None) -> int:
        if prepared is None:
            return 0
        if prepared.mode == "pad":
            return self.config.tokens_per_view
        return num_visual_tokens(prepared.partition.rows, prepared.partition.cols, self.config.tokens_per_view)

    # -- answering ----------------------------------------------------------------------------------------
    def stream(self, image: Image.Image | None, turns: list[Turn] | str, settings: SamplingSettings | None = None,
               max_tiles: int | None = None, capture: bool = False,
               should_stop: Callable[[], bool] | None = None) -> Iterator[Answer]:  # fmt: skip
        """Yield the growing answer after every token; the last one has `done=True`."""
        settings = (settings or SamplingSettings()).validate()
        request = self.prepare(image, turns, max_tiles, reserve=settings.max_new_tokens)
        answer = Answer(num_visual_tokens=request.num_visual_tokens, prompt_length=request.sequence_length,
                        grid=request.image.grid if request.image else None,
                        notices=list(request.notices))  # fmt: skip

        with torch.inference_mode():
            visual_embeds, region_weights = None, None
            if request.image is not None:
                features = self.model.get_image_features(request.image.pixel_values, capture, answer.timings)
                grid = request.image.grid if request.image.mode == "slice" else None
                visual_embeds = self.model.embed_visual_sequence(features.tokens, grid)
                region_weights = features.region_weights
            ids = torch.tensor(request.input_ids)
            embeds = self.model.build_inputs_embeds(ids, visual_embeds)

        recorder = None
        if capture and request.layout is not None:
            recorder = AttentionRecorder(self.config.text_config.num_hidden_layers, request.layout.positions,
                                         request.layout.separator_positions, settings.max_new_tokens)  # fmt: skip
            answer.trace = Trace.start(request, region_weights, self.tokenizer)

        # The trace grows as tokens stream: every token on CPU (views, no copy), every 8th on a GPU.
        refresh = 1 if self.device.type == "cpu" else 8
        decode_start = None
        for token in decode(self.model, embeds, settings, self.tokenizer.eos_token_id, recorder, should_stop):
            self._append(answer, token)
            if decode_start is None:
                answer.timings["prefill_s"] = token.seconds
                answer.timings["time_to_first_token_s"] = (
                    answer.timings.get("vision_s", 0.0) + answer.timings.get("projector_s", 0.0) + token.seconds
                )
                decode_start = time.perf_counter()
            if answer.trace is not None and len(answer.token_ids) % refresh == 0:
                answer.trace.update(answer.token_ids, recorder.result())
            yield answer

        decoded = len(answer.token_ids) - 1
        if decode_start is not None and decoded > 0:
            answer.timings["decode_s"] = time.perf_counter() - decode_start
            answer.timings["decode_tokens_per_s"] = decoded / answer.timings["decode_s"]
        if answer.token_ids and answer.token_ids[-1] == self.tokenizer.eos_token_id:
            answer.finish_reason = "eos"
        elif len(answer.token_ids) >= settings.max_new_tokens:
            answer.finish_reason = "length"
        else:
            answer.finish_reason = "stopped"
        if answer.trace is not None:
            answer.trace.update(answer.token_ids, recorder.result())
            answer.trace.captured_bytes = recorder.nbytes
        answer.done = True
        yield answer

    def _append(self, answer: Answer, token: GeneratedToken) -> None:
        answer.token_ids.append(token.token_id)
        answer.logprobs.append(token.logprob)
        answer.alternatives.append(token.alternatives)
        answer.text = self.tokenizer.decode(answer.token_ids).strip()

    def ask(self, image: Image.Image | None, question: list[Turn] | str, **kwargs) -> Answer:
        """Answer one question (or a conversation) and return the finished answer."""
        answer = None
        for answer in self.stream(image, question, **kwargs):
            pass
        return answer
