"""TokenPacker: run and look inside the TokenPacker multimodal LLM (arXiv 2407.02392)."""

from .capture import AttentionRecorder, CapturedAttention
from .configuration import TokenPackerConfig
from .conversation import Turn, build_prompt
from .errors import (
    CheckpointFormatError,
    ContextLengthError,
    GenerationSettingsError,
    ImageError,
    ModelNotFoundError,
    PromptError,
    TokenPackerError,
)
from .generation import SamplingSettings
from .image_io import open_image
from .image_processing import ImageProcessor, PreparedImage
from .layout import VisualLayout
from .loading import load
from .modeling import TokenPackerForCausalLM
from .partition import choose_partition, num_visual_tokens
from .pipeline import Answer, Request, TokenPackerPipeline
from .projector import TokenPackerProjector
from .tokenizer import LlamaTokenizer
from .trace import Trace

__all__ = [
    "Answer", "AttentionRecorder", "CapturedAttention", "CheckpointFormatError", "ContextLengthError",
    "GenerationSettingsError", "ImageError", "ImageProcessor", "LlamaTokenizer", "ModelNotFoundError",
    "PreparedImage", "PromptError", "Request", "SamplingSettings", "TokenPackerConfig", "TokenPackerError",
    "TokenPackerForCausalLM", "TokenPackerPipeline", "TokenPackerProjector", "Trace", "Turn", "VisualLayout",
    "build_prompt", "choose_partition", "load", "num_visual_tokens", "open_image",
]  # fmt: skip

