"""The embedded Redis stops with the last process attached to it, whatever connections remain."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
import redis.retry

from infrastructure.embedded import EmbeddedRedis

GONE_TIMEOUT_S = 10.0


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def server_pid(url: str) -> int:
    return int(redis.Redis.from_url(url).info("server")["process_id"])


def test_the_last_process_to_stop_shuts_the_server_down_even_with_a_connection_left_open(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path)
    url = embedded.start()
    pid = server_pid(url)
    leaked = redis.Redis.from_url(url)
    leaked.ping()  # a pool or subscriber the process forgot to close

    embedded.stop()

    assert wait_gone(pid), "the embedded redis-server outlived the last process attached to it"


def test_a_server_another_live_process_is_attached_to_keeps_running(tmp_path: Path) -> None:
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from infrastructure.embedded import EmbeddedRedis; "
            "r = EmbeddedRedis(__import__('pathlib').Path(sys.argv[1])); print(r.start(), flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        url = other.stdout.readline().strip()  # type: ignore[union-attr]
        pid = server_pid(url)
        embedded = EmbeddedRedis(tmp_path)
        assert embedded.start() == url
        embedded.stop()
        assert redis.Redis.from_url(url).ping()  # still serving the other process
    finally:
        other.kill()
        other.wait()
    # The other process died without detaching; the next to attach and stop cleans up.
    embedded = EmbeddedRedis(tmp_path)
    embedded.start()
    embedded.stop()
    assert wait_gone(pid)


def test_the_last_stop_saves_the_data_without_waiting_on_reconnect_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = EmbeddedRedis(tmp_path)
    url = embedded.start()
    pid = server_pid(url)
    redis.Redis.from_url(url).set("kept", "yes")
    # Redis drops every connection as it exits; a redis-py client that retries sleeps (in
    # redis.retry) before each attempt to reconnect to the server that is gone.
    slept: list[float] = []
    monkeypatch.setattr(redis.retry, "sleep", lambda seconds: (slept.append(seconds), time.sleep(seconds)))

    embedded.stop()

    assert slept == [], f"the stop slept {sum(slept):.1f} s retrying a server that had exited"
    monkeypatch.undo()
    assert wait_gone(pid)
    again = EmbeddedRedis(tmp_path)
    try:
        assert redis.Redis.from_url(again.start()).get("kept") == b"yes"
    finally:
        again.stop()


def test_the_embedded_server_keeps_its_data_in_an_append_only_file_rewritten_only_once_large(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path)
    client = redis.Redis.from_url(embedded.start())
    try:
        # Snapshots and rewrites write the whole dataset again in a child process; the
        # append-only file already keeps every write (fsync once a second).
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(1 << 30)}
    finally:
        client.close()
        embedded.stop()
