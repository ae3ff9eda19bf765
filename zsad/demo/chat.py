"""Questions about the selected image: answered by :mod:`zsad.dialogue` from the image's decided result (the
grounded rules), or by a vision-language model when ``zsad demo --lvlm`` was given."""

from __future__ import annotations

import threading
from collections.abc import Callable

from zsad.demo.config import DemoConfig
from zsad.demo.kept import KeptImage
from zsad.demo.memory import Costs, MemoryBudget
from zsad.demo.sessions import Session, SessionExpired
from zsad.errors import UsageError

MAX_QUESTION_CHARS = 500


class Chat:
    """The chat of each session's images; one LVLM generation at a time across visitors."""

    def __init__(self, budget: MemoryBudget, costs: Callable[[], Costs]) -> None:
        self.budget = budget
        self.costs = costs
        self.responder = None  # None: the grounded rules answer
        self._responder_lock = threading.Lock()

    def load_lvlm(self, config: DemoConfig) -> None:
        """Load ``config.lvlm`` (with its adapter) to answer instead of the grounded rules."""
        try:
            from zsad.dialogue.lvlm import LvlmResponder
        except ImportError as exc:
            raise UsageError(f"--lvlm needs the dialogue extra (pip install 'zsad[dialogue]'): {exc}") from None

        self.responder = LvlmResponder.load(config.lvlm, adapter=config.lvlm_adapter, device=config.device,
                                            precision=config.precision)

    @staticmethod
    def select(session: Session | None, index: int) -> list[dict[str, str]]:
        """Make gallery image ``index`` (counted over scored images) the one the chat is about."""
        if session is None:
            return []
        scored = [i for i, item in enumerate(session.items) if item.kept is not None]
        if 0 <= index < len(scored):
            session.selected = scored[index]
        return session.messages.get(session.selected, [])

    @staticmethod
    def label(session: Session | None) -> str:
        """The chat box's title: which image the questions are about."""
        if session is None or not session.scored():
            return "Ask about the selected image"
        index = session.selected
        if not 0 <= index < len(session.items) or session.items[index].kept is None:
            index = next(i for i, item in enumerate(session.items) if item.kept is not None)
        return f"Ask about {session.items[index].name} (click another image to switch)"

    def ask(self, session: Session | None, question: str) -> list[dict[str, str]]:
        """Answer ``question`` about the selected image; returns the chat of that image."""
        if session is None or not session.scored():
            raise UsageError("score an image first, then ask about it")
        with session.lock:
            if session.closed:
                raise SessionExpired()
            if not 0 <= session.selected < len(session.items) or session.items[session.selected].kept is None:
                session.selected = next(i for i, item in enumerate(session.items) if item.kept is not None)
            index = session.selected
            messages = session.messages.setdefault(index, [])
            question = " ".join((question or "").split())[:MAX_QUESTION_CHARS]
            if not question:
                return messages
            conversation = session.chats.get(index)
            if conversation is None:
                kept = session.items[index].kept
                with self.budget.reserve(self.costs().render([kept.pixels])):
                    conversation = self._conversation(kept, session)
                session.chats[index] = conversation
        if self.responder is not None:
            with self._responder_lock:  # one LVLM generation at a time
                answer = conversation.ask(question)
        else:
            answer = conversation.ask(question)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": str(answer)}]
        return messages

    def _conversation(self, kept: KeptImage, session: Session):
        """A conversation grounded in the full-resolution decision; an LVLM sees the display-size pictures."""
        from zsad.decisions import Thresholds, decide
        from zsad.dialogue import Conversation
        from zsad.visualize import overlay

        result = decide(kept.raw(), Thresholds(session.threshold))
        conversation = Conversation.from_result(result, class_name=session.class_name, responder=self.responder)
        if self.responder is not None:
            conversation.image = kept.picture_image()
            conversation.overlay = overlay(conversation.image, kept.heat_map(), kept.display_mask(result.pred_mask))
        return conversation
