"""Style is part of the suite, so the README's single test command is also the lint gate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_aiogram_stays_out_of_clients_and_storage() -> None:
    """Dependencies point one way: clients and storage must work without the Telegram framework."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("bot/clients", "bot/storage")
        for path in (ROOT / folder).rglob("*.py")
        if "aiogram" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
