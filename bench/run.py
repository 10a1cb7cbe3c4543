"""Benchmark: the bot's own overhead and ceiling, measured on this machine.

    python -m bench.run --scenario 1|50|500|all [--mode polling|webhook] [--backend sqlite|pg-redis]
                        [--replicas N] [--ttft 0.5] [--tps 30] [--answer-tokens 200] [--telegram-rtt 0.03]
                        [--out bench/results.json]

The real bot runs as `python -m bot` in a subprocess (so its CPU time and peak RSS are its own), against the
test suite's loopback fakes: Telegram enforcing its flood limits, with a simulated round trip, and an
OpenAI-compatible provider streaming with the configured time to first token and tokens per second. Every user
sends a distinct 1280x960 photo as Telegram photo sizes. All timestamps are taken on the machine-wide monotonic
clock, by the fakes:

- update received: polling, the getUpdates response carrying the update left the fake Telegram; webhook, the
  fake Telegram handed the POST carrying it to its HTTP client (bench/webhook.py);
- provider request sent: the fake provider had read the request;
- first token / last token: the fake provider wrote the first content chunk / finished the stream;
- first visible text / final message sent: the bot's sendMessageDraft / sendMessage / editMessageText request
  reached the fake Telegram (before the simulated round trip), answered 200.

`--backend pg-redis` runs the bot on a fresh PostgreSQL database and a Redis key prefix of its own
(bench/backends.py); `--replicas N` runs N bot processes on it, in webhook mode behind a round-robin load
balancer (polling: one holds the poll lease and shares the updates out). CPU time and peak RSS are then given
per replica and in total, with the PostgreSQL and Redis servers' CPU time beside them.

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
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import trace_bot, webhook
from bench.backends import BACKENDS, POSTGRES_DSN, REDIS_URL, storage_env
from bench.loopback import CLIENT_GONE, Exchange, PhotoMaker, TimedTelegram
from bench.process import ROOT, BotProcess, free_port, machine_cpu_seconds, service_cpu_seconds, wait_healthy
from bench.report import code_state, machine, table
from bot.services.formatting import render
from tests.fakes.telegram_server import make_user, message_update, private_chat
from tests.fakes.vision_server import FakeVision, RecordedRequest, stream_reply

API_KEY = "sk-bench-key"
TRACE_FILE = "trace.json"
USER_ID_BASE = 700_000
VISIBLE_METHODS = frozenset({"sendMessageDraft", "sendMessage", "editMessageText"})
FINAL_METHODS = frozenset({"sendMessage", "editMessageText"})
IMAGE_WAITS = frozenset({"getFile", "download"})
# What the fake Telegram counts against a bot's ~30 messages a second (tests/fakes/telegram_server.py).
PACED_METHODS = frozenset({"sendmessage", "editmessagetext", "sendmessagedraft", "sendphoto", "senddocument",
                           "sendrichmessage", "sendchataction", "answercallbackquery"})
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
    mode: str = "polling"  # or "webhook": the fake Telegram POSTs each update to the bot
    backend: str = "sqlite"  # or "pg-redis"
    replicas: int = 1
    postgres_dsn: str = POSTGRES_DSN
    redis_url: str = REDIS_URL
    profile_rate: int = 100
    trace: bool = False  # run bench.trace_bot: timestamps at each step inside the bot


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
        self.pusher: webhook.WebhookPusher | None = None
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
        if self.pusher is None:
            answer.update_id = self.telegram.push_update(update)
        else:
            answer.update_id = self.pusher.push(update)

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
        try:
            plan = self._plan()
            async with storage_env(self.options.backend, workdir, postgres_dsn=self.options.postgres_dsn,
                                   redis_url=self.options.redis_url) as storage:
                bots = [self._bot(workdir, storage, index) for index in range(self.options.replicas)]
                try:
                    result = await self._measure(bots, plan)
                except BaseException:
                    for bot in bots:
                        if bot.log_path.exists():
                            print(f"--- {bot.name} ({bot.log_path}):\n{bot.log_tail()}", file=sys.stderr)
                    raise
                finally:
                    await asyncio.gather(*(bot.stop() for bot in bots))
                    if self.pusher is not None:
                        await self.pusher.stop()
        finally:
            await self.telegram.stop()
            await self.vision.stop()
        if self.options.trace:  # written by each bot as it exits
            result["trace"] = self._trace(bots)
        return result

    def _trace(self, bots: list[BotProcess]) -> dict[str, Any]:
        requests = self._requests_by_caption()
        provider_request = {answer.update_id: requests[answer.caption].at for answer in self.answers
                            if answer.caption in requests}
        paths = [bot.workdir / TRACE_FILE for bot in bots if (bot.workdir / TRACE_FILE).exists()]
        return trace_bot.summarise(paths, self.telegram.delivered, provider_request)

    def _bot(self, workdir: Path, storage: dict[str, str], index: int) -> BotProcess:
        """One bot process (replica `index`), with its own folder and, in webhook mode, its own port."""
        options = self.options
        several = options.replicas > 1
        name = f"replica-{index}" if several else "bot"
        env = {
            "BOT_TOKEN": self.telegram.token, "TELEGRAM_API_URL": self.telegram.base_url,
            "VISION_BASE_URL": self.vision.base_url, "VISION_API_KEY": API_KEY,
            "SHUTDOWN_GRACE": "5", "STREAM_MODE": options.stream_mode, **storage,
        }
        folder = workdir / name if several else workdir
        if options.trace:
            env["BENCH_TRACE_OUT"] = str(folder / TRACE_FILE)
        health_port = webhook_url = None
        if options.mode == "webhook":
            health_port = free_port()  # the webhook server answers /healthz too
            webhook_url = f"http://127.0.0.1:{health_port}{webhook.PATH}"
            env.update({"BOT_MODE": "webhook", "WEBHOOK_URL": webhook.PUBLIC_URL, "WEBHOOK_SECRET": webhook.SECRET,
                        "WEBHOOK_HOST": "127.0.0.1", "WEBHOOK_PORT": str(health_port)})
        elif several:  # polling replicas: only one polls, so each one's readiness comes from its /healthz
            health_port = free_port()
            env.update({"METRICS_PORT": str(health_port), "METRICS_HOST": "127.0.0.1"})
        profile_out = None
        if options.profile:
            options.profile_dir.mkdir(parents=True, exist_ok=True)
            suffix = "html" if options.profile == "pyinstrument" else "txt"
            label = "-".join([self.scenario.name, options.mode, options.backend, *([name] if several else [])])
            profile_out = (options.profile_dir / f"scenario-{label}-{options.profile}.{suffix}").resolve()
        return BotProcess(folder, env, profile=options.profile, profile_out=profile_out, nice=options.bot_nice,
                          name=name, health_port=health_port, webhook_url=webhook_url,
                          profile_rate=options.profile_rate, module="bench.trace_bot" if options.trace else "bot")

    async def _measure(self, bots: list[BotProcess], plan: list[tuple[Answer, dict[str, Any], list[dict[str, Any]]]]
                       ) -> dict[str, Any]:
        load_before = os.getloadavg()
        await asyncio.gather(*(bot.start() for bot in bots))
        await self._wait_ready(bots)
        if self.options.mode == "webhook":
            self.pusher = webhook.WebhookPusher(self.telegram, [bot.webhook_url or "" for bot in bots],
                                                self.telegram.delivered)
            await self.pusher.start()
        await asyncio.gather(*(bot.start_profiler() for bot in bots))
        harness_cpu, services_cpu, machine_cpu = time.process_time(), service_cpu_seconds(), machine_cpu_seconds()
        cpu = [bot.cpu_seconds() for bot in bots]
        self.started = time.monotonic()
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
        cpu = [bot.cpu_seconds() - before for bot, before in zip(bots, cpu, strict=True)]
        await asyncio.gather(*(bot.stop_profiler() for bot in bots))
        services_cpu = service_cpu_seconds() - services_cpu
        harness_cpu = time.process_time() - harness_cpu
        machine_cpu = {key: value - machine_cpu[key] for key, value in machine_cpu_seconds().items()}
        replicas = [{"name": bot.name, "cpu_seconds": round(seconds, 2), "peak_rss_mb": round(bot.peak_rss_mb(), 1)}
                    for bot, seconds in zip(bots, cpu, strict=True)]
        return self._figures(wall=wall, replicas=replicas, harness_cpu=harness_cpu, services_cpu=services_cpu,
                             machine_cpu=machine_cpu, load=(load_before, os.getloadavg()),
                             profiles=[bot.profile_out for bot in bots if bot.profile_out is not None])

    async def _wait_ready(self, bots: list[BotProcess]) -> None:
        """Every bot answers /healthz (webhook mode, replicas), and in polling mode one long-polls for updates
        (after its start-up calls)."""
        await asyncio.gather(*(wait_healthy(bot) for bot in bots if bot.health_port is not None))
        deadline = time.monotonic() + 60
        while self.options.mode == "polling" and not self.telegram.polling_started:
            for bot in bots:
                if bot.exited():
                    raise RuntimeError(f"{bot.name} exited during start-up:\n{bot.log_tail()}")
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

    def _figures(self, *, wall: float, replicas: list[dict[str, Any]], harness_cpu: float, services_cpu: float,
                 machine_cpu: dict[str, float], load: tuple[tuple[float, ...], tuple[float, ...]],
                 profiles: list[Path]) -> dict[str, Any]:
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
        cpu = sum(replica["cpu_seconds"] for replica in replicas)
        deliveries = self.pusher.summary() if self.pusher is not None else None
        if deliveries is not None:
            for replica, accepted in zip(replicas, deliveries["accepted_per_replica"], strict=True):
                replica["updates_accepted"] = accepted
            deliveries["answer_200_ms"] = _quantiles(deliveries["answer_200_ms"])
        shared = self.options.backend == "pg-redis"
        return {
            "scenario": self.scenario.name,
            "mode": self.options.mode,
            "backend": self.options.backend,
            "replicas": len(replicas),
            "chats": self.scenario.chats,
            "questions_per_chat": self.scenario.questions,
            "ramp_seconds": self._ramp(),
            "answers_started": len(self.answers),
            "answers_completed": completed,
            "answers_failed": sum(answer.failed for answer in self.answers),
            "failed_finals": [answer.finals for answer in self.answers if answer.failed][:5],
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
            "peak_rss_mb": max(replica["peak_rss_mb"] for replica in replicas),
            "peak_rss_mb_sum": round(sum(replica["peak_rss_mb"] for replica in replicas), 1),
            "per_replica": replicas,
            # The PostgreSQL and Redis servers (every process of theirs on this machine) while the scenario ran.
            "services_cpu_seconds": round(services_cpu, 2) if shared else None,
            "services_cpu_seconds_per_answer": round(services_cpu / completed, 4) if shared and completed else None,
            "webhook": deliveries,
            "max_simultaneous_streams": _max_overlap(
                (request.at, request.finished_at or request.at) for request in requests.values()),
            "wall_seconds": round(wall, 1),
            "harness_cpu_seconds": round(harness_cpu, 2),
            # Everything else on the machine meanwhile (other work sharing the cores makes a run unrepresentative).
            "other_processes_cpu_seconds": round(machine_cpu["busy"] - cpu - harness_cpu - services_cpu, 2),
            "cpu_stolen_seconds": round(machine_cpu["steal"], 2),
            "harness_loop_lag_ms": _lag(self.loop_lags),
            "harness_stalls_over_100ms": self.long_lags[:50],
            "load_average_before": [round(value, 2) for value in load[0]],
            "load_average_after": [round(value, 2) for value in load[1]],
            "profiles": [str(profile) for profile in profiles],
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


# --- command line -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("1", "50", "500", "all"), default="all")
    parser.add_argument("--mode", choices=("polling", "webhook"), default="polling",
                        help="how updates reach the bot: it long-polls, or the fake Telegram POSTs them to its webhook")
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite",
                        help="the bot's storage: a SQLite file, or a fresh PostgreSQL database + Redis (coordination)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="bot processes sharing the work (needs --backend pg-redis; webhook mode: round robin)")
    parser.add_argument("--postgres-dsn", default=POSTGRES_DSN,
                        help="pg-redis: the server (and a database to connect to) on which each run creates and "
                             "drops a database of its own")
    parser.add_argument("--redis-url", default=REDIS_URL, help="pg-redis: REDIS_URL (each run has its own prefix)")
    parser.add_argument("--ttft", type=float, default=0.5, help="provider time to first token, s")
    parser.add_argument("--tps", type=float, default=30.0, help="provider tokens per second")
    parser.add_argument("--answer-tokens", type=int, default=200, help="tokens (stream chunks) per answer")
    parser.add_argument("--telegram-rtt", type=float, default=0.03, help="Telegram round trip, s")
    parser.add_argument("--questions", type=int, default=None,
                        help="questions per chat, each after the previous answer (default: 20, 3, 1 by scenario)")
    parser.add_argument("--stream-mode", choices=("auto", "edit"), default="auto",
                        help="the bot's STREAM_MODE: drafts in private chats (auto) or edited messages")
    parser.add_argument("--profile", choices=("pyinstrument", "py-spy"), default=None,
                        help="run the bot under a profiler (figures then include its overhead); py-spy attaches "
                             "once the bot is ready and covers the scenario only, pyinstrument covers start-up too")
    parser.add_argument("--profile-dir", type=Path, default=ROOT / "bench" / "profiles")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy's samples per second")
    parser.add_argument("--ramp", type=float, default=None,
                        help="seconds over which the concurrent chats start (default 8 for 50, 2 for 500)")
    parser.add_argument("--bot-nice", type=int, default=5,
                        help="run the bot at this niceness so the fakes (stand-ins for remote services) stay "
                             "prompt when it saturates the CPU; 0 for equal priority")
    parser.add_argument("--timeline", action="store_true", help="add every answer's timestamps to the results")
    parser.add_argument("--trace", action="store_true",
                        help="run the bot as bench.trace_bot: the wall time between the steps inside the bot from "
                             "update to provider request (adds a little overhead)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for a scenario's answers")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if args.replicas > 1 and args.backend != "pg-redis":
        parser.error("--replicas > 1 needs --backend pg-redis (replicas share PostgreSQL and Redis)")
    return args


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    options = Options(ttft=args.ttft, tps=args.tps, answer_tokens=args.answer_tokens,
                      telegram_rtt=args.telegram_rtt, questions=args.questions, stream_mode=args.stream_mode,
                      profile=args.profile, profile_dir=args.profile_dir, timeout=args.timeout, ramp=args.ramp,
                      timeline=args.timeline, bot_nice=args.bot_nice, mode=args.mode, backend=args.backend,
                      replicas=args.replicas, postgres_dsn=args.postgres_dsn, redis_url=args.redis_url,
                      profile_rate=args.profile_rate, trace=args.trace)
    known = scenarios(args.questions)
    names = list(known) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        print(f"scenario {name}: {known[name].chats} chat(s), {args.mode}, {args.backend}, {args.replicas} "
              f"process(es) ...", file=sys.stderr, flush=True)
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
        "code": code_state(),
        "options": {"ttft": args.ttft, "tps": args.tps, "answer_tokens": args.answer_tokens,
                    "telegram_rtt": args.telegram_rtt, "questions": args.questions,
                    "stream_mode": args.stream_mode, "profile": args.profile, "profile_rate": args.profile_rate,
                    "trace": args.trace,
                    "bot_nice": args.bot_nice,
                    "ramp": args.ramp, "mode": args.mode, "backend": args.backend, "replicas": args.replicas,
                    "photo": "1280x960 JPEG q87, distinct per question"},
        "scenarios": {result["scenario"]: result for result in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    for result in results:
        if "trace" in result:
            print(f"\nscenario {result['scenario']}, inside the bot (bench.trace_bot):\n"
                  f"{trace_bot.table(result['trace'])}")
    print(f"\nresults: {args.out}")
    return 0 if all(r["answers_completed"] == r["answers_started"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
