"""The benchmark's report: the machine and code measured, and the figures as a table."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import PIL
from PIL import features

from bench.process import ROOT


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
    ("  webhook POST -> bot's 200 (update recorded, queued), ms", "webhook.answer_200_ms", "q"),
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
    ("bot CPU seconds per answer (all replicas)", "cpu_seconds_per_answer", "v"),
    ("PostgreSQL + Redis servers' CPU seconds per answer", "services_cpu_seconds_per_answer", "v"),
    ("bot CPU utilisation (cores, all replicas)", "bot_cpu_utilisation", "v"),
    ("bot peak RSS, MB (largest replica)", "peak_rss_mb", "v"),
    ("bot peak RSS summed over replicas, MB", "peak_rss_mb_sum", "v"),
    ("per replica: CPU s / peak RSS MB / updates", "per_replica", "replicas"),
    ("answers completed / started", "answers_completed", "ratio"),
    ("max simultaneous provider streams", "max_simultaneous_streams", "v"),
    ("wall seconds", "wall_seconds", "v"),
    ("fakes' event-loop lag p99 / max, ms", "harness_loop_lag_ms", "lag"),
    ("other processes' CPU seconds meanwhile (noise)", "other_processes_cpu_seconds", "v"),
)


def table(results: list[dict[str, Any]]) -> str:
    header = ["figure (p50 / p95)"] + [_column(result) for result in results]
    rows = [header]
    for label, key, kind in ROWS:
        values = [_lookup(result, key) for result in results]
        if all(value is None for value in values) or (kind == "replicas" and all(len(v) < 2 for v in values)):
            continue  # a figure of another mode or backend
        cells = [label]
        for result, value in zip(results, values, strict=True):
            if value is None:
                cells.append("-")
            elif kind == "replicas":
                cells.append(", ".join(f"{r['cpu_seconds']} / {r['peak_rss_mb']:.0f} / {r.get('updates_accepted', '-')}"
                                       for r in value))
            elif kind == "q":
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


def _column(result: dict[str, Any]) -> str:
    chats = f"{result['chats']} chat{'s' if result['chats'] > 1 else ''}"
    replicas = f" x{result['replicas']}" if result.get("replicas", 1) > 1 else ""
    return f"{chats}, {result.get('mode', 'polling')}, {result.get('backend', 'sqlite')}{replicas}"


def _lookup(result: dict[str, Any], key: str) -> Any:
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 100:
        return f"{value:.0f}"
    return str(value)


def code_state() -> dict[str, Any]:
    """The commit measured, and the files that differed from it (other work in progress shows up here)."""
    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=all").splitlines()
                         if line[3:].startswith(("bot/", "tests/fakes/", "bench/"))]}
