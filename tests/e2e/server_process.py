"""Run the real `loopify` command line in a child process, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT_S = 90  # first start of an embedded Postgres runs initdb (a few seconds on 2 cores)
STOP_TIMEOUT_S = 30
ENTRY = "from bootstrap import main; raise SystemExit(main())"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopify(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one `loopify` command to completion."""
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class ServerProcess:
    def __init__(self, env: dict[str, str], port: int | None = None, role: str = "all") -> None:
        self.env = env
        self.port = port or free_port()
        self.role = role
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(env["LOOPIFY_DATA_DIR"]) / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-c", ENTRY, "serve", "--port", str(self.port), "--role", self.role]

    def start(self) -> ServerProcess:
        Path(self.env["LOOPIFY_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> int | None:
        """Ctrl-C, as a user would; kill only if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def project_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The parent's environment minus any external service URL, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "JWT_SECRET")}
    env["LOOPIFY_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.update(extra)
    return env
