"""The local stack: broker, warehouse, worker and sink as background processes.

`meterline up` starts what is not running and waits until each part answers;
`meterline down` stops them in reverse order. Pids and logs live under `var/`.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams import json
from streams.errors import StackError
from streams.settings import Settings

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
KAFKA_DEPLOY = ROOT / "deploy" / "kafka"
#: A broker on a laptop needs little heap; 1 GiB leaves room for the rest.
BROKER_HEAP = "-Xmx1g"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these exact settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            # Children run in the project folder; paths must not depend on ours.
            value = value.resolve()
        env[f"METERLINE_{name.upper()}"] = str(value)
    return env


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _http_ok(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            body: bytes = response.read()
            return body
    except OSError:
        return None


def worker_get(settings: Settings, path: str) -> Any:
    """GET the worker's `/meterline/<path>` JSON (`status` or `totals`)."""
    url = f"http://127.0.0.1:{settings.worker_web_port}/meterline/{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Service:
    """One background process of the stack."""

    name: str
    address: str
    command: Callable[[], list[str]]
    ready: Callable[[], bool]
    prepare: Callable[[], None] | None = None
    ports: tuple[int, ...] = ()


class Stack:
    """Starts, stops and reports on the local pipeline for one `var_dir`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.var = settings.var_dir.resolve()
        self.run_dir = self.var / "run"
        # Children started by this object; kept so they can be reaped.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self.log_dir = self.var / "log"
        s = settings
        py = [sys.executable, "-m", "streams.cli"]
        self.services = [
            Service(
                "kafka",
                f"127.0.0.1:{s.kafka_port}",
                self._broker_command,
                self._broker_ready,
                self._prepare_broker,
                (s.kafka_port, s.kafka_controller_port),
            ),
            Service(
                "warehouse",
                f"http://{s.warehouse_host}:{s.warehouse_port}",
                lambda: [*py, "warehouse", "serve"],
                lambda: (
                    _http_ok(f"http://127.0.0.1:{s.warehouse_port}/ping") is not None
                ),
            ),
            Service(
                "worker",
                f"http://127.0.0.1:{s.worker_web_port}/meterline/status",
                lambda: [*py, "worker"],
                self._worker_ready,
                ports=(s.worker_web_port,),
            ),
            Service(
                "sink",
                f"consumer group {s.sink_group}",
                lambda: [*py, "sink"],
                self._sink_ready,
            ),
        ]

    # -- process bookkeeping ------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid of a running service, or None."""
        path = self._pid_file(name)
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        if not _runs(pid, _SIGNATURES[name]):
            # A stale pid file whose pid now belongs to another program.
            return None
        return pid

    def up(self, *, on_progress: Callable[[str], None] = print) -> list[str]:
        """Start every service that is not running; wait until each is ready.

        Returns the names of the services this call started.
        """
        started: list[str] = []
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for service in self.services:
            if service.name == "worker":
                self._prepare_data()
            if self.pid(service.name) is not None:
                on_progress(f"{service.name}: already running")
                continue
            busy = [p for p in service.ports if _port_open(p)]
            if busy:
                raise StackError(
                    f"cannot start {service.name}: port {busy[0]} on 127.0.0.1 is "
                    "already in use by another program; stop it, or choose other "
                    "ports with METERLINE_* settings (see README)"
                )
            if service.prepare:
                service.prepare()
            self._start(service)
            started.append(service.name)
            self._wait(service, on_progress)
        return started

    def _start(self, service: Service) -> None:
        log = open(self.log_dir / f"{service.name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            service.command(),
            cwd=ROOT,
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._children[service.name] = process
        self._pid_file(service.name).write_text(str(process.pid))
        logger.info("started %s (pid %s)", service.name, process.pid)

    def _wait(self, service: Service, on_progress: Callable[[str], None]) -> None:
        start = time.monotonic()
        child = self._children.get(service.name)
        while time.monotonic() - start < READY_TIMEOUT_S:
            # Our own child: its exit status is the truth (right after the
            # fork, /proc still shows our command line, not the service's).
            if child is not None:
                exited = child.poll() is not None
            else:
                exited = self.pid(service.name) is None
            if exited:
                raise StackError(
                    f"{service.name} exited while starting; see "
                    f"{self.log_dir / (service.name + '.log')}"
                )
            if service.ready():
                on_progress(
                    f"{service.name}: ready at {service.address} "
                    f"({time.monotonic() - start:.1f} s)"
                )
                return
            time.sleep(0.3)
        raise StackError(
            f"{service.name} was not ready after {READY_TIMEOUT_S:.0f} s; see "
            f"{self.log_dir / (service.name + '.log')}"
        )

    def down(self, *, on_progress: Callable[[str], None] = print) -> None:
        """Stop every running service, newest first."""
        running = self.running()
        if not running:
            on_progress("nothing was running")
        for name in reversed(running):
            self.stop(name, on_progress=on_progress)

    def stop(
        self,
        name: str,
        *,
        on_progress: Callable[[str], None] = print,
        kill: bool = False,
    ) -> None:
        """Stop one service: SIGTERM (or SIGKILL), then SIGKILL after a timeout."""
        pid = self.pid(name)
        if pid is None:
            self._pid_file(name).unlink(missing_ok=True)
            return
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        child = self._children.pop(name, None)
        if child is not None:
            child.wait()
        self._pid_file(name).unlink(missing_ok=True)
        on_progress(f"{name}: stopped")

    def running(self) -> list[str]:
        """Names of the services running now, in start order."""
        return [s.name for s in self.services if self.pid(s.name) is not None]

    def reset(self) -> list[Path]:
        """Delete broker data, warehouse data, logs and pids (not the jars)."""
        running = self.running()
        if running:
            raise StackError(
                f"{', '.join(running)} still running: `meterline down` first"
            )
        gone = []
        for path in (
            self._broker_dir() / "data",
            self.var / "warehouse",
            self.log_dir,
            self.run_dir,
        ):
            if path.exists():
                shutil.rmtree(path)
                gone.append(path)
        return gone

    def status(self) -> list[tuple[str, str, str]]:
        """(service, state with pid, address) for each service."""
        rows = []
        for service in self.services:
            pid = self.pid(service.name)
            state = f"running (pid {pid})" if pid else "stopped"
            rows.append((service.name, state, service.address))
        return rows

    # -- the parts ------------------------------------------------------------

    def _prepare_data(self) -> None:
        from streams.topics import ensure_topics
        from streams.warehouse.client import migrate

        migrate(self.settings)
        ensure_topics(self.settings)

    def _broker_dir(self) -> Path:
        return self.var / "kafka"

    def _prepare_broker(self) -> None:
        libs = self.settings.kafka_libs_dir.resolve()
        if not any(libs.glob("kafka_2.13-*.jar")):
            fetch_kafka(libs)
        data = self._broker_dir() / "data"
        config = self._broker_dir() / "server.properties"
        template = (KAFKA_DEPLOY / "server.properties").read_text()
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            template.replace("@PORT@", str(self.settings.kafka_port))
            .replace("@CONTROLLER_PORT@", str(self.settings.kafka_controller_port))
            .replace("@DATA_DIR@", str(data))
        )
        if not (data / "meta.properties").exists():
            result = subprocess.run(
                [*self._java(), "kafka.tools.StorageTool", "format",
                 f"--cluster-id={new_cluster_id()}", "-c", str(config)],
                capture_output=True,
                text=True,
            )  # fmt: skip
            if result.returncode != 0:
                raise StackError(
                    f"formatting the broker's storage in {data} failed:\n"
                    f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
                )

    def _java(self) -> list[str]:
        libs = self.settings.kafka_libs_dir.resolve()
        return [
            "java",
            BROKER_HEAP,
            f"-Dlog4j2.configurationFile={KAFKA_DEPLOY / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
        ]

    def _broker_command(self) -> list[str]:
        return [
            *self._java(),
            "kafka.Kafka",
            str(self._broker_dir() / "server.properties"),
        ]

    def _broker_ready(self) -> bool:
        if not _port_open(self.settings.kafka_port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            client = KafkaAdminClient(
                bootstrap_servers=f"127.0.0.1:{self.settings.kafka_port}",
                request_timeout_ms=3000,
            )
            client.list_topics()
            client.close()
        except KafkaError:
            return False
        return True

    def _sink_ready(self) -> bool:
        try:
            return self.settings.sink_ready_file.read_text().strip() == str(
                self.pid("sink")
            )
        except FileNotFoundError:
            return False

    def _worker_ready(self) -> bool:
        body = _http_ok(
            f"http://127.0.0.1:{self.settings.worker_web_port}/meterline/status"
        )
        return body is not None and bool(json.loads(body).get("ready"))


#: What a service's command line contains, to tell it from a reused pid.
_SIGNATURES = {
    "kafka": "kafka.Kafka",
    "warehouse": "streams.cli\0warehouse",
    "worker": "streams.cli\0worker",
    "sink": "streams.cli\0sink",
}


def _runs(pid: int, signature: str) -> bool:
    """Whether process `pid` runs the command `signature` names (Linux /proc)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc here: trust the pid file
    return signature in cmdline


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes in URL-safe base64, not starting with
    '-' (a command line would read it as an option)."""
    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster.startswith("-"):
            return cluster


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def fetch_kafka(libs: Path) -> None:
    """Download the broker's jars from Maven Central with the machine's Maven."""
    print(f"fetching Apache Kafka jars from Maven Central into {libs} ...", flush=True)
    libs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mvn", "--batch-mode", "--quiet", "-Dstyle.color=never",
         "-f", str(KAFKA_DEPLOY / "pom.xml"),
         "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
         "-DincludeScope=runtime"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(
            "could not fetch Kafka with Maven (is `mvn` installed and Maven Central "
            f"reachable?):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    (libs / ".fetched").touch()
