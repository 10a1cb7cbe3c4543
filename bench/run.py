"""Benchmark: the bot's own overhead and ceiling, measured on this machine.

    python -m bench.run --scenario 1|50|500|all [--ttft 0.5] [--tps 30] [--answer-tokens 200]
                        [--telegram-rtt 0.03] [--out bench/results.json]

The real bot runs as `python -m bot` in a subprocess (so its CPU time and peak RSS are its own), against the
test suite's loopback fakes: Telegram enforcing its flood limits, with a simulated round trip, and an
OpenAI-compatible provider streaming with the configured time to first token and tokens per second. Every user
sends a distinct 1280x960 photo as Telegram photo sizes. All timestamps are taken by the fakes, on the
machine-wide monotonic clock:

- update received: the getUpdates response carrying the update left the fake Telegram;
- provider request sent: the fake provider had read the request;
- first token / last token: the fake provider wrote the first content chunk / finished the stream;
- first visible text / final message sent: the bot's sendMessageDraft / sendMessage / editMessageText request
  reached the fake Telegram (before the simulated round trip), answered 200.

The fakes stand for remote services but share the machine: the bot runs at niceness 5 (--bot-nice) and the
fakes' garbage collector is paused during a scenario, so they stay prompt; their event-loop lag is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL
from PIL import features

from bench.loopback import CLIENT_GONE, Exchange, PhotoMaker, TimedTelegram
from bot.services.formatting import render
from tests.fakes.telegram_server import make_user, message_update, private_chat
from tests.fakes.vision_server import FakeVision, RecordedRequest, stream_reply

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-bench-key"
USER_ID_BASE = 700_000
VISIBLE_METHODS = frozenset({"sendMessageDraft", "sendMessage", "editMessageText"})
FINAL_METHODS = frozenset({"sendMessage", "editMessageText"})
IMAGE_WAITS = frozenset({"getFile", "download"})
# What Telegram counts against a bot's ~30 messages a second.
PACED_METHODS = frozenset({"sendmessage", "editmessagetext", "sendmessagedraft", "sendphoto", "senddocument",
                           "sendrichmessage"})
# The bot's pacer lets 25 streamed messages/s out (Telegram allows 30): the floor for many concurrent answers.
BOT_MESSAGES_PER_SECOND = 25
# Telegram allows about one message a second in a chat; the next question in the same chat waits this long.
SAME_CHAT_GAP = 1.2
WORDS = ("the", "photo", "shows", "a", "small", "wooden", "boat", "moored", "at", "a", "stone", "quay", "under",
         "a", "grey", "sky", "with", "gulls", "circling", "above", "and", "a", "row", "of", "painted", "houses",
         "along", "the", "water", "while", "two", "people", "in", "yellow", "coats", "carry", "crates", "of", "fish",
         "towards", "a", "blue", "van", "parked", "near", "the", "harbour", "office")


@dataclass(frozen=True)
class Scenario:
    name: str
    chats: int
    questions: int  # per chat, asked one after the other
    ramp: float  # seconds over which the chats start


@dataclass
class Options:
    ttft: float
    tps: float
    answer_tokens: int
    telegram_rtt: float
    questions: int | None
    stream_mode: str
    profile: str | None
    profile_dir: Path
    timeout: float | None
    ramp: float | None = None
    timeline: bool = False
    bot_nice: int = 0


@dataclass
class Answer:
    """One question and everything the fakes saw of its answer."""

    chat_id: int
    caption: str
    expected: list[str]
    update_id: int = 0
    file_ids: frozenset[str] = frozenset()
    exchanges: list[Exchange] = field(default_factory=list)
    first_visible: float | None = None
    finals: list[str] = field(default_factory=list)
    final_at: float | None = None
    complete: bool = False
    failed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


def scenarios(questions: int | None) -> dict[str, Scenario]:
    """1 chat asks in turn; 50 chats hold conversations side by side (they start over about one answer's length,
    then each asks its next question once the previous answer is in); 500 chats all ask at once.
    """
    return {
        "1": Scenario("1", chats=1, questions=questions or 20, ramp=0.0),
        "50": Scenario("50", chats=50, questions=questions or 3, ramp=8.0),
        "500": Scenario("500", chats=500, questions=questions or 1, ramp=2.0),
    }


def answer_tokens(count: int) -> list[str]:
    """What a provider streams: a bold lead, sentences, paragraphs and a short list, one token per chunk."""
    tokens = ["**", "Short", " answer", ":**"]
    word = 0
    while len(tokens) < count:
        position = len(tokens) % 48
        if position == 0:
            tokens.append(".\n\n")
        elif position in (30, 36, 42):
            tokens.append("\n- ")
        else:
            separator = "" if tokens[-1].endswith(("\n", " ")) else " "
            tokens.append(separator + WORDS[word % len(WORDS)])
            word += 1
    return tokens[:count]


# --- the bot process --------------------------------------------------------------------------------------


class BotProcess:
    """`python -m bot` (optionally under a profiler) with the fakes' addresses in its environment."""

    def __init__(self, workdir: Path, env: dict[str, str], profile: str | None, profile_out: Path | None,
                 nice: int = 0) -> None:
        self.workdir = workdir
        self.nice = nice
        self.env = env
        self.profile = profile
        self.profile_out = profile_out
        self.process: asyncio.subprocess.Process | None = None
        self.pid: int | None = None  # the Python process running the bot (a child of py-spy when profiling)
        self.log_path = workdir / "bot.log"

    async def start(self) -> None:
        command = [sys.executable, "-m", "bot"]
        if self.profile == "pyinstrument":
            command = [sys.executable, "-m", "pyinstrument", "-r", "html", "-o", str(self.profile_out),
                       "-m", "bot"]
        elif self.profile == "py-spy":
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            command = [py_spy, "record", "--rate", "100", "--nonblocking", "--format", "raw", "--threads", "--output",
                       str(self.profile_out), "--", *command]
        clean = {key: value for key, value in os.environ.items()
                 if not key.startswith(("BOT_", "VISION_", "TELEGRAM_", "DATABASE_", "CONTEXT_", "STREAM_",
                                        "LOG_", "METRICS_", "USER_", "CHAT_", "ALLOWED_", "ADMIN_"))}
        if self.nice:
            command = ["nice", "-n", str(self.nice), *command]  # nice execs the command: same pid
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command, cwd=self.workdir, env={**clean, "PYTHONPATH": str(ROOT), **self.env},
                stdout=log, stderr=asyncio.subprocess.STDOUT)
        self.pid = self.process.pid
        if self.profile == "py-spy":
            self.pid = await self._child_of(self.process.pid)

    async def _child_of(self, parent: int) -> int:
        for _ in range(200):
            children = _children(parent)
            if children:
                return children[0]
            await asyncio.sleep(0.05)
        raise RuntimeError("py-spy did not start the bot")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the bot process, all its threads (from /proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def exited(self) -> bool:
        return self.process is None or self.process.returncode is not None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        if self.process is None or self.pid is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=60)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").glob("*/children") for child in task.read_text().split()]


# --- one scenario -----------------------------------------------------------------------------------------


class Run:
    """Fakes, bot and bookkeeping for one scenario."""

    def __init__(self, scenario: Scenario, options: Options) -> None:
        self.scenario = scenario
        self.options = options
        self.telegram = TimedTelegram(rtt=options.telegram_rtt, enforce_rate_limits=True)
        self.vision = FakeVision(api_key=API_KEY)
        tokens = answer_tokens(options.answer_tokens)
        self.vision.default_reply = stream_reply(tokens, delay=1 / options.tps, first_delay=options.ttft)
        self.expected = [part.text for part in render("".join(tokens))]
        self.answers: list[Answer] = []
        self.started = 0.0
        self.loop_lags: list[float] = []
        self.long_lags: list[tuple[int, int]] = []  # (ms since start, lag ms) of stalls over 100 ms
        self._current: dict[int, Answer] = {}  # chat -> the answer being written there
        self._by_file: dict[str, Answer] = {}
        self._by_path: dict[str, Answer] = {}
        self.telegram.observers.append(self._observe)

    def _observe(self, exchange: Exchange) -> None:
        """Attributes each Telegram exchange to its answer; notes first visible text and final delivery."""
        if exchange.method == "getFile":
            answer = self._by_file.get(exchange.params.get("file_id", ""))
            if answer is not None and isinstance(exchange.result, dict):
                self._by_path[exchange.result["file_path"]] = answer
        elif exchange.method == "download":
            answer = self._by_path.get(exchange.params["file_path"])
        else:
            answer = self._current.get(exchange.params.get("chat_id"))  # type: ignore[arg-type]
        if answer is None:
            return
        answer.exchanges.append(exchange)
        if exchange.status != 200 or exchange.method not in VISIBLE_METHODS:
            return
        if answer.first_visible is None:
            answer.first_visible = exchange.sent
        if exchange.method in FINAL_METHODS and "reply_markup" not in exchange.params and not answer.done.is_set():
            answer.finals.append(str(exchange.params.get("text", "")))
            answer.final_at = exchange.sent
            if answer.finals != self.expected[: len(answer.finals)]:
                answer.failed = True  # an error notice, or a text that is not the answer
                answer.done.set()
            elif len(answer.finals) == len(self.expected):
                answer.complete = True
                answer.done.set()

    def _ask(self, answer: Answer, user: dict[str, Any], photo: list[dict[str, Any]]) -> None:
        self._current[answer.chat_id] = answer
        update = message_update(private_chat(user), user, photo=photo, caption=answer.caption)
        answer.update_id = self.telegram.push_update(update)

    def _plan(self) -> list[tuple[Answer, dict[str, Any], list[dict[str, Any]]]]:
        """Questions with their photos, registered as Telegram photo sizes before the clock starts."""
        maker = PhotoMaker()
        plan = []
        for chat in range(self.scenario.chats):
            user = make_user(USER_ID_BASE + chat, f"User{chat}")
            for question in range(self.scenario.questions):
                seed = chat * 1000 + question
                photo = self.telegram.photo_sizes(maker.photo(seed))
                answer = Answer(chat_id=user["id"], caption=f"What is in this photo? (bench {chat}.{question})",
                                expected=self.expected)
                answer.file_ids = frozenset(size["file_id"] for size in photo)
                for file_id in answer.file_ids:
                    self._by_file[file_id] = answer
                plan.append((answer, user, photo))
        return plan

    def _ramp(self) -> float:
        return self.scenario.ramp if self.options.ramp is None else self.options.ramp

    def _timeout(self) -> float:
        if self.options.timeout is not None:
            return self.options.timeout
        stream = self.options.ttft + self.options.answer_tokens / self.options.tps
        questions, chats = self.scenario.questions, self.scenario.chats
        return (self._ramp() + questions * (stream + SAME_CHAT_GAP + 10)
                + 2 * chats * questions / BOT_MESSAGES_PER_SECOND + 120)

    async def execute(self, workdir: Path) -> dict[str, Any]:
        await self.telegram.start()
        await self.vision.start()
        plan = self._plan()
        profile_out = None
        if self.options.profile:
            self.options.profile_dir.mkdir(parents=True, exist_ok=True)
            suffix = "html" if self.options.profile == "pyinstrument" else "txt"
            profile_out = (self.options.profile_dir / f"scenario-{self.scenario.name}-{self.options.profile}.{suffix}")
            profile_out = profile_out.resolve()
        bot = BotProcess(workdir, {
            "BOT_TOKEN": self.telegram.token, "TELEGRAM_API_URL": self.telegram.base_url,
            "VISION_BASE_URL": self.vision.base_url, "VISION_API_KEY": API_KEY,
            "DATABASE_URL": f"sqlite:///{workdir / 'bot.sqlite3'}", "SHUTDOWN_GRACE": "5",
            "STREAM_MODE": self.options.stream_mode,
        }, self.options.profile, profile_out, nice=self.options.bot_nice)
        load_before = os.getloadavg()
        try:
            await bot.start()
            await self._wait_ready(bot)
            harness_cpu, cpu, self.started = time.process_time(), bot.cpu_seconds(), time.monotonic()
            monitor = asyncio.create_task(self._watch_loop())
            # A full collection over the fakes' records stalls them for ~0.4 s: they would time-stamp late and
            # pass on a backlog of requests in a burst. The fakes stand for remote services: keep them prompt.
            gc.freeze()
            gc.disable()
            try:
                await self._drive(plan)
            finally:
                gc.enable()
                gc.unfreeze()
                monitor.cancel()
            wall = time.monotonic() - self.started
            cpu = bot.cpu_seconds() - cpu
            harness_cpu = time.process_time() - harness_cpu
            peak_rss = bot.peak_rss_mb()
        except BaseException:
            if bot.log_path.exists():
                print(bot.log_tail(), file=sys.stderr)
            raise
        finally:
            await bot.stop()
            await self.telegram.stop()
            await self.vision.stop()
        return self._figures(wall=wall, cpu=cpu, harness_cpu=harness_cpu, peak_rss=peak_rss,
                             load=(load_before, os.getloadavg()), profile=profile_out)

    async def _wait_ready(self, bot: BotProcess) -> None:
        """The bot is ready once it long-polls for updates (after its start-up calls)."""
        deadline = time.monotonic() + 60
        while not self.telegram.polling_started:
            if bot.exited():
                raise RuntimeError(f"the bot exited during start-up:\n{bot.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the bot did not start polling within 60 s")
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # let the start-up settle before the CPU clock starts

    async def _watch_loop(self, interval: float = 0.01) -> None:
        """How late this process's event loop (the fakes') wakes up: a late fake would time-stamp late."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            self.loop_lags.append(time.monotonic() - before - interval)
            if self.loop_lags[-1] > 0.1:
                self.long_lags.append((round((before - self.started) * 1000), round(self.loop_lags[-1] * 1000)))

    async def _drive(self, plan: list[tuple[Answer, dict[str, Any], list[dict[str, Any]]]]) -> None:
        deadline = time.monotonic() + self._timeout()
        self.answers = [answer for answer, _, _ in plan]
        conversations: dict[int, list[tuple[Answer, dict[str, Any], list[dict[str, Any]]]]] = {}
        for step in plan:
            conversations.setdefault(step[0].chat_id, []).append(step)
        start, ramp = time.monotonic(), self._ramp()
        chats = [self._converse(steps, start + ramp * position / len(conversations), deadline)
                 for position, steps in enumerate(conversations.values())]
        await asyncio.gather(*chats)

    async def _converse(self, steps: list[tuple[Answer, dict[str, Any], list[dict[str, Any]]]], start: float,
                        deadline: float) -> None:
        """One chat: each question once the previous answer is in, as a person would ask."""
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        for position, (answer, user, photo) in enumerate(steps):
            if position:
                await asyncio.sleep(SAME_CHAT_GAP)
            self._ask(answer, user, photo)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answer.done.wait(), max(0.0, deadline - time.monotonic()))

    # --- figures ---

    def _figures(self, *, wall: float, cpu: float, harness_cpu: float, peak_rss: float,
                 load: tuple[tuple[float, ...], tuple[float, ...]], profile: Path | None) -> dict[str, Any]:
        requests = self._requests_by_caption()
        overhead, net, first_text, final, end_to_end, calls = [], [], [], [], [], []
        dispatch, image_waits, before_download, after_download = [], [], [], []
        by_method: Counter[str] = Counter()
        for answer in self.answers:
            delivered = self.telegram.delivered.get(answer.update_id)
            request = requests.get(answer.caption)
            calls.append(len(answer.exchanges))
            by_method.update(exchange.method for exchange in answer.exchanges)
            if delivered is None or request is None:
                continue
            waits = sum(exchange.answered - exchange.sent for exchange in answer.exchanges
                        if exchange.method in IMAGE_WAITS and delivered <= exchange.sent <= request.at)
            overhead.append(request.at - delivered)
            net.append(request.at - delivered - waits)
            get_file = next((e for e in answer.exchanges if e.method == "getFile"), None)
            download = next((e for e in answer.exchanges if e.method == "download"), None)
            if get_file is not None and download is not None:
                dispatch.append(get_file.sent - delivered)
                image_waits.append(waits)
                before_download.append(download.sent - get_file.answered)
                after_download.append(request.at - download.answered)
            if answer.first_visible is not None and request.first_chunk_at is not None:
                first_text.append(answer.first_visible - request.first_chunk_at)
            if answer.complete and answer.final_at is not None and request.finished_at is not None:
                final.append(answer.final_at - request.finished_at)
                end_to_end.append(answer.final_at - delivered)
        completed = sum(answer.complete for answer in self.answers)
        return {
            "scenario": self.scenario.name,
            "chats": self.scenario.chats,
            "questions_per_chat": self.scenario.questions,
            "ramp_seconds": self._ramp(),
            "answers_started": len(self.answers),
            "answers_completed": completed,
            "answers_failed": sum(answer.failed for answer in self.answers),
            "overhead_ms": _quantiles(overhead),
            "overhead_less_telegram_waits_ms": _quantiles(net),
            "overhead_parts_ms": {
                "update_to_get_file": _quantiles(dispatch),
                "get_file_and_download_waits": _quantiles(image_waits),
                "get_file_to_download": _quantiles(before_download),
                "download_to_provider_request": _quantiles(after_download),
            },
            "first_token_to_first_text_ms": _quantiles(first_text),
            "last_token_to_final_ms": _quantiles(final),
            "update_to_final_ms": _quantiles(end_to_end),
            "telegram_calls_per_answer": {"mean": round(statistics.fmean(calls), 2) if calls else None,
                                          **_quantiles(calls, scale=1),
                                          "by_method": {method: round(count / len(self.answers), 2)
                                                        for method, count in sorted(by_method.items())}},
            "telegram_429": sum(exchange.status == 429 for exchange in self.telegram.exchanges),
            "telegram_abandoned_requests": sum(exchange.status == CLIENT_GONE for exchange in self.telegram.exchanges),
            "telegram_peak_sends_per_second": _peak_per_second(
                exchange.sent for exchange in self.telegram.exchanges
                if exchange.status == 200 and exchange.method.lower() in PACED_METHODS),
            "telegram_429_first": [
                {"method": exchange.method, "chat_id": exchange.params.get("chat_id"),
                 "at_ms": round((exchange.sent - self.started) * 1000, 1)}
                for exchange in self.telegram.exchanges if exchange.status == 429][:20],
            "cpu_seconds_per_answer": round(cpu / completed, 4) if completed else None,
            "bot_cpu_seconds": round(cpu, 2),
            "bot_cpu_utilisation": round(cpu / wall, 2) if wall else None,
            "peak_rss_mb": round(peak_rss, 1),
            "max_simultaneous_streams": _max_overlap(
                (request.at, request.finished_at or request.at) for request in requests.values()),
            "wall_seconds": round(wall, 1),
            "harness_cpu_seconds": round(harness_cpu, 2),
            "harness_loop_lag_ms": _lag(self.loop_lags),
            "harness_stalls_over_100ms": self.long_lags[:50],
            "load_average_before": [round(value, 2) for value in load[0]],
            "load_average_after": [round(value, 2) for value in load[1]],
            "profile": str(profile) if profile else None,
            **({"timeline_ms": self._timeline(requests)} if self.options.timeline else {}),
        }

    def _timeline(self, requests: dict[str, RecordedRequest]) -> list[dict[str, float | None]]:
        """Per answer, when each step happened, in ms since the scenario started."""

        def ms(moment: float | None) -> float | None:
            return None if moment is None else round((moment - self.started) * 1000, 1)

        rows = []
        for answer in self.answers:
            request = requests.get(answer.caption)
            first = {}
            for exchange in answer.exchanges:
                first.setdefault(exchange.method, exchange)
            rows.append({
                "chat_id": answer.chat_id,
                "update_delivered": ms(self.telegram.delivered.get(answer.update_id)),
                "get_file_sent": ms(first["getFile"].sent) if "getFile" in first else None,
                "download_done": ms(first["download"].answered) if "download" in first else None,
                "provider_request": ms(request.at) if request else None,
                "first_token": ms(request.first_chunk_at) if request else None,
                "last_token": ms(request.finished_at) if request else None,
                "first_text": ms(answer.first_visible),
                "final_sent": ms(answer.final_at),
            })
        return rows

    def _requests_by_caption(self) -> dict[str, RecordedRequest]:
        found: dict[str, RecordedRequest] = {}
        for request in self.vision.requests:
            parts = request.text_parts()
            if parts:
                found.setdefault(parts[-1], request)
        return found


def _quantiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    ordered = sorted(values)
    return {"p50": round(_percentile(ordered, 50) * scale, 1), "p95": round(_percentile(ordered, 95) * scale, 1),
            "max": round(ordered[-1] * scale, 1), "n": len(ordered)}


def _lag(lags: list[float]) -> dict[str, float | None]:
    if not lags:
        return {"p99": None, "max": None}
    ordered = sorted(lags)
    return {"p99": round(_percentile(ordered, 99) * 1000, 1), "max": round(ordered[-1] * 1000, 1)}


def _percentile(ordered: list[float], percent: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(ordered) - 1) * percent / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _peak_per_second(moments: Iterable[float]) -> int:
    """The most events in any one-second window (Telegram allows a bot about 30 messages a second)."""
    ordered = sorted(moments)
    peak = start = 0
    for end, moment in enumerate(ordered):
        while ordered[start] <= moment - 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def _max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    spans = list(intervals)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


# --- machine and report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "ram_gb": round(memory / 1024 / 1024, 1),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "kernel": platform.release(),
    }


ROWS: tuple[tuple[str, str, str], ...] = (
    ("update received -> provider request, ms", "overhead_ms", "q"),
    ("  the same less getFile + download waits, ms", "overhead_less_telegram_waits_ms", "q"),
    ("  update received -> getFile sent, ms", "overhead_parts_ms.update_to_get_file", "q"),
    ("  getFile answered -> download sent, ms", "overhead_parts_ms.get_file_to_download", "q"),
    ("  download done -> provider request, ms", "overhead_parts_ms.download_to_provider_request", "q"),
    ("provider first token -> first text sent, ms", "first_token_to_first_text_ms", "q"),
    ("provider last token -> final message sent, ms", "last_token_to_final_ms", "q"),
    ("update received -> final message sent, ms", "update_to_final_ms", "q"),
    ("Telegram calls per answer (mean)", "telegram_calls_per_answer", "mean"),
    ("Telegram 429s received", "telegram_429", "v"),
    ("Telegram messages in the busiest second", "telegram_peak_sends_per_second", "v"),
    ("bot CPU seconds per answer", "cpu_seconds_per_answer", "v"),
    ("bot CPU utilisation (cores)", "bot_cpu_utilisation", "v"),
    ("bot peak RSS, MB", "peak_rss_mb", "v"),
    ("answers completed / started", "answers_completed", "ratio"),
    ("max simultaneous provider streams", "max_simultaneous_streams", "v"),
    ("wall seconds", "wall_seconds", "v"),
    ("fakes' event-loop lag p99 / max, ms", "harness_loop_lag_ms", "lag"),
)


def table(results: list[dict[str, Any]]) -> str:
    header = ["figure (p50 / p95)"] + [f"{r['chats']} chat{'s' if r['chats'] > 1 else ''}" for r in results]
    rows = [header]
    for label, key, kind in ROWS:
        cells = [label]
        for result in results:
            value = result
            for part in key.split("."):
                value = value[part]
            if kind == "q":
                cells.append(f"{_num(value['p50'])} / {_num(value['p95'])}")
            elif kind == "mean":
                cells.append(_num(value["mean"]))
            elif kind == "lag":
                cells.append(f"{_num(value['p99'])} / {_num(value['max'])}")
            elif kind == "ratio":
                cells.append(f"{result['answers_completed']} / {result['answers_started']}")
            else:
                cells.append(_num(value))
        rows.append(cells)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [" | ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                        for column, (cell, width) in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 100:
        return f"{value:.0f}"
    return str(value)


# --- command line -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("1", "50", "500", "all"), default="all")
    parser.add_argument("--ttft", type=float, default=0.5, help="provider time to first token, s")
    parser.add_argument("--tps", type=float, default=30.0, help="provider tokens per second")
    parser.add_argument("--answer-tokens", type=int, default=200, help="tokens (stream chunks) per answer")
    parser.add_argument("--telegram-rtt", type=float, default=0.03, help="Telegram round trip, s")
    parser.add_argument("--questions", type=int, default=None,
                        help="questions per chat, each after the previous answer (default: 20, 3, 1 by scenario)")
    parser.add_argument("--stream-mode", choices=("auto", "edit"), default="auto",
                        help="the bot's STREAM_MODE: drafts in private chats (auto) or edited messages")
    parser.add_argument("--profile", choices=("pyinstrument", "py-spy"), default=None,
                        help="run the bot under a profiler (figures then include its overhead)")
    parser.add_argument("--profile-dir", type=Path, default=ROOT / "bench" / "profiles")
    parser.add_argument("--ramp", type=float, default=None,
                        help="seconds over which the concurrent chats start (default 1.5 for 50, 2 for 500)")
    parser.add_argument("--bot-nice", type=int, default=5,
                        help="run the bot at this niceness so the fakes (stand-ins for remote services) stay "
                             "prompt when it saturates the CPU; 0 for equal priority")
    parser.add_argument("--timeline", action="store_true", help="add every answer's timestamps to the results")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for a scenario's answers")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    options = Options(ttft=args.ttft, tps=args.tps, answer_tokens=args.answer_tokens,
                      telegram_rtt=args.telegram_rtt, questions=args.questions, stream_mode=args.stream_mode,
                      profile=args.profile, profile_dir=args.profile_dir, timeout=args.timeout, ramp=args.ramp,
                      timeline=args.timeline, bot_nice=args.bot_nice)
    known = scenarios(args.questions)
    names = list(known) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        print(f"scenario {name}: {known[name].chats} chat(s) ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
            results.append(await Run(known[name], options).execute(Path(workdir)))
        print(f"scenario {name}: {results[-1]['answers_completed']}/{results[-1]['answers_started']} answers "
              f"in {results[-1]['wall_seconds']} s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "options": {"ttft": args.ttft, "tps": args.tps, "answer_tokens": args.answer_tokens,
                    "telegram_rtt": args.telegram_rtt, "questions": args.questions,
                    "stream_mode": args.stream_mode, "profile": args.profile, "bot_nice": args.bot_nice,
                    "ramp": args.ramp, "photo": "1280x960 JPEG q87, distinct per question"},
        "scenarios": {result["scenario"]: result for result in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\nresults: {args.out}")
    return 0 if all(r["answers_completed"] == r["answers_started"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
