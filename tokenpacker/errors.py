"""Typed errors. Each message is one sentence a user can act on; the CLI and the app print it as is."""


class TokenPackerError(Exception):
    """Base class: anything the library reports to a user."""


class ModelNotFoundError(TokenPackerError):
    """A model, vision tower or tokenizer could not be found where it was looked for."""


class CheckpointFormatError(TokenPackerError):
    """Files were found but are not a checkpoint this library can run."""


class ImageError(TokenPackerError):
    """An image could not be read or is unusable."""


class PromptError(TokenPackerError):
    """A question or conversation is unusable (empty, too long, wrong order)."""


class ContextLengthError(TokenPackerError):
    """The request cannot fit the language model's context window even after reducing it."""


class GenerationSettingsError(TokenPackerError):
    """A generation setting is out of range."""
