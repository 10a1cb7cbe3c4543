"""Deployment files agree with the bot: Dockerfile, compose.yaml, .dockerignore, the systemd unit, and
compose.replicas.yaml with its nginx.conf.

No Docker engine is needed: the Dockerfile is parsed, and what the image would run (its CMD, its HEALTHCHECK) is
run here with the environment the Dockerfile sets.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bot.__main__ import EXIT_CONFIG
from bot.config import Settings
from bot.web import SECRET_HEADER
from tests.conftest import API_KEY
from tests.fakes.telegram_server import FakeTelegram
from tests.fakes.vision_server import FakeVision
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = DEPLOY / "vision-bot.service"
REPLICAS = DEPLOY / "compose.replicas.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"

SHUTDOWN_GRACE: float = Settings.model_fields["shutdown_grace"].default
WEBHOOK_PORT: int = Settings.model_fields["webhook_port"].default
DEFAULT_DATABASE = Path(str(Settings.model_fields["database_url"].default).removeprefix("sqlite:///"))


# --- Dockerfile ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comments and blank lines dropped (as Docker does)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def arguments_of(instructions: list[Instruction], keyword: str) -> list[str]:
    return [instruction.arguments for instruction in instructions if instruction.keyword == keyword]


def only(instructions: list[Instruction], keyword: str) -> str:
    found = arguments_of(instructions, keyword)
    assert len(found) == 1, f"expected exactly one {keyword}, found {found}"
    return found[0]


def exec_form(arguments: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments as argv: JSON (exec form) or what /bin/sh -c would run."""
    if arguments.startswith("["):
        argv = json.loads(arguments)
        assert isinstance(argv, list)
        assert all(isinstance(item, str) for item in argv)
        return argv
    return ["/bin/sh", "-c", arguments]


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """The environment the Dockerfile's ENV lines set (both `ENV K=V K2=V2` and the legacy `ENV K V`)."""
    env: dict[str, str] = {}
    for arguments in arguments_of(instructions, "ENV"):
        tokens = shlex.split(arguments)
        if "=" in tokens[0]:
            env.update(token.split("=", 1) for token in tokens)
        else:
            key, _, value = arguments.partition(" ")
            env[key] = value.strip()
    return env


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Build-context paths that COPY/ADD take (copies from other stages excluded)."""
    sources: list[str] = []
    for instruction in instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        arguments = instruction.arguments
        tokens = shlex.split(arguments)
        flags = [token for token in tokens if token.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        rest = arguments.split(" ", len(flags))[-1] if flags else arguments
        paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        sources.extend(paths[:-1])
    return sources


def healthcheck_code(instructions: list[Instruction]) -> tuple[dict[str, str], str]:
    """The HEALTHCHECK's options and the Python code its `python -c` runs."""
    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.+)", only(instructions, "HEALTHCHECK"), flags=re.DOTALL)
    assert match, "HEALTHCHECK must be `HEALTHCHECK [options] CMD ...`"
    options = dict(option.removeprefix("--").split("=", 1) for option in match.group(1).split())
    argv = exec_form(match.group(2))
    if argv[:2] == ["/bin/sh", "-c"]:
        argv = shlex.split(argv[2])
    assert argv[:2] == ["python", "-c"], f"the healthcheck should be `python -c <code>` (no curl in slim): {argv}"
    assert len(argv) == 3
    return options, argv[2]


def seconds(duration: str) -> float:
    """Docker/Compose durations: 30s, 1m30s, 1h, 500ms."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(number + unit for number, unit in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def test_the_base_image_is_a_pinned_slim_python_that_satisfies_requires_python(dockerfile: list[Instruction]) -> None:
    image = only(dockerfile, "FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image)
    assert match, f"expected python:3.11-slim-<debian release>, got {image}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert minimum, requires
    assert (int(match[1]), int(match[2])) >= (int(minimum[1]), int(minimum[2]))


def test_the_image_runs_python_m_bot_in_exec_form(dockerfile: list[Instruction]) -> None:
    # Exec form: Python is the container's main process and gets SIGTERM itself (a shell would swallow it).
    assert arguments_of(dockerfile, "ENTRYPOINT") == []
    assert exec_form(only(dockerfile, "CMD")) == ["python", "-m", "bot"]
    assert only(dockerfile, "STOPSIGNAL") == "SIGTERM"


def test_the_image_environment(dockerfile: list[Instruction]) -> None:
    env = image_env(dockerfile)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["DATABASE_URL"] == "sqlite:////data/bot.sqlite3"
    assert env["METRICS_PORT"] == "9100"


def test_the_image_settings_are_valid_for_the_bot(dockerfile: list[Instruction]) -> None:
    env = image_env(dockerfile)
    settings = Settings(_env_file=None, bot_token="123:abc", vision_base_url="https://vision.example/v1",  # type: ignore[call-arg]
                        vision_api_key="sk-x", database_url=env["DATABASE_URL"], metrics_port=env["METRICS_PORT"])
    assert settings.database_url == "sqlite:////data/bot.sqlite3"
    assert settings.metrics_port == 9100


def test_conversations_live_in_the_data_volume(dockerfile: list[Instruction]) -> None:
    volumes = [path for arguments in arguments_of(dockerfile, "VOLUME") for path in exec_form_or_words(arguments)]
    assert volumes == ["/data"]
    database = PurePosixPath(image_env(dockerfile)["DATABASE_URL"].removeprefix("sqlite:///"))
    assert str(database.parent) in volumes


def test_a_relative_database_url_from_env_example_also_lands_in_the_volume(dockerfile: list[Instruction]) -> None:
    # `docker run --env-file .env` with .env.example's DATABASE_URL=sqlite:///data/bot.sqlite3 overrides the image's
    # ENV; relative to WORKDIR that is <WORKDIR>/data, which the image links to the volume.
    workdir = arguments_of(dockerfile, "WORKDIR")[-1]
    example = re.search(r"^DATABASE_URL=(.*)$", (ROOT / ".env.example").read_text(encoding="utf-8"), flags=re.M)
    assert example
    relative = PurePosixPath(example[1].removeprefix("sqlite:///"))
    assert not relative.is_absolute()
    run = " ".join(arguments_of(dockerfile, "RUN"))
    assert f"ln -s /data {PurePosixPath(workdir) / relative.parent}" in run


def exec_form_or_words(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else arguments.split()


def test_the_image_runs_as_an_unprivileged_user_that_owns_data(dockerfile: list[Instruction]) -> None:
    user = arguments_of(dockerfile, "USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    run = " && ".join(arguments_of(dockerfile, "RUN"))
    useradd = re.search(r"useradd\s+([^&;|]+)", run)
    assert useradd, "the Dockerfile should create its user"
    words = useradd[1].split()
    name, uid = words[-1], words[words.index("--uid") + 1]
    assert user in (name, uid)
    chown = re.search(r"chown\s+(?:-\S+\s+)*(\S+)\s+(?:\S+\s+)*/data\b", run)
    assert chown, "/data should belong to the bot's user (a new named volume copies that ownership)"
    assert chown[1].split(":")[0] in (name, uid)
    # USER before CMD, and nothing after USER needs root.
    keywords = [instruction.keyword for instruction in dockerfile]
    assert keywords.index("USER") < keywords.index("CMD")
    assert "RUN" not in keywords[keywords.index("USER"):]


def test_the_image_exposes_the_webhook_and_metrics_ports(dockerfile: list[Instruction]) -> None:
    exposed = {port.split("/")[0] for arguments in arguments_of(dockerfile, "EXPOSE") for port in arguments.split()}
    assert exposed == {str(WEBHOOK_PORT), image_env(dockerfile)["METRICS_PORT"]}


def test_the_package_is_installed_from_pyproject(dockerfile: list[Instruction]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    copied = {source.rstrip("/") for source in copy_sources(dockerfile)}
    # `pip install .` needs the metadata, the readme it names and the package itself.
    assert {"pyproject.toml", project["readme"], "bot"} <= copied
    assert any("pip install --no-cache-dir" in run for run in arguments_of(dockerfile, "RUN"))


def test_every_path_the_dockerfile_copies_exists_and_is_not_dockerignored(dockerfile: list[Instruction]) -> None:
    patterns = dockerignore_patterns()
    sources = copy_sources(dockerfile)
    assert sources
    for source in sources:
        matches = list(ROOT.glob(source.rstrip("/")))
        assert matches, f"COPY {source}: no such path in the repository"
        assert not is_dockerignored(source.rstrip("/"), patterns), f"COPY {source} is excluded by .dockerignore"
    package_files = [path.relative_to(ROOT).as_posix() for path in (ROOT / "bot").rglob("*.py")]
    assert package_files
    assert [path for path in package_files if is_dockerignored(path, patterns)] == []


# --- HEALTHCHECK --------------------------------------------------------------------------------------------

class _Health(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []  # noqa: RUF012 - shared on purpose: the test reads what the check requested

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        body = b"ok" if self.status == 200 else b"starting"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Health]]]:
    handler = type("Health", (_Health,), {"paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def run_healthcheck(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def test_the_healthcheck_is_standard_library_python_against_healthz(dockerfile: list[Instruction]) -> None:
    options, code = healthcheck_code(dockerfile)
    compile(code, "<HEALTHCHECK>", "exec")
    assert "http://127.0.0.1:" in code
    assert "/healthz" in code
    assert f"'{image_env(dockerfile)['METRICS_PORT']}'" in code  # the default port is the image's METRICS_PORT
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {str(node.module).split(".")[0] for node in ast.walk(ast.parse(code))
                 if isinstance(node, ast.ImportFrom)}
    assert imported
    assert imported <= set(sys.stdlib_module_names), "the healthcheck may use the standard library only"
    assert seconds(options["timeout"]) > 3  # the urlopen timeout must fit inside Docker's
    assert {"interval", "start-period", "retries"} <= options.keys()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_healthcheck_passes_only_when_healthz_says_ok(
        dockerfile: list[Instruction], health_server: tuple[ThreadingHTTPServer, type[_Health]], status: int,
        healthy: bool) -> None:
    server, handler = health_server
    handler.status = status
    port = server.server_address[1]
    # An HTTP proxy from .env must not stand between the check and 127.0.0.1.
    dead_proxy = "http://127.0.0.1:9"
    env = {**image_env(dockerfile), "METRICS_PORT": str(port), "HTTP_PROXY": dead_proxy, "http_proxy": dead_proxy}

    result = run_healthcheck(healthcheck_code(dockerfile)[1], env)

    assert (result.returncode == 0) is healthy, result.stderr
    assert handler.paths == ["/healthz"]


def test_the_healthcheck_fails_when_nothing_listens(
        dockerfile: list[Instruction], health_server: tuple[ThreadingHTTPServer, type[_Health]]) -> None:
    server, _ = health_server
    port = server.server_address[1]
    server.shutdown()
    server.server_close()

    result = run_healthcheck(healthcheck_code(dockerfile)[1], {**image_env(dockerfile), "METRICS_PORT": str(port)})

    assert result.returncode != 0


# --- the entry point --------------------------------------------------------------------------------------

def test_the_image_entry_point_starts_and_rejects_a_missing_token(
        dockerfile: list[Instruction], tmp_path: Path) -> None:
    """What the container does without BOT_TOKEN: the bot starts, validates its settings, exits 2 with one line."""
    argv = exec_form(only(dockerfile, "CMD"))
    assert argv[0] == "python"
    database = tmp_path / "data" / "bot.sqlite3"
    env = {
        **image_env(dockerfile),
        "DATABASE_URL": f"sqlite:///{database}",
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(ROOT),  # the image has the package installed; here it is the working tree
        "VISION_BASE_URL": "https://vision.example/v1",
        "VISION_API_KEY": "sk-test",
    }

    result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, check=False)

    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.strip() == "configuration error: BOT_TOKEN is required but not set"
    assert result.stdout == ""
    assert not database.exists()


async def test_the_image_command_serves_its_healthcheck_and_stops_cleanly_on_sigterm(
        dockerfile: list[Instruction], telegram: FakeTelegram, vision: FakeVision, tmp_path: Path) -> None:
    """The container's life without Docker: CMD with the image's ENV, HEALTHCHECK until healthy, `docker stop`."""
    argv = exec_form(only(dockerfile, "CMD"))
    _, code = healthcheck_code(dockerfile)
    database = tmp_path / "volume" / "bot.sqlite3"
    env = {
        **image_env(dockerfile),
        "DATABASE_URL": f"sqlite:///{database}",
        "METRICS_PORT": str(free_port()),  # the image's 9100 may be taken on this machine
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(ROOT),
        "BOT_TOKEN": telegram.token, "TELEGRAM_API_URL": telegram.base_url,
        "VISION_BASE_URL": vision.base_url, "VISION_API_KEY": API_KEY, "SHUTDOWN_GRACE": "1",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, *argv[1:], cwd=tmp_path, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        healthy = False
        for _ in range(100):
            check = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env,
                                                         stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.DEVNULL)
            if await asyncio.wait_for(check.wait(), timeout=10) == 0:
                healthy = True
                break
            assert process.returncode is None, "the bot exited before it became healthy"
            await asyncio.sleep(0.2)
        assert healthy, "the HEALTHCHECK never passed"

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()
    assert database.exists()
    assert "Traceback" not in stderr.decode()



# --- .dockerignore ----------------------------------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        patterns.append((negated, re.compile(_glob_to_regex(pattern))))
    return patterns


def _glob_to_regex(pattern: str) -> str:
    """Docker's pattern syntax (Go filepath.Match plus `**`): `*` stays within one path segment."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            regex += ".*"
            index += 2
        elif pattern[index] == "*":
            regex += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            regex += "[^/]"
            index += 1
        else:
            regex += re.escape(pattern[index])
            index += 1
    return regex


def is_dockerignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Last matching pattern wins; a pattern that matches a folder covers everything inside it."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


@pytest.mark.parametrize("path", [
    ".env", ".env.production", "data", "data/bot.sqlite3", "bot.sqlite3", ".git/config", ".venv/bin/python",
    "venv/bin/python", "tests/test_deploy.py", "bot/__pycache__/app.cpython-311.pyc", ".pytest_cache/README.md",
    ".ruff_cache/CACHEDIR.TAG",
])
def test_dockerignore_keeps_secrets_state_and_tooling_out_of_the_build_context(path: str) -> None:
    assert is_dockerignored(path, dockerignore_patterns())


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "bot", "bot/__main__.py", "deploy/Dockerfile"])
def test_dockerignore_keeps_what_the_build_needs(path: str) -> None:
    assert not is_dockerignored(path, dockerignore_patterns())


# --- compose.yaml -----------------------------------------------------------------------------------------

def load_compose(text: str) -> dict[str, Any]:
    document = yaml.safe_load(text)
    assert isinstance(document, dict)
    return document


def uncomment_optional_parts(text: str) -> str:
    """The commented-out YAML (a bare `#` in column 0 before indented or top-level YAML), enabled."""
    return re.sub(r"^#(?= {2,}|[^\s#])", "", text, flags=re.M)


def env_files(service: dict[str, Any]) -> list[str]:
    value = service.get("env_file", [])
    entries = [value] if isinstance(value, str) else value
    return [entry if isinstance(entry, str) else entry["path"] for entry in entries]


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source for the short (`source:target[:mode]`) and the long syntax."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE.read_text(encoding="utf-8"))


def test_compose_builds_the_image_from_the_repository_root(compose: dict[str, Any]) -> None:
    build = compose["services"]["bot"]["build"]
    assert build == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert ((COMPOSE.parent / build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_reads_the_repository_env_file(compose: dict[str, Any]) -> None:
    files = env_files(compose["services"]["bot"])
    assert files == ["../.env"]
    assert (COMPOSE.parent / files[0]).resolve() == ROOT / ".env"


def test_compose_keeps_data_in_a_named_volume(compose: dict[str, Any], dockerfile: list[Instruction]) -> None:
    mounts = volume_mounts(compose["services"]["bot"])
    assert "/data" in mounts
    source = mounts["/data"]
    assert source in (compose.get("volumes") or {}), "the /data volume should be a declared named volume"
    assert exec_form_or_words(only(dockerfile, "VOLUME")) == ["/data"]


def test_compose_restarts_and_stops_gracefully(compose: dict[str, Any]) -> None:
    bot = compose["services"]["bot"]
    assert bot["restart"] == "unless-stopped"
    assert seconds(bot["stop_grace_period"]) > SHUTDOWN_GRACE + 5
    assert (bot.get("healthcheck") or {}).get("disable") is not True  # the image's HEALTHCHECK applies


def test_compose_has_only_the_bot_running_by_default(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"bot"}
    assert "ports" not in compose["services"]["bot"]


def test_compose_optional_parts_are_valid_when_uncommented(dockerfile: list[Instruction]) -> None:
    enabled = load_compose(uncomment_optional_parts(COMPOSE.read_text(encoding="utf-8")))

    bot = enabled["services"]["bot"]
    api = enabled["services"]["telegram-bot-api"]
    assert api["image"].split(":")[0] == "aiogram/telegram-bot-api"
    # the server needs TELEGRAM_API_ID and TELEGRAM_API_HASH: from the same .env as the bot
    assert env_files(api) == ["../.env"]
    assert set(volume_mounts(api).values()) <= set(enabled["volumes"])
    assert bot["environment"]["TELEGRAM_API_URL"] == "http://telegram-bot-api:8081"
    assert "telegram-bot-api" in bot["depends_on"]
    published = {port.split(":")[-1] for port in bot["ports"]}
    assert published == {str(WEBHOOK_PORT), image_env(dockerfile)["METRICS_PORT"]}
    # everything else is unchanged
    assert bot["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert volume_mounts(bot)["/data"] in enabled["volumes"]


# --- systemd ----------------------------------------------------------------------------------------------

def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_runs_the_bot_from_its_venv_as_an_unprivileged_user() -> None:
    service = unit_settings(UNIT.read_text(encoding="utf-8"))["Service"]
    workdir = service["WorkingDirectory"][-1]
    assert shlex.split(service["ExecStart"][-1]) == [f"{workdir}/.venv/bin/python", "-m", "bot"]
    assert service["User"][-1] not in ("root", "0")
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"][-1].split()
    assert service["KillSignal"][-1] == "SIGTERM"
    assert float(service["TimeoutStopSec"][-1]) > SHUTDOWN_GRACE + 5
    # with ProtectSystem=strict the default database folder must be writable
    assert service["ProtectSystem"][-1] == "strict"
    writable = service["ReadWritePaths"][-1].split()
    assert str(PurePosixPath(workdir) / DEFAULT_DATABASE.parent) in writable


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: cannot verify deploy/vision-bot.service here")
    # The installed paths and user exist only on the target machine: point ExecStart at this Python, drop User/Group.
    text = re.sub(r"^ExecStart=.*$", f"ExecStart={sys.executable} -m bot", UNIT.read_text(encoding="utf-8"),
                  flags=re.M)
    text = re.sub(r"^(?:User|Group)=.*\n", "", text, flags=re.M)
    unit = tmp_path / UNIT.name
    unit.write_text(text, encoding="utf-8")

    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)

    output = result.stdout + result.stderr
    # verify exits 0 even for unknown keys or unparsable values; those are printed with the unit's name
    complaints = [line for line in output.splitlines() if UNIT.name in line]
    assert result.returncode == 0, output
    assert complaints == [], output


# --- compose.replicas.yaml and nginx.conf -----------------------------------------------------------------

HARDENING = ("read_only", "tmpfs", "cap_drop", "security_opt", "restart", "stop_grace_period", "init", "ulimits")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's interpolation: `$$`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset)."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, default = match["name"], match["operator"], match["default"] or ""
        found = variables.get(name)
        if operator == ":-" and not found:
            return default
        if operator == "-" and found is None:
            return default
        return found or ""

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<operator>:?-)(?P<default>[^}]*))?\}", replace, value)


def service_environment(service: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    """A service's `environment` (mapping or list form), interpolated with `variables` as from --env-file."""
    value = service.get("environment") or {}
    pairs = value.items() if isinstance(value, dict) else (entry.split("=", 1) for entry in value)
    return {key: interpolate(str(item), variables) for key, item in pairs}


def published_targets(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes (short `[[ip:]host:]container[/proto]` and long syntax)."""
    targets: set[int] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            targets.add(int(port["target"]))
        else:
            targets.add(int(str(port).split("/")[0].split(":")[-1]))
    return targets


@pytest.fixture(scope="module")
def replicas() -> dict[str, Any]:
    return load_compose(REPLICAS.read_text(encoding="utf-8"))


def test_replicas_compose_runs_three_bot_replicas_with_postgres_redis_and_nginx(replicas: dict[str, Any]) -> None:
    assert set(replicas["services"]) == {"bot", "postgres", "redis", "nginx"}
    bot = replicas["services"]["bot"]
    # deploy.replicas: what `docker compose up` starts without swarm; a legacy `scale:` would have to agree
    assert bot["deploy"]["replicas"] == 3
    assert bot.get("scale", 3) == 3
    # replicas cannot share a container name or a published port
    assert "container_name" not in bot
    assert "ports" not in bot
    # a project of its own: `up` of one file does not take over the single-instance deployment's containers
    assert replicas["name"] != load_compose(COMPOSE.read_text(encoding="utf-8"))["name"]


def test_replicas_compose_builds_the_bot_like_compose_yaml(replicas: dict[str, Any], compose: dict[str, Any]) -> None:
    bot, single = replicas["services"]["bot"], compose["services"]["bot"]
    assert bot["build"] == single["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert env_files(bot) == env_files(single) == ["../.env"]
    assert (REPLICAS.parent / env_files(bot)[0]).resolve() == ROOT / ".env"


def test_replicas_compose_keeps_the_hardening_of_compose_yaml(replicas: dict[str, Any],
                                                              compose: dict[str, Any]) -> None:
    bot = replicas["services"]["bot"]
    assert {key: bot.get(key) for key in HARDENING} == {key: compose["services"]["bot"].get(key) for key in HARDENING}
    assert bot["read_only"] is True
    assert bot["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in bot["security_opt"]
    assert bot["restart"] == "unless-stopped"
    assert seconds(bot["stop_grace_period"]) > SHUTDOWN_GRACE + 5
    assert bot["ulimits"]["nofile"] == 65536
    assert (bot.get("healthcheck") or {}).get("disable") is not True  # the image's HEALTHCHECK applies


def test_replicas_wait_for_healthy_postgres_and_redis(replicas: dict[str, Any]) -> None:
    services = replicas["services"]
    assert services["bot"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                             "redis": {"condition": "service_healthy"}}
    postgres_check = services["postgres"]["healthcheck"]["test"]
    redis_check = services["redis"]["healthcheck"]["test"]
    assert postgres_check[0] == "CMD-SHELL"
    assert shlex.split(postgres_check[1])[0] == "pg_isready"
    assert redis_check == ["CMD", "redis-cli", "ping"]
    for name in ("postgres", "redis"):
        assert {"interval", "timeout", "retries"} <= services[name]["healthcheck"].keys()


@pytest.mark.parametrize("variables", [
    {},
    {"POSTGRES_USER": "bots", "POSTGRES_PASSWORD": "Secret123", "POSTGRES_DB": "vision"},
], ids=["defaults", "from-env-file"])
def test_replicas_use_the_postgres_service_with_its_credentials(replicas: dict[str, Any],
                                                                variables: dict[str, str]) -> None:
    services = replicas["services"]
    url = urlsplit(service_environment(services["bot"], variables)["DATABASE_URL"])
    postgres = service_environment(services["postgres"], variables)

    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]
    assert all(postgres.values()), "every credential has a default"
    for key, value in variables.items():
        assert postgres[key] == value


def test_postgres_keeps_its_data_in_a_named_volume_and_is_not_published(replicas: dict[str, Any]) -> None:
    postgres = replicas["services"]["postgres"]
    assert postgres["image"].split(":")[0] == "postgres"
    # postgres images up to 17 keep PGDATA here (18 moved it: changing the major version needs an upgrade anyway)
    major = re.match(r"\d+", postgres["image"].split(":")[1])
    assert major
    assert int(major[0]) <= 17
    assert volume_mounts(postgres)["/var/lib/postgresql/data"] in replicas["volumes"]
    assert "ports" not in postgres
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert re.fullmatch(rf"\$\{{{name}:-\w+\}}", postgres["environment"][name]), name


def test_redis_is_the_official_image_without_persistence(replicas: dict[str, Any]) -> None:
    redis = replicas["services"]["redis"]
    assert redis["image"].split(":")[0] == "redis"
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert "ports" not in redis


def test_the_replicas_settings_are_webhook_postgres_redis_and_valid_for_the_bot(replicas: dict[str, Any],
                                                                              dockerfile: list[Instruction]) -> None:
    env = service_environment(replicas["services"]["bot"], {})
    assert env["BOT_MODE"] == "webhook"
    assert int(env.get("WEBHOOK_PORT", WEBHOOK_PORT)) == WEBHOOK_PORT
    assert env.get("METRICS_PORT", image_env(dockerfile)["METRICS_PORT"]) == image_env(dockerfile)["METRICS_PORT"]
    redis = urlsplit(env["REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port or 6379, redis.path) == ("redis", "redis", 6379, "/0")

    # What a replica's Settings make of it, with the webhook's URL and secret from .env.
    known = {key.lower(): value for key, value in env.items() if key.lower() in Settings.model_fields}
    assert set(env) - {key.upper() for key in known} <= {"REDIS_URL"}  # REDIS_URL: the coordination's own setting
    settings = Settings(_env_file=None, bot_token="123:abc", vision_base_url="https://vision.example/v1",  # type: ignore[call-arg]
                        vision_api_key="sk-x", webhook_url="https://bot.example.com/tg/hook",
                        webhook_secret="s3cret", **known)
    assert settings.bot_mode == "webhook"
    assert settings.webhook_port == WEBHOOK_PORT
    assert settings.webhook_host == "0.0.0.0"
    assert settings.database_url.startswith("postgresql://")


def test_nginx_mounts_its_config_read_only_and_publishes_its_port(replicas: dict[str, Any]) -> None:
    nginx = replicas["services"]["nginx"]
    assert nginx["image"].split(":")[0] == "nginx"
    mounts = [volume for volume in nginx["volumes"] if isinstance(volume, str)]
    config = [volume.split(":") for volume in mounts if volume.split(":")[1] == "/etc/nginx/nginx.conf"]
    assert len(config) == 1
    source, _, mode = config[0]
    assert (REPLICAS.parent / source).resolve() == NGINX_CONF
    assert mode == "ro"
    assert published_targets(nginx) == listen_ports(nginx_directives(NGINX_CONF.read_text(encoding="utf-8")))


# nginx.conf, parsed into (enclosing blocks, directive, arguments)

@dataclass(frozen=True)
class Directive:
    blocks: tuple[str, ...]
    name: str
    arguments: tuple[str, ...]


def nginx_directives(text: str) -> list[Directive]:
    """Every directive (block openers included) with the names of the blocks around it; comments dropped."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{};]|[^\s{};"\']+',
                        re.sub(r"#[^\n]*", "", text))
    directives: list[Directive] = []
    blocks: list[str] = []
    words: list[str] = []
    for token in tokens:
        if token in (";", "{"):
            assert words, f"empty directive before {token!r}"
            directives.append(Directive(tuple(blocks), words[0], tuple(word.strip("\"'") for word in words[1:])))
            if token == "{":
                blocks.append(words[0])
            words = []
        elif token == "}":
            assert not words, f"directive without ';': {words}"
            assert blocks, "unbalanced '}'"
            blocks.pop()
        else:
            words.append(token)
    assert not words, f"directive without ';' at the end: {words}"
    assert not blocks, f"unclosed blocks: {blocks}"
    return directives


def named(directives: list[Directive], name: str) -> list[Directive]:
    return [directive for directive in directives if directive.name == name]


def listen_ports(directives: list[Directive]) -> set[int]:
    return {int(directive.arguments[0].rsplit(":", 1)[-1]) for directive in named(directives, "listen")}


@pytest.fixture(scope="module")
def nginx_conf() -> list[Directive]:
    return nginx_directives(NGINX_CONF.read_text(encoding="utf-8"))


def test_nginx_proxies_everything_to_the_bot_service_on_the_webhook_port(nginx_conf: list[Directive]) -> None:
    passes = named(nginx_conf, "proxy_pass")
    assert passes
    for directive in passes:
        assert directive.blocks == ("http", "server", "location")
        match = re.fullmatch(r"http://\$(\w+)", directive.arguments[0])
        assert match, "a variable in proxy_pass: the name is resolved at request time, so new replicas are found"
        assert upstream_of(nginx_conf, match[1]) == f"bot:{WEBHOOK_PORT}"
    assert {directive.arguments[0] for directive in named(nginx_conf, "location")} == {"/"}


def upstream_of(directives: list[Directive], variable: str) -> str:
    """The value of `$variable`: from `set $variable value;` or a `map ... $variable { default value; }`."""
    values = [directive.arguments[1] for directive in named(directives, "set")
              if directive.arguments[0] == f"${variable}"]
    maps = [index for index, directive in enumerate(directives)
            if directive.name == "map" and directive.arguments[1] == f"${variable}"]
    for index in maps:
        entries = [directive for directive in directives[index + 1:] if directive.blocks[-1:] == ("map",)]
        values += [entry.arguments[0] for entry in entries if entry.name == "default"][:1]
    assert len(set(values)) == 1, f"${variable} should have one value: {values}"
    return values[0]


def test_nginx_finds_replicas_through_dockers_dns_and_skips_dead_ones(nginx_conf: list[Directive]) -> None:
    (resolver,) = named(nginx_conf, "resolver")
    assert resolver.arguments[0] == "127.0.0.11"
    valid = [argument.removeprefix("valid=") for argument in resolver.arguments if argument.startswith("valid=")]
    assert valid, "resolver without valid=: Docker's answers would be cached for their TTL"
    assert seconds(valid[0]) <= 30
    (next_upstream,) = named(nginx_conf, "proxy_next_upstream")
    assert {"error", "timeout"} <= set(next_upstream.arguments)
    assert "off" not in next_upstream.arguments
    # retrying needs the body: request buffering stays on (its default)
    assert [directive.arguments for directive in named(nginx_conf, "proxy_request_buffering")] in ([], [("on",)])


def test_nginx_passes_the_secret_header_and_limits_the_body(nginx_conf: list[Directive]) -> None:
    headers = {directive.arguments[0].lower(): directive.arguments[1]
               for directive in named(nginx_conf, "proxy_set_header")}
    variable = "$http_" + SECRET_HEADER.lower().replace("-", "_")
    assert headers[SECRET_HEADER.lower()] == variable
    assert "underscores_in_headers" not in {directive.name for directive in nginx_conf}  # not needed: no underscores
    (limit,) = named(nginx_conf, "client_max_body_size")
    assert limit.arguments == ("1m",)  # the bot's webhook accepts up to 1 MiB


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(path, os.X_OK)), None)
    if found is None:
        pytest.skip("nginx is not installed: cannot run nginx -t on deploy/nginx.conf here")
    return found


def for_nginx_t(text: str, folder: Path) -> str:
    """The config as this machine can check it: what exists only in the container (the `bot` name, the nginx user,
    ports below 1024, the log and pid paths, the certificates) replaced by local equivalents."""
    text = text.replace(f"bot:{WEBHOOK_PORT}", f"127.0.0.1:{WEBHOOK_PORT}")
    text = re.sub(r"^user\s[^;]*;\n", "", text, flags=re.M)
    text = re.sub(r"^pid\s[^;]*;", f"pid {folder / 'nginx.pid'};", text, flags=re.M)
    text = re.sub(r"\baccess_log\s+/dev/stdout\b", f"access_log {folder / 'access.log'}", text)
    text = re.sub(r"\blisten\s+\d+\b", lambda _: f"listen 127.0.0.1:{free_port()}", text)
    return text.replace("/etc/nginx/certs/", f"{folder}/certs/")


def nginx_t(text: str, folder: Path) -> None:
    binary = nginx_binary()
    config = folder / "nginx.conf"
    config.write_text(for_nginx_t(text, folder), encoding="utf-8")

    result = subprocess.run([binary, "-t", "-p", str(folder), "-c", str(config), "-e", "stderr"],
                            capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert re.search(r"\bbot:8080\b", for_nginx_t(text, tmp_path)) is None

    nginx_t(text, tmp_path)


def test_the_optional_tls_parts_are_valid_when_uncommented(replicas: dict[str, Any], tmp_path: Path) -> None:
    enabled = load_compose(uncomment_optional_parts(REPLICAS.read_text(encoding="utf-8")))
    nginx = enabled["services"]["nginx"]
    certs = volume_mounts(nginx)["/etc/nginx/certs"]
    assert (REPLICAS.parent / certs).resolve() == DEPLOY / "certs"
    assert volume_mounts(nginx)["/etc/nginx/nginx.conf"] == volume_mounts(replicas["services"]["nginx"])[
        "/etc/nginx/nginx.conf"]
    text = uncomment_optional_parts(NGINX_CONF.read_text(encoding="utf-8"))
    directives = nginx_directives(text)
    assert published_targets(nginx) == listen_ports(directives) == {80, 443}
    assert "ssl" in next(d for d in named(directives, "listen") if d.arguments[0] == "443").arguments
    for name in ("ssl_certificate", "ssl_certificate_key"):
        (path,) = (directive.arguments[0] for directive in named(directives, name))
        assert path.startswith("/etc/nginx/certs/")
    # the TLS server proxies like the plain one
    assert len({directive.arguments for directive in named(directives, "proxy_pass")}) == 1

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a certificate for nginx -t")
    nginx_binary()
    certificates = tmp_path / "certs"
    certificates.mkdir()
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(certificates / "privkey.pem"), "-out", str(certificates / "fullchain.pem")],
                   capture_output=True, timeout=60, check=True)
    nginx_t(text, tmp_path)
