"""Private PostgreSQL and Kafka for the chaos run: started, restarted, stopped by the run itself.

The chaos run restarts PostgreSQL and stops the broker many times. The shared test services
of `scripts/services.sh` serve everyone else's tests at the same time, so the run never touches
them: it starts a throw-away PostgreSQL server (`initdb` into a temporary directory, loopback,
a free port) and a throw-away single-node Kafka broker (the jars `scripts/kafka.sh` fetched into
`.services/kafka/libs`, its own data directory and free ports). `scripts/services.sh up` is still
what installs the PostgreSQL binaries and the Kafka jars.

Both listen on 127.0.0.1 only, live in their own process groups, and are stopped (and their
directories removed) by whoever started them, in a `finally`.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path

from bench import common as c

KAFKA_LIBS = c.ROOT / ".services" / "kafka" / "libs"
KAFKA_LOG_CONFIG = c.ROOT / "scripts" / "kafka" / "log4j2.properties"
PG_USER = "saga"
PG_DATABASE = "saga_chaos"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _pg_bindir() -> Path:
    base = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in base.glob("*") if (p / "bin" / "initdb").exists()),
        key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()],
    )
    if not versions:
        raise RuntimeError(
            "no PostgreSQL server binaries under /usr/lib/postgresql (scripts/services.sh up installs them)"
        )
    return versions[-1] / "bin"


class PrivatePostgres:
    """A PostgreSQL server of its own, in a temporary directory, on a free loopback port."""

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="saga-chaos-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        # PostgreSQL refuses to run as root: under root, run its commands as `postgres`.
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"
        self.admin_url = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=timeout, cwd=self.base
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed: {(done.stderr or done.stdout)[-800:]}"
            )

    def start(self) -> None:
        """Create the cluster and the database (first time), start the server, wait for it."""
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                PG_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    "\n# saga chaos run: loopback only, a throw-away server\n"
                    f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.base}'\n"
                    # fsync off: the OS never crashes here, and a PostgreSQL crash (restart
                    # -m immediate) loses nothing the kernel has. synchronous_commit stays on:
                    # with it off, such a crash drops the last commits the clients were told of.
                    "max_connections = 200\nfsync = off\nsynchronous_commit = on\n"
                    "full_page_writes = off\n"
                )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w",
            "-t", "60", "start",
        )  # fmt: skip
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone():
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m fast|immediate` (immediate: no checkpoint, crash recovery on start)."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w",
            "-t", "60", "-m", mode, "restart",
        )  # fmt: skip

    def answers(self) -> bool:
        """Whether the server accepts a query right now."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        """Stop the server (fast) and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m",
                    "fast", "stop",
                )  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                c.log(f"  (PostgreSQL did not stop cleanly: {exc}; killing it)")
                with suppress(Exception):
                    self._run(
                        str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                    )
        shutil.rmtree(self.base, ignore_errors=True)


def _kafka_cluster_id() -> str:
    # Kafka's own format for a cluster id: 16 random bytes, URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class PrivateKafka:
    """A single-node KRaft broker of its own (data in a temporary directory, free ports)."""

    def __init__(self) -> None:
        if not list(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
            raise RuntimeError(
                f"no Kafka jars in {KAFKA_LIBS} (scripts/services.sh up fetches them)"
            )
        if shutil.which("java") is None:
            raise RuntimeError("java not found (scripts/services.sh up installs it)")
        self.port = free_port()
        self.controller_port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="saga-chaos-kafka-"))
        self.props = self.base / "server.properties"
        self.log_path = self.base / "server.log"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.props.write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}\n"
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
            "inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            f"log.dirs={self.base / 'data'}\nnum.partitions=1\nauto.create.topics.enable=true\n"
            "offsets.topic.replication.factor=1\noffsets.topic.num.partitions=1\n"
            "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
            "transaction.state.log.num.partitions=1\ngroup.initial.rebalance.delay.ms=0\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
        )
        self._java = [
            "java",
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG_CONFIG}",
            "-cp",
            f"{KAFKA_LIBS}/*",
        ]
        done = subprocess.run(
            [*self._java, "kafka.tools.StorageTool", "format", "-t", _kafka_cluster_id(), "-c",
             str(self.props), "--ignore-formatted"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"kafka StorageTool format failed: {(done.stderr or done.stdout)[-800:]}"
            )

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120) -> float:
        """Start the broker and wait until it serves; return the seconds it took."""
        t0 = time.monotonic()
        with open(self.log_path, "a") as out:
            out.write(f"\n---- broker start at {time.strftime('%H:%M:%S')} ----\n")
        self.proc = c.spawn([*self._java, "kafka.Kafka", str(self.props)], log_path=self.log_path)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Kafka broker exited at start; see {self.log_path}")
            if port_open(self.port) and self._started_lines() > 0:
                return time.monotonic() - t0
            time.sleep(0.25)
        raise RuntimeError(f"Kafka broker not ready after {timeout:.0f}s; see {self.log_path}")

    def _started_lines(self) -> int:
        # Each start appends to the log; count the readiness lines after the last start marker.
        text = self.log_path.read_text(errors="replace")
        return text.rsplit("---- broker start at", 1)[-1].count("Kafka Server started")

    def stop(self) -> None:
        """SIGTERM the broker (a clean shutdown), SIGKILL it after 60 s."""
        if self.proc is not None:
            c.stop(self.proc, timeout=60)
            self.proc = None

    def close(self) -> None:
        """Stop the broker and remove its directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
