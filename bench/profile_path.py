"""Where the bot's CPU goes between an update and its provider request, from a py-spy profile of a benchmark run.

    python -m bench.run --scenario 50 --profile py-spy --profile-rate 500      # bench/profiles/*.txt
    python -m bench.profile_path bench/profiles/scenario-50-polling-sqlite-py-spy.txt --rate 500 --answers 150

py-spy's raw output holds one line per distinct stack (`thread;frame;...;frame count`), event-loop thread and
workers alike. The event loop's samples are split by what their stack is doing (ACTIVITIES: the first rule that
matches wins); the path from update to provider request is receiving the update (getUpdates or the webhook
POST), recording it, dispatching it, the handler up to the provider request (getFile, download, handing the photo
to the image worker, storage, building and sending the request) and the image worker's preparation. For the
path: the functions with the most samples as the innermost frame (own) and anywhere in the stack (cumulative),
and a few known costs wherever they occur (CROSS_CUTTING). Sampled, not measured: +-1 sample per line, and time
waiting for the GIL counts as the waiting frame's.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")

# Event-loop samples, by what the stack is doing: (activity, frames any of which marks it, on the path?).
ACTIVITIES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("provider stream: reading tokens", ("_sse_deltas", "_starting_with", "_Answering.__aexit__"), False),
    ("answer after its stream (final render, storage, usage)",
     ("ReplyStream.finish", "Inbox.generated", "Inbox.finish", "ConversationContext.record",
      "AnswerService._account", "ReplyStream.close", "_finish_with_note"), False),
    ("path: receive (getUpdates answer and the next request; webhook POST)",
     ("Bot.get_updates", "webhook_app.<locals>.receive", "RequestHandler"), True),
    ("path: record the update (inbox, hold)", ("Intake.accept",), True),
    ("path: vision request (build, encode, send)", ("_Answering.__aenter__",), True),
    ("provider stream: per-token loop (text so far, reply push)", ("AnswerService._read", "ReplyStream.push"), False),
    ("path: getFile", ("ImageFetcher._file_path",), True),
    ("path: download", ("ImageFetcher._download",), True),
    ("path: prepare the photo (sent-as-downloaded check, or hand-over to the image worker)",
     ("prepare_image_async",), True),
    ("path: storage before the request (cache, history, model, inbox, kept image)",
     ("ConversationContext.cached_image", "ConversationContext.keep_image", "ConversationContext.history",
      "ModelChoice.current", "Inbox.asking", "UsageGuard.admit"), True),
    ("path: dispatch (aiogram middlewares, filters, handler)", ("Intake._handle",), True),
    ("streamed replies to Telegram (drafts, edits, typing)",
     ("ReplyStream._run_updates", "ReplyStream._finalize", "ReplyStream._keep_typing", "UpdatePacer"), False),
    ("waiting in select (idle)", ("EpollSelector.select",), False),
    ("HTTP client reads, stack cut short (nearly all provider stream reads)",
     ("AsyncHTTP11Connection", "HTTP11ConnectionByteStream", "AnyIOStream", "SocketStream", "EventSource",
      "_aiter_sse_lines", "SSEDecoder", "Response.aiter_text", "Response.aiter_raw", "Response.aiter_bytes",
      "CancelScope", "fail_at", "fail_after", "Connection._process_event", "Connection.next_event", "ChunkedReader"),
     False),
    ("socket and loop callbacks outside tasks", ("_SelectorSocketTransport", "BaseSelectorEventLoop",
                                                 "BaseEventLoop._run_once", "Handle._run"), False),
)  # anything else: "other"
# Known costs, counted wherever they occur on the event loop (name, frame).
CROSS_CUTTING: tuple[tuple[str, str], ...] = (
    ("pydantic rebuilding aiogram's Response[T] model (weakly cached generic)", "BaseModel.__class_getitem__"),
    ("httpcore: failed `import sniffio` on every call", "current_async_library"),
    ("aiogram: sync filter run via asyncio.to_thread", "to_thread"),
    ("ThreadPoolExecutor.submit (thread wake-up, GIL hand-over)", "ThreadPoolExecutor.submit"),
    ("aiosqlite: hand a statement to its thread", "Connection._execute"),
    ("json.dumps of a provider request", "encode_body"),
    ("socket writes (transport.write)", "_SelectorSocketTransport.write"),
    ("Markdown render of drafts and finals", "render"),
    ("answer text joined again per token (_Answer.text)", "_Answer.text"),
)


@dataclass(frozen=True)
class Stack:
    thread: str
    frames: tuple[str, ...]  # outermost first, "function (file)" without line numbers
    count: int

    def has(self, name: str) -> bool:
        """A frame of this function (`name`: a function, `Class.method`, or a class: any of its methods)."""
        for frame in self.frames:
            function = frame.split(" (", 1)[0]
            if function == name or function.startswith(name + ".") or function.endswith("." + name):
                return True
        return False


def read(path: Path) -> list[Stack]:
    stacks = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        thread, *frames = head.split(";")
        name = thread.split(": ", 1)[1] if ": " in thread else thread
        stacks.append(Stack(_thread_group(name), tuple(_LINE.sub(")", frame) for frame in frames), int(count)))
    return stacks


def _thread_group(name: str) -> str:
    if name.startswith("MainThread"):
        return "event loop (MainThread)"
    if name.startswith("image"):
        return "image worker"
    if "_connection_worker_thread" in name:
        return "aiosqlite"
    if name.startswith("asyncio"):
        return "default executor (asyncio.to_thread)"
    return "other"


def activity(stack: Stack) -> tuple[str, bool]:
    for name, markers, on_path in ACTIVITIES:
        if any(stack.has(marker) for marker in markers):
            return name, on_path
    return "other", False


def summary(stacks: list[Stack], *, rate: float, answers: int | None, top: int) -> str:
    def ms(samples: int) -> str:
        seconds = samples / rate
        per_answer = f"{seconds / answers * 1000:7.2f} ms/answer" if answers else ""
        return f"{samples:7d} samples {seconds:7.2f} s {per_answer}"

    lines = ["threads (samples while not idle):"]
    threads: Counter[str] = Counter()
    for stack in stacks:
        threads[stack.thread] += stack.count
    lines += [f"  {name:44s} {ms(count)}" for name, count in threads.most_common()]

    loop = [stack for stack in stacks if stack.thread.startswith("event loop")]
    activities: Counter[str] = Counter()
    path: list[Stack] = []
    for stack in loop:
        name, on_path = activity(stack)
        activities[name] += stack.count
        if on_path:
            path.append(stack)
    lines += ["", "event loop, by activity:"]
    lines += [f"  {name:86s} {ms(count)}" for name, count in activities.most_common()]

    image = [stack for stack in stacks if stack.thread == "image worker"]
    for title, chosen in (("path on the event loop", path), ("image worker", image)):
        if not chosen:
            lines += ["", f"{title}: no samples"]
            continue
        lines += ["", f"{title}: top functions by own samples (innermost frame):"]
        lines += [f"  {name:90s} {ms(count)}" for name, count in _own(chosen).most_common(top)]
        lines += [f"{title}: top functions by cumulative samples (anywhere in the stack):"]
        lines += [f"  {name:90s} {ms(count)}" for name, count in _cumulative(chosen).most_common(top)]

    lines += ["", "known costs on the event loop (all of it / on the path):"]
    for label, frame in CROSS_CUTTING:
        everywhere = sum(stack.count for stack in loop if stack.has(frame))
        on_path = sum(stack.count for stack in path if stack.has(frame))
        lines.append(f"  {label:74s} {ms(everywhere)} / {on_path} on the path")
    return "\n".join(lines)


def _own(stacks: Iterable[Stack]) -> Counter[str]:
    own: Counter[str] = Counter()
    for stack in stacks:
        if stack.frames:
            own[stack.frames[-1]] += stack.count
    return own


def _cumulative(stacks: Iterable[Stack]) -> Counter[str]:
    cumulative: Counter[str] = Counter()
    for stack in stacks:
        for frame in set(stack.frames):
            cumulative[frame] += stack.count
    for frame in [frame for frame in cumulative if frame.startswith(("_run_module_as_main", "_run_code", "<module>",
                                                                        "main (bot/__main__", "run (asyncio",
                                                                        "Runner.run", "BaseEventLoop.run_",
                                                                        "BaseEventLoop._run_once", "Handle._run",
                                                                        "Thread._bootstrap", "Thread.run",
                                                                        "_worker (concurrent"))]:
        del cumulative[frame]  # every sample's frames: no information
    return cumulative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_path", description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, nargs="+", help="py-spy raw profiles (several: replicas, summed)")
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy's samples per second (--profile-rate)")
    parser.add_argument("--answers", type=int, default=None, help="answers in the run, for ms per answer")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    stacks = [stack for path in args.profile for stack in read(path)]
    print(summary(stacks, rate=args.rate, answers=args.answers, top=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
