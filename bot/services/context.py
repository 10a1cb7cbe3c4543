"""Per-chat conversation memory: what earlier turns (and which images) go with the next question."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.models import ConversationKey, PreparedImage, PromptMessage, Turn
from bot.storage.base import ConversationStore

IMAGE_OMITTED_NOTE = "[an image was shown here earlier; it is no longer attached]"


@dataclass(frozen=True, slots=True)
class ContextLimits:
    max_turns: int = 20
    max_images: int = 3
    idle_seconds: float = 6 * 3600
    max_images_per_request: int = 1


class ConversationContext:
    def __init__(self, store: ConversationStore, limits: ContextLimits, *, system_prompt: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._limits = limits
        self._system_prompt = system_prompt
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    @property
    def max_images_per_request(self) -> int:
        return self._limits.max_images_per_request

    async def history(self, key: ConversationKey) -> list[Turn]:
        """Earlier turns of the live conversation; `max_turns` question/answer pairs at most."""
        turns = await self._store.recent_turns(key, limit=2 * self._limits.max_turns,
                                               idle_after=self._limits.idle_seconds, now=self._clock())
        while turns and turns[0].role == "assistant":
            turns = turns[1:]
        return turns

    async def keep_image(self, image: PreparedImage) -> None:
        await self._store.save_image(image, now=self._clock())

    async def cached_image(self, image_id: str) -> PreparedImage | None:
        return (await self._store.load_images([image_id])).get(image_id)

    async def prompt(self, history: Sequence[Turn], question: Turn, new_images: Sequence[PreparedImage], *,
                     keep_turns: int | None = None, images_per_request: int | None = None) -> list[PromptMessage]:
        """History plus question, with the most recent images attached and older ones noted as omitted.

        `keep_turns` sends only the last turns (the context was too long), yet still the newest images: those of
        dropped turns go with the first turn kept. `images_per_request`: the chat's model's limit, if not the default.
        """
        per_request = images_per_request or self._limits.max_images_per_request
        attached_now = list(new_images)[:per_request]
        budget = min(self._limits.max_images, per_request - len(attached_now))
        wanted = _newest_image_ids(history, budget)
        stored = await self._store.load_images(wanted)
        newest_turn_of = {image_id: index for index, turn in enumerate(history) for image_id in turn.image_ids}
        entries = [
            (turn, [stored[image_id] for image_id in turn.image_ids
                    if image_id in stored and newest_turn_of[image_id] == index])
            for index, turn in enumerate(history)
        ]
        entries.append((question, attached_now))
        if keep_turns is not None and len(entries) - 1 > keep_turns:
            cut = len(entries) - 1 - keep_turns
            carried = [image for _, images in entries[:cut] for image in images]
            entries = entries[cut:]
            entries[0] = (entries[0][0], carried + entries[0][1])
        messages = [PromptMessage(role="system", text=self._system_prompt)] if self._system_prompt else []
        messages += [_message_for(turn, tuple(images)) for turn, images in entries]
        return _merge_same_roles(messages)

    async def record(self, key: ConversationKey, *turns: Turn) -> None:
        for turn in turns:
            await self._store.add_turn(key, turn)

    async def reset(self, key: ConversationKey) -> None:
        await self._store.clear(key)

    async def prune(self) -> int:
        return await self._store.prune(older_than=self._clock() - self._limits.idle_seconds)


def _newest_image_ids(history: Sequence[Turn], budget: int) -> list[str]:
    chosen: list[str] = []
    for turn in reversed(history):
        for image_id in reversed(turn.image_ids):
            if len(chosen) >= budget:
                return chosen
            if image_id not in chosen:
                chosen.append(image_id)
    return chosen


def _message_for(turn: Turn, images: tuple[PreparedImage, ...]) -> PromptMessage:
    text = turn.text
    if turn.author and turn.role == "user":
        text = f"{turn.author}: {text}"
    if turn.image_ids and not images:
        text = f"{IMAGE_OMITTED_NOTE}\n{text}"
    return PromptMessage(role=turn.role, text=text, images=images)


def _merge_same_roles(messages: list[PromptMessage]) -> list[PromptMessage]:
    """A question that got no answer (an error) is followed by another; most providers want roles to alternate."""
    merged: list[PromptMessage] = []
    for message in messages:
        if merged and merged[-1].role == message.role == "user":
            previous = merged[-1]
            merged[-1] = PromptMessage(role="user", text=f"{previous.text}\n\n{message.text}",
                                       images=previous.images + message.images)
        else:
            merged.append(message)
    return merged
