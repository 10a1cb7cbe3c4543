"""The bot under test: `python -m bot` in a subprocess (optionally under a profiler), its CPU time and peak RSS.

Also what the benchmark needs around it: a free local port, waiting for `/healthz`, and the CPU time of the
PostgreSQL and Redis servers on this machine (read from /proc, like the bot's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
# Settings a developer's shell may carry that must not leak into the bot under test.
CLEANED_PREFIXES = ("BOT_", "VISION_", "TELEGRAM_", "DATABASE_", "CONTEXT_", "STREAM_", "LOG_", "METRICS_", "USER_",
                    "CHAT_", "ALLOWED_", "ADMIN_", "REDIS_", "WEBHOOK_", "PUBLIC_", "S3_", "SHUTDOWN_")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BotProcess:
    """`python -m bot` (optionally under a profiler) with the fakes' addresses in its environment."""

    def __init__(self, workdir: Path, env: dict[str, str], *, profile: str | None = None,
                 profile_out: Path | None = None, nice: int = 0, name: str = "bot", health_port: int | None = None,
                 webhook_url: str | None = None, profile_rate: int = 100, module: str = "bot") -> None:
        self.workdir = workdir
        self.module = module  # what `python -m` runs: the bot, or bench.trace_bot (the bot with a stopwatch)
        self.profile_rate = profile_rate  # py-spy's samples per second
        self.health_port = health_port  # where GET /healthz answers (the webhook or the metrics server), if any
        self.webhook_url = webhook_url  # where the load balancer POSTs updates (webhook mode)
        self.nice = nice
        self.env = env
        self.name = name
        self.profile = profile
        self.profile_out = profile_out
        self.process: asyncio.subprocess.Process | None = None
        self.profiler: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.log_path = workdir / "bot.log"

    async def start(self) -> None:
        command = [sys.executable, "-m", self.module]
        if self.profile == "pyinstrument":
            command = [sys.executable, "-m", "pyinstrument", "-r", "html", "-o", str(self.profile_out),
                       "-m", self.module]
        clean = {key: value for key, value in os.environ.items() if not key.startswith(CLEANED_PREFIXES)}
        if self.nice:
            command = ["nice", "-n", str(self.nice), *command]  # nice execs the command: same pid
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *command, cwd=self.workdir, env={**clean, "PYTHONPATH": str(ROOT), **self.env},
                stdout=log, stderr=asyncio.subprocess.STDOUT)
        self.pid = self.process.pid

    async def start_profiler(self) -> None:
        """py-spy attaches to the running bot (start-up is over): the profile covers the scenario only."""
        if self.profile != "py-spy" or self.pid is None:
            return
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        with (self.workdir / "py-spy.log").open("wb") as log:
            self.profiler = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(self.pid), "--rate", str(self.profile_rate), "--nonblocking",
                "--format", "raw", "--threads", "--output", str(self.profile_out), stdout=log,
                stderr=asyncio.subprocess.STDOUT)
        await asyncio.sleep(0.3)  # attaching takes a moment
        if self.profiler.returncode is not None:
            raise RuntimeError(f"py-spy failed: {(self.workdir / 'py-spy.log').read_text(errors='replace')}")

    async def stop_profiler(self) -> None:
        """py-spy writes its profile when interrupted."""
        if self.profiler is None or self.profiler.returncode is not None:
            return
        self.profiler.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.profiler.wait(), timeout=60)
        except TimeoutError:
            self.profiler.kill()
            await self.profiler.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the bot process, all its threads (from /proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

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
        await self.stop_profiler()
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_healthy(bot: BotProcess, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Until the bot's `GET /healthz` answers 200: its start-up calls (setWebhook, setMyCommands...) are done."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{bot.health_port}/healthz"
    async with aiohttp.ClientSession() as session:
        while True:
            if bot.exited():
                raise RuntimeError(f"{bot.name} exited during start-up:\n{bot.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{bot.name} was not healthy within {timeout:.0f} s:\n{bot.log_tail()}")
            await asyncio.sleep(0.05)


def service_cpu_seconds(names: tuple[str, ...] = ("postgres", "redis-server")) -> float:
    """CPU time of the database and Redis servers on this machine: every process of that name, plus what its
    exited children used (a PostgreSQL connection's backend process ends with the connection and is counted
    into the postmaster's cutime/cstime when reaped)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            head, _, rest = stat.read_text().rpartition(")")
            if head.partition("(")[2] not in names:
                continue
            fields = rest.split()
            total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


def machine_cpu_seconds() -> dict[str, float]:
    """CPU time of the whole machine so far, all cores (from /proc/stat): busy (user, nice, system, irq, softirq)
    and stolen by the hypervisor."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLOCK_TICKS, "steal": steal / CLOCK_TICKS}
