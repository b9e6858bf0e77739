"""One browser session's conversation: its image, its turns and the answers with their traces.

Kept in a per-session `gr.State`; nothing here is shared between sessions. The chat the page shows is
always derived from this object (`messages`), so the two cannot disagree.
"""

from dataclasses import dataclass, field

from PIL import Image

from tokenpacker import Answer, Turn

STOPPED_NOTE = " ⏹ (stopped)"


@dataclass
class ChatSession:
    image: Image.Image | None = None
    image_path: str | None = None  # the uploaded file, for showing it in the chat
    questions: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)  # answers[i] answers questions[i] once finished
    selected: int = -1  # the answer the "look inside" panel shows
    point: tuple[float, float] | None = None  # last clicked image point (original pixels)
    stop_requested: bool = False  # set by Stop; the decode loop checks it between tokens
    view_pictures: dict = field(default_factory=dict)  # tile limit -> what each view of `image` saw (inspector cache)

    @property
    def pending(self) -> str | None:
        """The question being answered, if any."""
        return self.questions[-1] if len(self.questions) > len(self.answers) else None

    def history(self) -> list[Turn]:
        """The conversation as model turns: answered turns, then the pending question."""
        turns = [Turn(q, a.text) for q, a in zip(self.questions, self.answers)]
        if self.pending is not None:
            turns.append(Turn(self.pending))
        return turns

    def ask(self, question: str, image: Image.Image | None = None, image_path: str | None = None) -> None:
        if image is not None:
            self.image, self.image_path = image, image_path
            self.view_pictures = {}
        self.questions.append(question)
        self.stop_requested = False  # a Stop pressed while this answer waits in the queue still counts

    def finish(self, answer: Answer) -> None:
        if self.pending is not None:
            self.answers.append(answer)
            self.selected = len(self.answers) - 1
            self.point = None

    def drop_pending(self) -> None:
        if self.pending is not None:
            self.questions.pop()

    def retract_last(self) -> str | None:
        """Remove the last answer (for Regenerate); its question becomes pending again."""
        if not self.answers:
            return None
        self.stop_requested = False
        self.answers.pop()
        self.selected = len(self.answers) - 1
        return self.questions[-1]

    @property
    def answer(self) -> Answer | None:
        return self.answers[self.selected] if 0 <= self.selected < len(self.answers) else None

    def messages(self, streaming: Answer | None = None) -> list[dict]:
        """Chat messages (Gradio "messages" format) for the page."""
        out = []
        if self.image_path:
            out.append({"role": "user", "content": {"path": self.image_path}})
        for i, question in enumerate(self.questions):
            out.append({"role": "user", "content": question})
            answer = self.answers[i] if i < len(self.answers) else streaming
            if answer is not None:
                out.append({"role": "assistant", "content": describe(answer)})
        return out


def describe(answer: Answer) -> str:
    text = answer.text or ("…" if not answer.done else "(empty answer)")
    if answer.done and answer.finish_reason == "stopped":
        text += STOPPED_NOTE
    return text
