"""Start TokenPacker Studio: `python app.py [--model DIR_OR_HUB_ID] [--quantization 4bit] [--host H --port P]`.

Without --model it serves the embedded default model (assets/default-model). Every flag has an environment
variable (TOKENPACKER_MODEL, TOKENPACKER_QUANTIZATION, TOKENPACKER_DEVICE, GRADIO_SERVER_NAME, ...) so the
same file runs on Hugging Face Spaces.
"""

import sys

from app.runtime import ModelRuntime
from app.settings import parse
from app.ui import ASSETS, CSS, build


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    runtime = ModelRuntime(settings).start(background=True)
    demo = build(runtime)
    demo.queue(default_concurrency_limit=4, max_size=64)
    demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share,
                max_file_size=settings.max_file_size, allowed_paths=[str(ASSETS / "examples")], css=CSS,
                show_error=False)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
