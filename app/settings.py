"""App settings from command-line flags, with environment variables as defaults (for Hugging Face Spaces)."""

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class AppSettings:
    model: str | None = None  # None: the embedded default model
    quantization: str | None = None
    device: str = "auto"
    dtype: str | None = None
    vision_tower: str | None = None
    device_map: str | None = None  # "auto": spread a large model over several GPUs (accelerate)
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    max_file_size: str = "20mb"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse(argv: list[str] | None = None) -> AppSettings:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="app.py", description="TokenPacker Studio: chat with an image and see inside.")
    parser.add_argument("--model", default=env("TOKENPACKER_MODEL") or None,
                        help="checkpoint directory or hub id (env TOKENPACKER_MODEL; default: the embedded model)")
    parser.add_argument("--quantization", choices=["4bit", "8bit"], default=env("TOKENPACKER_QUANTIZATION") or None,
                        help="bitsandbytes quantisation of the LLM (env TOKENPACKER_QUANTIZATION)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=env("TOKENPACKER_DEVICE", "auto"))
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=env("TOKENPACKER_DTYPE") or None)
    parser.add_argument("--vision-tower", default=env("TOKENPACKER_VISION_TOWER") or None)
    parser.add_argument("--device-map", choices=["auto", "balanced", "sequential"], default=env("TOKENPACKER_DEVICE_MAP") or None,
                        help="spread the model over several GPUs (env TOKENPACKER_DEVICE_MAP)")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (env GRADIO_SERVER_NAME; Spaces sets 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", env("PORT", "7860"))))
    parser.add_argument("--share", action="store_true", default=_env_flag("TOKENPACKER_SHARE"),
                        help="create a public gradio.live link (off by default)")
    parser.add_argument("--max-file-size", default=env("TOKENPACKER_MAX_FILE_SIZE", "20mb"))
    args = parser.parse_args(argv)
    return AppSettings(args.model, args.quantization, args.device, args.dtype, args.vision_tower, args.device_map,
                       args.host, args.port, args.share, args.max_file_size)  # fmt: skip
