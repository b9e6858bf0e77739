"""Command line: `python -m tokenpacker ask ...` (and the default model's evaluation).

Errors are one line on stderr and a non-zero exit status; never a traceback for a user mistake.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

from .errors import TokenPackerError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (the full usage stays on --help)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint directory or Hugging Face Hub id (default: the embedded default model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--quantization", default=None, choices=["4bit", "8bit"])
    parser.add_argument("--vision-tower", default=None, help="CLIP directory or hub id overriding the config's mm_vision_tower")
    parser.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                        help="spread the model over several GPUs (accelerate)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tokenpacker", description="Run the TokenPacker MLLM.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ask = commands.add_parser("ask", help="answer one question about one image")
    _add_model_options(ask)
    ask.add_argument("--image", required=True, help="image file")
    ask.add_argument("--question", required=True)
    ask.add_argument("--max-new-tokens", type=_positive_int, default=256)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--seed", type=int, default=0)
    ask.add_argument("--max-tiles", type=_positive_int, default=None, help="HD mode: at most this many tiles")
    ask.add_argument("--json", dest="json_out", default=None, help="also write the answer and its trace as JSON here")

    evaluate = commands.add_parser("evaluate-default", help="accuracy of the embedded default model on fresh scenes")
    _add_model_options(evaluate)
    evaluate.add_argument("--split", default="standard", choices=["standard", "small"])
    evaluate.add_argument("--n", type=_positive_int, default=200)
    evaluate.add_argument("--max-tiles", type=_positive_int, default=None)
    evaluate.add_argument("--seed", type=int, default=None, help="scene seed (default: the held-out seed)")
    evaluate.add_argument("--grounding", action="store_true", help="measure grounding on 'What color is the {shape}?'")
    return parser


def _load(args):
    from .loading import load

    return load(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                vision_tower=args.vision_tower, device_map=args.device_map)  # fmt: skip


def run_ask(args) -> int:
    from .generation import SamplingSettings
    from .image_io import open_image

    image = open_image(args.image)
    pipeline = _load(args)
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, seed=args.seed)  # fmt: skip
    answer = pipeline.ask(image, args.question, settings=settings, max_tiles=args.max_tiles, capture=args.json_out is not None)
    for notice in answer.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(answer.text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(answer_json(answer), indent=1))
    return 0


def answer_json(answer) -> dict:
    """The `--json` document: the answer, and for scripts the layout and attention of its trace."""
    data = answer.to_json()
    trace = answer.trace
    if trace is not None:
        data["layout"] = trace.layout.records()
        data["views"] = [view.to_dict() for view in trace.layout.views]
        data["separators"] = [{"pos": pos, "kind": kind} for pos, kind in trace.layout.separators]
        G, s = trace.layout.point_grid, trace.scale_factor
        region = trace.region_mean().reshape(len(trace.layout.views), G, G, s * s)  # (V, G, G, s*s)
        data["region_attention"] = [_rounded(view) for view in region]
        data["answer_attention"] = _rounded(trace.attention_mean.mean(axis=0))  # (T, N): layers and heads averaged
        data["partition"] = {"candidates": trace.partition.candidates, "visual_tokens": trace.partition.visual_tokens,
                             "mlp_visual_tokens": trace.partition.mlp_visual_tokens}  # fmt: skip
    return data


def _rounded(array) -> list:
    return [[round(float(x), 7) for x in row] if hasattr(row, "__len__") and not hasattr(row[0], "__len__")
            else _rounded(row) for row in array]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    try:
        if args.command == "ask":
            return run_ask(args)
        if args.command == "evaluate-default":
            from .synthetic.evaluate import run_evaluation

            return run_evaluation(args)
    except TokenPackerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try --quantization 4bit, a smaller model or fewer --max-tiles", file=sys.stderr)
        return 1
    return 2
