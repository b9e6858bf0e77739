"""The vicuna_v1 chat template used by LLaVA-1.5 and TokenPacker."""

from dataclasses import dataclass

from .errors import PromptError
from .tokenizer import IMAGE_PLACEHOLDER

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = ("USER", "ASSISTANT")
TURN_SEPARATOR = " "
STOP_STRING = "</s>"


@dataclass
class Turn:
    question: str
    answer: str | None = None  # None for the turn being answered


def build_prompt(turns: list[Turn], with_image: bool = True) -> str:
    """`SYSTEM USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:`. The image goes with the first question."""
    if not turns:
        raise PromptError("there is no question to answer")
    if any(t.answer is None for t in turns[:-1]):
        raise PromptError("only the last turn of a conversation can be unanswered")
    prompt = SYSTEM_PROMPT + TURN_SEPARATOR
    for i, turn in enumerate(turns):
        if IMAGE_PLACEHOLDER in turn.question:
            raise PromptError(f"the text {IMAGE_PLACEHOLDER!r} is reserved for the image; please rephrase the question")
        question = f"{IMAGE_PLACEHOLDER}\n{turn.question}" if i == 0 and with_image else turn.question
        prompt += f"{ROLES[0]}: {question}{TURN_SEPARATOR}"
        if turn.answer is None:
            prompt += f"{ROLES[1]}:"
        else:
            prompt += f"{ROLES[1]}: {turn.answer}{STOP_STRING}"
    return prompt
