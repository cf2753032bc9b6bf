"""A real Milvus standalone server for development and tests, from the PyPI ``milvus`` package.

The package (2.3.5) carries the Milvus binary and its libraries, LZMA-packed; we unpack them
under a data directory and run ``milvus run standalone`` as a detached process whose pid and
ports are kept in ``<dir>/server.json``, so ``spr milvus start``, ``status`` and ``stop`` work
across shell invocations. Start-up takes ~10 s and ~250 MB of memory.

Only one such server runs per host: Milvus 2.3 locks ``/run/milvus/standalone.pid``
whatever its data directory. Tests reuse a running one through ``SPR_TEST_MILVUS_URI``.

Networking: the server binds its gRPC port (19530 by default) and its internal ports on
ALL interfaces, not only loopback; the package offers no setting to change that. On a shared
or exposed host, firewall those ports or run Milvus in a container instead.

Stopping: ``spr milvus stop`` sends SIGTERM to the server's process group (the binary itself is
the group leader; there is no wrapper). Milvus 2.3 then stops gracefully: it stops its
coordinators first, and the query node waits for its loaded segments to migrate to another query
node before it exits (``queryNode.gracefulStopTimeout``, falling back to
``common.gracefulStopTimeout``: 1800 s in the package's template). A standalone server has no
other query node, so with any collection loaded it waited out that timeout, which looked like
ignoring SIGTERM until ``stop`` killed it after 15 s. The configuration written at start
therefore bounds the graceful stop (:data:`GRACEFUL_STOP_S`): nothing is lost, flushed data is
on disk and the rest is replayed from the local message log at the next start.

This is not ``milvus-lite``: that package is a pure-Python imitation (no IVF_PQ, silently
drops index parameters) and is never used here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Seconds the query and index nodes may spend handing work to other nodes when told to stop
# (there are none in standalone), and the whole graceful stop before Milvus exits by itself.
GRACEFUL_STOP_S = {"queryNode.gracefulStopTimeout": 3, "indexNode.gracefulStopTimeout": 3, "common.gracefulStopTimeout": 10}


class MilvusServerError(RuntimeError):
    """The embedded Milvus server could not be started or stopped."""


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    metrics_port: int
    data_dir: str
    started_at: float

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class EmbeddedMilvus:
    """Start, inspect and stop one standalone Milvus server rooted at ``data_dir``.

    ``port=0`` picks the first free port from 19530 upwards.
    """

    def __init__(self, data_dir: str | os.PathLike[str], port: int = 19530):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self._state_file = self.data_dir / "server.json"

    def status(self) -> ServerState | None:
        """The running server's state, or None if none runs (a stale state file is removed)."""
        state = self._read_state()
        if state is None:
            return None
        if not _pid_alive(state.pid):
            self._state_file.unlink(missing_ok=True)
            return None
        return state

    def healthy(self, state: ServerState | None = None) -> bool:
        state = state or self.status()
        if state is None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{state.metrics_port}/healthz", timeout=2) as resp:
                return b"OK" in resp.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def start(self, timeout_s: float = 180.0) -> ServerState:
        """Start the server (or return the one already running) and wait until it is healthy."""
        running = self.status()
        if running is not None:
            self._wait_healthy(running, timeout_s)
            return running
        try:
            from milvus import MilvusServerConfig, _initialize_data_files
        except ImportError as exc:
            raise MilvusServerError(
                "the `milvus` package is not installed; install the dev extra (pip install -e '.[dev]') "
                "or point SPR_MILVUS__URI at a Milvus server"
            ) from exc
        other = _other_standalone_pid()
        if other is not None:
            raise MilvusServerError(
                f"another Milvus standalone (pid {other}) already runs on this host, and only one can: "
                f"each locks {_RUN_PID_FILE}. Stop it (`spr milvus stop`, or kill {other}) or use it "
                "through SPR_MILVUS__URI (tests: SPR_TEST_MILVUS_URI)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        overrides = {"data_dir": str(self.data_dir)}
        if self.port:
            if not _port_free(self.port):
                raise MilvusServerError(
                    f"port {self.port} is taken; stop what uses it or choose another port "
                    "(spr milvus start --port N, or SPR_MILVUS__EMBEDDED_PORT)"
                )
            overrides["proxy_port"] = self.port
        config = MilvusServerConfig(**overrides)
        config.resolve()  # picks free ports for everything not set and writes configs/milvus.yaml
        bound_graceful_stop(self.data_dir / "configs" / "milvus.yaml")
        _initialize_data_files(config.base_data_dir)
        metrics_port, sock = config.resolve_port(9091)
        sock.close()
        env = os.environ.copy()
        bin_dir = self.data_dir / "bin"
        env.update(
            DEPLOY_MODE="STANDALONE",
            METRICS_PORT=str(metrics_port),
            MILVUS_RUN_DIR=str(self.data_dir / "run"),
            LD_LIBRARY_PATH=f"{bin_dir}:{env.get('LD_LIBRARY_PATH', '')}",
        )
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [str(bin_dir / "milvus"), "run", "standalone"],
                cwd=self.data_dir,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this command; `spr milvus stop` ends it
            )
        state = ServerState(proc.pid, int(config.get("proxy_port")), metrics_port, str(self.data_dir), time.time())
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)))
        os.replace(tmp, self._state_file)
        log.info("milvus starting pid=%d port=%d data_dir=%s", state.pid, state.port, self.data_dir)
        try:
            self._wait_healthy(state, timeout_s, proc)
        except MilvusServerError:
            self.stop()
            raise
        return state

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the server; True if one was running."""
        state = self.status()
        if state is None:
            return False
        try:
            os.killpg(state.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while _pid_alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(state.pid):
            log.warning("milvus pid=%d ignored SIGTERM for %.0f s; killing it", state.pid, timeout_s)
            try:
                os.killpg(state.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._state_file.unlink(missing_ok=True)
        return True

    def _wait_healthy(self, state: ServerState, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy(state):
                return
            if proc is not None and proc.poll() is not None:
                raise MilvusServerError(
                    f"milvus exited with code {proc.returncode} during start-up; see {self.data_dir / 'logs'}"
                )
            time.sleep(0.3)
        raise MilvusServerError(f"milvus not healthy after {timeout_s:.0f} s; see {self.data_dir / 'logs'}")

    def _read_state(self) -> ServerState | None:
        try:
            return ServerState(**json.loads(self._state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None


# Milvus 2.3 hard-codes its run directory (falling back to /tmp/milvus when /run is not
# writable) and locks a pid file there, so one host runs at most one standalone server.
_RUN_PID_FILE = Path("/run/milvus/standalone.pid")


def _other_standalone_pid() -> int | None:
    for pid_file in (_RUN_PID_FILE, Path("/tmp/milvus/standalone.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError, PermissionError):
            continue
        if _pid_alive(pid):
            return pid
    return None


def bound_graceful_stop(config_file: Path, values: dict[str, int] = GRACEFUL_STOP_S) -> None:
    """Set each ``section.key`` of ``values`` in Milvus's YAML ``config_file``: replace the key
    where the section has it (at two-space indent), else add it as the section's first key.
    The package's template has no ``queryNode``/``indexNode`` stop keys, so they are added."""
    lines = config_file.read_text(encoding="utf-8").splitlines()
    for dotted, value in values.items():
        section, key = dotted.split(".")
        try:
            top = lines.index(f"{section}:")
        except ValueError:
            lines += [f"{section}:", f"  {key}: {value}"]
            continue
        end = next((i for i in range(top + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "#"))), len(lines))
        for i in range(top + 1, end):
            if lines[i].startswith(f"  {key}:"):
                lines[i] = f"  {key}: {value}  # set by spr: bound the graceful stop"
                break
        else:
            lines.insert(top + 1, f"  {key}: {value}  # set by spr: bound the graceful stop")
    config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _zombie(pid):
        # Exited, not yet reaped by its parent (init, for a server an earlier command started):
        # signal 0 still "reaches" it, but it runs no more. Reaped below when it is ours.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    # A zombie child of this process still "exists"; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server will (Go listeners set SO_REUSEADDR): connections of a server that
        # just stopped linger in TIME_WAIT and must not count as the port being taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
