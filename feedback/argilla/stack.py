"""The local Argilla stack: argilla-server 2.8 + its rq worker, Redis and osmem-server.

Everything lives under `HOME/argilla/`: Argilla's SQLite database (kept across restarts),
the owner's credentials (mode 0600), `state.json` (the pids and ports of the processes we
started) and one log per process. The search engine (osmem-server) keeps its indices in
memory only, so `up` rebuilds them from the database with argilla-server's own `reindex`:
responses submitted before `down` are there again after `up`.

The server runs in its own virtualenv (argilla-server pins clash with ours) through
`feedback/argilla/launcher.py`, which applies the scripted-update fix first. `down` stops
exactly the process groups `up` started, identified by pid AND start time, so a recycled
pid is never signalled.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback.argilla.launcher import COMMANDS_FLAG, STEP_DONE
from feedback.argilla.process_groups import group_memory_kb, start_time, stop_group
from feedback.atomic_write import write_atomic
from feedback.errors import FeedbackError

LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
SERVER_REQUIREMENTS = ("click<8.2", "argilla-server==2.8.0", "osmem-server==0.1.6")
OWNER = "owner"
# Start order; `down` stops them in reverse.
PROCESSES = ("redis", "osmem", "worker", "server")


class ArgillaError(FeedbackError):
    """The Argilla stack or server cannot do what was asked; the message says what to do."""


@dataclass(frozen=True)
class Credentials:
    """Where an Argilla server is and the owner's API key for it."""

    url: str
    api_key: str = field(repr=False)  # never in a log line or an error
    username: str = OWNER
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LocalStack:
    """The local stack of one tuneloop HOME."""

    home: Path
    venv: Path
    port: int = 6900
    workspace: str = "tuneloop"

    @property
    def root(self) -> Path:
        return self.home / "argilla"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    # Credentials and state -----------------------------------------------------------

    def credentials(self) -> Credentials | None:
        """The owner's credentials, once the first `up` has created them."""
        try:
            data = json.loads(self.credentials_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return Credentials(self.url, data["api_key"], data["username"], data["password"])

    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return {"processes": {}, "ports": {}}

    def _save_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_file, json.dumps(state, indent=1))

    def _alive(self, state: dict[str, Any]) -> dict[str, int]:
        """name -> pid of the recorded processes that are still the ones we started."""
        return {
            name: info["pid"]
            for name, info in state.get("processes", {}).items()
            if start_time(info["pid"]) == info["start"]
        }

    # Up --------------------------------------------------------------------------------

    def ensure_venv(self) -> None:
        """Create the server's virtualenv once (idempotent; .ci/setup normally did it)."""
        if self._venv_ready():
            return
        print(f"[argilla] building {self.venv} (argilla-server 2.8.0, once)", file=sys.stderr)
        if not self.python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        subprocess.run(
            [str(self.python), "-m", "pip", "install", "-q", *SERVER_REQUIREMENTS], check=True
        )
        if not self._venv_ready():
            raise ArgillaError(f"could not build {self.venv}; see the pip output above")

    def _venv_ready(self) -> bool:
        if not self.python.exists():
            return False
        # Found, not imported: importing argilla_server takes seconds, paid again by every
        # process that starts from it.
        probe = "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))"
        argv = [str(self.python), "-c", probe, "argilla_server", "osmem_server"]
        return subprocess.run(argv, capture_output=True).returncode == 0

    def up(self, timeout: float = 180.0) -> dict[str, Any]:
        """Start whatever is not running, wait until the server is healthy; idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)
        state = self._state()
        alive = self._alive(state)
        if set(alive) == set(PROCESSES) and self._healthy(timeout=5.0):
            return self.status()
        if alive:  # a partial stack (one process died): start over cleanly
            self.down()
        self.ensure_venv()
        state = {"processes": {}, "ports": {"redis": _free_port(), "osmem": _free_port()}}
        self._save_state(state)
        try:
            self._start(state, "redis", [_redis_binary(), *self._redis_args(state)])
            self._start(state, "osmem", [self._osmem_binary(), *self._osmem_args(state)])
            _wait_port(state["ports"]["redis"], timeout=30)
            _wait_port(state["ports"]["osmem"], timeout=30)
            # The worker needs only Redis until the server hands it jobs: it starts while the
            # database is migrated, the owner made and the indices rebuilt (one process).
            self._start(state, "worker", self._launch("worker", "--num-workers", "1"))
            self._prepare(state)
            self._start(
                state,
                "server",
                self._launch(
                    "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"
                ),
            )
            self._wait_healthy(state, timeout)
        except BaseException:
            self.down()
            raise
        return self.status()

    def _redis_args(self, state: dict[str, Any]) -> list[str]:
        port = str(state["ports"]["redis"])
        return ["--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
                "--dir", str(self.root), "--daemonize", "no"]  # fmt: skip

    def _osmem_args(self, state: dict[str, Any]) -> list[str]:
        addr = f"127.0.0.1:{state['ports']['osmem']}"
        return ["--addr", addr, "--no-stdin-watch", "--no-ja"]

    def _osmem_binary(self) -> str:
        probe = "import osmem_server; print(osmem_server.resolve_binary())"
        out = subprocess.run([str(self.python), "-c", probe], capture_output=True, text=True)
        if out.returncode != 0:
            raise ArgillaError(f"osmem-server is missing from {self.venv}: {out.stderr.strip()}")
        return out.stdout.strip()

    def _launch(self, *args: str) -> list[str]:
        return [str(self.python), str(LAUNCHER), *args]

    def _env(self, state: dict[str, Any]) -> dict[str, str]:
        ports = state["ports"]
        return {
            **os.environ,
            "ARGILLA_HOME_PATH": str(self.root),
            "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{(self.root / 'argilla.db').resolve()}",
            "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
            "ARGILLA_SEARCH_ENGINE": "opensearch",
            "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{ports['osmem']}",
            "ARGILLA_ENABLE_TELEMETRY": "0",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def _start(self, state: dict[str, Any], name: str, argv: list[str]) -> None:
        """Start one process in its own session (so `down` can stop its whole group)."""
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=self._env(state),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.root,
            )
        state["processes"][name] = {"pid": proc.pid, "start": start_time(proc.pid)}
        self._save_state(state)

    def _server_cli(self, state: dict[str, Any], *commands: list[str]) -> tuple[int, str]:
        """Run argilla-server commands in turn in one process: how many finished, and the
        failure's message when one failed ("" when none did). They travel on stdin, so their
        secrets are never in the argv that every local user can read in `ps` (the launcher
        hands them to argilla-server's CLI in-process)."""
        out = subprocess.run(
            self._launch(COMMANDS_FLAG),
            input=json.dumps([list(c) for c in commands]),
            env=self._env(state),
            capture_output=True,
            text=True,
            timeout=300,
        )
        done = sum(line.startswith(STEP_DONE) for line in out.stdout.splitlines())
        if out.returncode == 0 or done == len(commands):
            return done, ""
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return done, f"argilla-server {' '.join(commands[done][:3])} failed: {tail[0]}"

    def _prepare(self, state: dict[str, Any]) -> None:
        """Migrate Argilla's database, create the owner on the first start (credentials kept
        mode 0600) and rebuild the in-memory search indices from the database."""
        migrate, reindex = ["database", "migrate"], ["search-engine", "reindex"]
        if self.credentials() is not None:
            _, failure = self._server_cli(state, migrate, reindex)
        else:
            password = secrets.token_urlsafe(12)
            api_key = "tl.argilla." + secrets.token_urlsafe(24)
            owner = ["database", "users", "create", "--username", OWNER, "--first-name", OWNER,
                     "--role", "owner", "--workspace", self.workspace,
                     "--password", password, "--api-key", api_key]  # fmt: skip
            done, failure = self._server_cli(state, migrate, owner, reindex)
            if done >= 2:  # Argilla has the owner: these credentials are the ones that work
                write_atomic(
                    self.credentials_file,
                    json.dumps({"username": OWNER, "password": password, "api_key": api_key}),
                )
        if failure:
            raise ArgillaError(failure)

    def _healthy(self, timeout: float) -> bool:
        creds = self.credentials()
        request = urllib.request.Request(
            f"{self.url}/api/v1/me", headers={"X-Argilla-Api-Key": creds.api_key if creds else ""}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def _wait_healthy(self, state: dict[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._healthy(timeout=2.0):
            dead = [n for n in PROCESSES if n not in self._alive(state)]
            if dead:
                raise ArgillaError(
                    f"the local Argilla {dead[0]} exited; see {self.root / (dead[0] + '.log')}"
                )
            if time.monotonic() > deadline:
                raise ArgillaError(
                    f"Argilla did not become healthy in {timeout:.0f} s; "
                    f"see {self.root / 'server.log'}"
                )
            time.sleep(0.5)

    # Down and status -------------------------------------------------------------------

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop the process groups `up` started (pid + start time checked); returns names."""
        state = self._state()
        stopped = []
        for name in reversed(PROCESSES):
            info = state.get("processes", {}).get(name)
            if info and start_time(info["pid"]) == info["start"]:
                stop_group(info["pid"], timeout)
                stopped.append(name)
        self.state_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        """Which of our processes run, whether the server answers, and their memory."""
        state = self._state()
        alive = self._alive(state)
        processes: dict[str, dict[str, Any]] = {
            name: {
                "pid": state["processes"][name]["pid"] if name in state["processes"] else None,
                "running": name in alive,
                "memory_mb": round(group_memory_kb(alive[name]) / 1024, 1)
                if name in alive
                else 0.0,
            }
            for name in PROCESSES
        }
        return {
            "managed": "local",
            "url": self.url,
            "workspace": self.workspace,
            "running": set(alive) == set(PROCESSES),
            "healthy": bool(alive) and self._healthy(timeout=5.0),
            "processes": processes,
            "memory_mb": round(sum(p["memory_mb"] for p in processes.values()), 1),
            "data": str(self.root),
        }


def _redis_binary() -> str:
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise ArgillaError("redis-server is not installed; install Debian's redis-server package")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ArgillaError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                ) from None
            time.sleep(0.2)
