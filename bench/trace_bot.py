"""The bot with a stopwatch: `python -m bench.trace_bot` runs `python -m bot` with timestamps at each step an update
takes on its way to the provider request (`python -m bench.run --trace` uses it).

Wall time, not CPU time: each step's duration includes whatever else the event loop ran meanwhile, which is what
the overhead figure measures too. Timestamps are `time.monotonic()` (CLOCK_MONOTONIC, one clock for the whole
machine), so they line up with the fakes' timestamps in the benchmark process. Nothing in bot/ changes: the steps
are wrapped here, at start-up, by module and attribute name; a step that no longer exists under its name is
reported on stderr and left out. The update a step belongs to is carried by a context variable set when its
task starts (tasks it creates inherit it); the image worker's part is matched by image id.

At exit the events go to the JSON file named by BENCH_TRACE_OUT. `summarise()` turns them, with the fakes'
timestamps, into the time between consecutive milestones (MILESTONES), per update.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Event = tuple[int | None, str, float, float, str | None]  # update_id, step, start, end, image id

_update: contextvars.ContextVar[int | None] = contextvars.ContextVar("bench_update", default=None)
_events: list[Event] = []

# (module, attribute path, step): async callables unless listed in SYNC_STEPS.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("aiogram.client.bot", "Bot.get_updates", "get_updates"),
    ("bot.intake", "Intake.accept", "accept"),
    ("bot.services.inbox", "Inbox.receive", "inbox_receive"),
    ("bot.intake", "Intake._handle", "handle"),
    ("bot.services.answering", "AnswerService.answer", "answer"),
    ("bot.services.usage", "UsageGuard.admit", "admit"),
    ("bot.services.inbox", "Inbox.asking", "asking"),
    ("bot.services.streaming", "ReplyStreamer.open", "open_reply"),
    ("bot.services.model_choice", "ModelChoice.current", "model"),
    ("bot.services.context", "ConversationContext.history", "history"),
    ("bot.services.context", "ConversationContext.cached_image", "cached_image"),
    ("bot.services.downloads", "ImageFetcher._file_path", "get_file"),
    ("bot.services.downloads", "ImageFetcher._download", "download"),
    ("bot.services.downloads", "prepare_image_async", "prepare"),
    ("bot.services.images", "passthrough", "passthrough"),
    ("bot.services.images", "prepare_image", "prepare_in_thread"),
    ("bot.services.context", "ConversationContext.keep_image", "keep_image"),
    ("bot.services.context", "ConversationContext.prompt", "prompt"),
    ("bot.clients.vision", "build_body", "build_body"),
    ("bot.clients.vision", "encode_body", "encode_body"),
    ("bot.clients.vision", "VisionClient._send", "send"),
    ("asyncio", "to_thread", "to_thread"),
)
SYNC_STEPS = frozenset({"passthrough", "prepare_in_thread", "build_body", "encode_body"})

# The path in order: (milestone, step, "start" | "end"), the first of each per update. "delivered" and
# "provider_request" come from the fakes. Keeping the prepared image is off the path (a task of its own).
MILESTONES: tuple[tuple[str, str, str], ...] = (
    ("update delivered (fake)", "delivered", "at"),
    ("getUpdates answer parsed", "get_updates", "end"),
    ("intake.accept starts", "accept", "start"),
    ("update recorded in the inbox", "inbox_receive", "end"),
    ("update task starts (after hold_update)", "handle", "start"),
    ("handler: AnswerService.answer starts", "answer", "start"),
    ("usage admitted", "admit", "end"),
    ("inbox: asking", "asking", "end"),
    ("reply opened", "open_reply", "end"),
    ("model chosen", "model", "end"),
    ("history read", "history", "end"),
    ("image cache looked up", "cached_image", "end"),
    ("getFile sent", "get_file", "start"),
    ("getFile answered", "get_file", "end"),
    ("download starts (in-flight slot)", "download", "start"),
    ("download done", "download", "end"),
    ("checked: sent as downloaded? (on the loop)", "passthrough", "end"),
    ("image worker starts", "prepare_in_thread", "start"),
    ("image worker done", "prepare_in_thread", "end"),
    ("prepared image back on the loop", "prepare", "end"),
    ("prompt built", "prompt", "end"),
    ("request body built", "build_body", "end"),
    ("request body encoded (JSON)", "encode_body", "end"),
    ("httpx request starts", "send", "start"),
    ("provider has read the request (fake)", "provider_request", "at"),
)


def _update_of(step: str, args: tuple[Any, ...]) -> int | None:
    if step in ("accept", "handle") and len(args) > 1:
        return getattr(args[1], "update_id", None)
    if step == "inbox_receive" and len(args) > 1 and isinstance(args[1], int):
        return args[1]
    return _update.get()


def _wrap_async(step: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        update = _update_of(step, args)
        if step == "handle":
            _update.set(update)
        image = args[1] if step == "prepare" and len(args) > 1 else None
        start = time.monotonic()
        try:
            result = await function(*args, **kwargs)
        except BaseException:
            _events.append((update, step, start, time.monotonic(), image))
            raise
        end = time.monotonic()
        if step == "get_updates" and isinstance(result, list):  # the updates this answer carried
            _events.extend((getattr(item, "update_id", None), step, start, end, None) for item in result)
        else:
            _events.append((update, step, start, end, image))
        return result

    return timed


def _wrap_sync(step: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            image = args[1] if step == "prepare_in_thread" and len(args) > 1 else None
            _events.append((_update.get(), step, start, time.monotonic(), image))  # list.append: thread-safe

    return timed


def install(steps: Iterable[tuple[str, str, str]] = STEPS) -> list[str]:
    """Wraps each step in place; returns the steps that could not be found."""
    missing = []
    for module_name, path, step in steps:
        try:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            function = getattr(owner, name)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{path}")
            continue
        wrap = _wrap_sync if step in SYNC_STEPS else _wrap_async
        setattr(owner, name, wrap(step, function))
    return missing


def dump(path: Path) -> None:
    path.write_text(json.dumps(_events), encoding="utf-8")


Marks = dict[tuple[str, str], float]  # (step, "start" | "end" | "at") -> moment, the first of each


def summarise(paths: Iterable[Path], delivered: dict[int, float], provider_request: dict[int, float]
              ) -> dict[str, Any]:
    """Per milestone, the time since the previous milestone reached (p50 / p95 / n over updates, ms), and the
    hops to a worker thread aiogram made for synchronous filters (asyncio.to_thread), per update."""
    steps, images, in_thread, hops = _read(paths)
    for update, marks in steps.items():
        ran = [in_thread[image] for image in images.get(update, []) if image in in_thread]
        if ran:
            marks[("prepare_in_thread", "start")], marks[("prepare_in_thread", "end")] = ran[0]
        if update in delivered:
            marks[("delivered", "at")] = delivered[update]
        if update in provider_request:
            marks[("provider_request", "at")] = provider_request[update]
    segments: dict[str, list[float]] = {}
    for marks in steps.values():
        if ("delivered", "at") not in marks or ("provider_request", "at") not in marks:
            continue
        previous: float | None = None
        for label, step, phase in MILESTONES:
            moment = marks.get((step, phase))
            if moment is None:
                continue
            if previous is not None:
                segments.setdefault(label, []).append(moment - previous)
            previous = moment
    answered = [update for update, marks in steps.items() if ("provider_request", "at") in marks]
    return {
        "milestones_ms": {label: _quantiles(segments.get(label, [])) for label, _, _ in MILESTONES[1:]},
        "to_thread_hops_per_update": _quantiles([len(hops.get(update, [])) for update in answered], scale=1),
        "to_thread_wait_per_update_ms": _quantiles([sum(hops.get(update, [])) for update in answered]),
        "image_worker_run_ms": _quantiles([end - start for start, end in in_thread.values()]),
    }


def _read(paths: Iterable[Path]) -> tuple[dict[int, Marks], dict[int, list[str]], dict[str, tuple[float, float]],
                                          dict[int, list[float]]]:
    """Per update its first start and end of each step, the images it had prepared and its to_thread hops; per
    image id, when the worker prepared it."""
    steps: dict[int, Marks] = {}
    images: dict[int, list[str]] = {}
    in_thread: dict[str, tuple[float, float]] = {}
    hops: dict[int, list[float]] = {}
    for path in paths:
        for update, step, start, end, image in json.loads(path.read_text(encoding="utf-8")):
            if step == "prepare_in_thread":
                if image is not None:
                    in_thread.setdefault(image, (start, end))
                continue
            if update is None:
                continue
            if step == "to_thread":
                hops.setdefault(update, []).append(end - start)
            if step == "prepare" and image is not None:
                images.setdefault(update, []).append(image)
            marks = steps.setdefault(update, {})
            marks.setdefault((step, "start"), start)
            marks.setdefault((step, "end"), end)
    return steps, images, in_thread, hops


def table(summary: dict[str, Any]) -> str:
    rows = [("since the previous milestone, ms", "p50", "p95", "n")]
    for label, value in summary["milestones_ms"].items():
        rows.append((label, _cell(value["p50"]), _cell(value["p95"]), str(value["n"])))
    for label, key in (("aiogram to_thread hops per update", "to_thread_hops_per_update"),
                       ("  their wall time per update, ms", "to_thread_wait_per_update_ms"),
                       ("image worker run per photo, ms", "image_worker_run_ms")):
        value = summary[key]
        rows.append((label, _cell(value["p50"]), _cell(value["p95"]), str(value["n"])))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(" | ".join(cell.ljust(widths[0]) if column == 0 else cell.rjust(widths[column])
                                for column, cell in enumerate(row)) for row in rows)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _quantiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    ordered = sorted(values)

    def percentile(percent: float) -> float:
        position = (len(ordered) - 1) * percent / 100
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"p50": round(percentile(50) * scale, 2), "p95": round(percentile(95) * scale, 2), "n": len(ordered)}


def main() -> int:
    out = os.environ.get("BENCH_TRACE_OUT")
    missing = install()
    if missing:
        print(f"bench.trace_bot: not traced (not found): {', '.join(missing)}", file=sys.stderr)
    from bot.__main__ import main as bot_main

    try:
        return bot_main([])
    finally:
        if out:
            dump(Path(out))


if __name__ == "__main__":
    sys.exit(main())
