"""First run: what `make run` runs (`saga serve` on config/config.yaml, from a directory laid out
like a clean clone) starts the demo participants on loopback, so `order-fulfillment` and the
demo's other paths end as in `saga demo`; a configuration with services of its own starts none;
SIGTERM leaves nothing running. Real processes, real ports."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from saga_cli.demo import BEHAVIOURS
from tests.harness import ROOT, ParticipantProcess, free_port, wait_until
from workers.config import load_config

SAGA = [sys.executable, "-m", "saga_cli.main"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
DEMO_LINE = re.compile(r"demo participants \(as in `saga demo`\) on 127\.0\.0\.1: (.*?);")


def clean_clone(directory: Path) -> Path:
    """What `make run` reads from a fresh checkout: config/config.yaml and workflows/."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", directory / "config" / "config.yaml")
    shutil.copytree(ROOT / "workflows", directory / "workflows")
    return directory


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket process `pid` listens on (as `ss -ltnp` shows)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            # The kernel writes the address as 32-bit words in host (little-endian) order.
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found.add((str(ip), int(port, 16)))
    return found


def session_processes(sid: int) -> list[int]:
    """Every live process of session `sid` (the server started in a new session, its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def process_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


class MakeRun:
    """`saga serve` as `make run` runs it, in `directory`, on free REST and gRPC ports."""

    def __init__(self, directory: Path, **extra_env: str) -> None:
        self.directory = directory
        self.rest, self.grpc = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.rest}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SAGA_")
            and k not in ("CONFIG_PATH", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")
        }
        env["SAGA_LOG_FORMAT"] = "text"
        env.update(extra_env)
        self.stdout = directory / "stdout.txt"
        self.stderr = directory / "stderr.txt"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [*SAGA, "serve", "--port", str(self.rest), "--grpc-port", str(self.grpc)],
                cwd=directory,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc.poll() is None, self.log()
            try:
                return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 60, interval=0.2, what="saga serve to be ready")
        wait_until(lambda: "console:" in self.printed(), 10, what="the console line")

    def printed(self) -> str:
        return self.stdout.read_text(errors="replace")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def demo_ports(self) -> dict[str, int]:
        """The demo participants' ports, as the serve log names them."""
        found = DEMO_LINE.search(self.log())
        assert found, self.log()
        pairs = (item.split(" :") for item in found.group(1).split(", "))
        return {name: int(port) for name, port in pairs}

    def rest_children(self) -> list[int]:
        """The gunicorn REST worker processes (grandchildren of `saga serve`)."""
        parents = {self.proc.pid}
        children: list[int] = []
        for _ in range(2):
            level = [
                pid
                for pid in session_processes(self.proc.pid)
                if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                in parents
            ]
            parents, children = set(level), level
        return children

    def start(self, payload: dict[str, Any], correlation_id: str) -> str:
        """Start order-fulfillment the way the console's form does."""
        response = requests.post(
            f"{self.url}/api/v1/sagas",
            json={
                "workflow_name": "order-fulfillment",
                "payload": payload,
                "correlation_id": correlation_id,
            },
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["saga_id"])

    def wait_ended(self, saga_id: str) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            detail = requests.get(f"{self.url}/api/v1/sagas/{saga_id}", timeout=10).json()
            return detail if detail["saga"]["status"] in TERMINAL else None

        return dict(wait_until(ended, 30, interval=0.1, what=f"saga {saga_id} to end"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def steps(detail: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(s["step_name"], s["action"], s["status"]) for s in detail["step_logs"]]


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    server = MakeRun(clean_clone(tmp_path_factory.mktemp("first-run") / "saga-server"))
    try:
        yield server
    finally:
        server.stop()


def test_make_run_prints_the_console_url_and_the_sample_saga_completes(
    first_run: MakeRun,
) -> None:
    """`make run` prints one line, the console's URL, which serves the console; order-fulfillment,
    loaded from workflows/, started over REST as the console does, reaches COMPLETED with the
    demo participants' answers, and the store is the SQLite file under data/."""
    assert first_run.printed().splitlines() == [f"console: {first_run.url}/ui/"]
    console = requests.get(f"{first_run.url}/ui/", timeout=10)
    assert console.status_code == 200 and "text/html" in console.headers["Content-Type"]
    listed = requests.get(f"{first_run.url}/api/v1/workflows", timeout=10).json()
    assert "order-fulfillment" in json.dumps(listed)

    saga_id = first_run.start({"order_id": "A-1", "amount": 42, "card": "ok"}, "first-run-A-1")
    detail = first_run.wait_ended(saga_id)
    assert detail["saga"]["status"] == "COMPLETED", detail
    assert steps(detail) == [
        ("reserve-inventory", "EXECUTE", "SUCCESS"),
        ("process-payment", "EXECUTE", "SUCCESS"),
        ("arrange-shipping", "EXECUTE", "SUCCESS"),
    ]
    responses = [s["response_payload"] for s in detail["step_logs"]]
    assert responses == [
        BEHAVIOURS["inventory-service"]["InventoryService.Reserve"]["reply"],
        BEHAVIOURS["payment-service"]["PaymentService.Charge"]["reply"],
        BEHAVIOURS["shipping-service"]["ShippingService.CreateShipment"]["reply"],
    ]
    assert (first_run.directory / "data" / "saga.sqlite3").is_file()


def test_first_run_takes_the_demo_paths(first_run: MakeRun) -> None:
    """A declined card is compensated (inventory released), an undeliverable address is
    compensated with the refund given the charge id, a digital order skips shipping: as in
    `saga demo`."""
    declined = first_run.wait_ended(first_run.start({"order_id": "A-2", "card": "declined"}, "A-2"))
    assert declined["saga"]["status"] == "FAILED"
    assert steps(declined) == [
        ("reserve-inventory", "EXECUTE", "SUCCESS"),
        ("process-payment", "EXECUTE", "FAILED"),
        ("reserve-inventory", "COMPENSATE", "SUCCESS"),
    ]
    assert "payment declined" in json.dumps(declined)

    nowhere = first_run.wait_ended(
        first_run.start({"order_id": "A-3", "card": "ok", "address": "nowhere"}, "A-3")
    )
    assert nowhere["saga"]["status"] == "FAILED"
    assert steps(nowhere) == [
        ("reserve-inventory", "EXECUTE", "SUCCESS"),
        ("process-payment", "EXECUTE", "SUCCESS"),
        ("arrange-shipping", "EXECUTE", "FAILED"),
        ("process-payment", "COMPENSATE", "SUCCESS"),
        ("reserve-inventory", "COMPENSATE", "SUCCESS"),
    ]
    refund = nowhere["step_logs"][3]["request_payload"]
    assert refund == {"order_id": "A-3", "charge_id": "ch_1"}

    digital = first_run.wait_ended(
        first_run.start({"order_id": "A-4", "card": "ok", "digital": True}, "A-4")
    )
    assert digital["saga"]["status"] == "COMPLETED"
    assert steps(digital)[-1] == ("arrange-shipping", "EXECUTE", "SKIPPED")


def test_every_process_knows_the_demo_participants(first_run: MakeRun) -> None:
    """The demo participants listen on loopback in the serve process, and every REST process is
    configured with those same addresses, so registration accepts the demo services and refuses
    any other in whichever process answers."""
    ports = first_run.demo_ports()
    assert set(ports) == {"inventory-service", "payment-service", "shipping-service"}
    listening = listening_ports(first_run.proc.pid)
    assert {("127.0.0.1", port) for port in ports.values()} <= listening
    assert {port for _, port in listening} == {first_run.grpc, *ports.values()}

    children = first_run.rest_children()
    assert len(children) == 2  # server.workers' default
    for pid in children:
        config = load_config(environ=process_environ(pid))
        assert config.service_map == {name: ("127.0.0.1", port) for name, port in ports.items()}

    for i in range(8):  # a new connection each, so both REST processes answer some
        document = {
            "name": f"first-run-check-{i}",
            "steps": [{"name": "charge", "service": "payment-service", "method": "P.Charge"}],
        }
        with requests.Session() as fresh:
            response = fresh.post(
                f"{first_run.url}/api/v1/workflows",
                json={"workflow_yaml": yaml.safe_dump(document)},
                headers={"Connection": "close"},
                timeout=10,
            )
        assert response.status_code == 201, response.text
    document["steps"][0]["service"] = "billing-service"
    refused = requests.post(
        f"{first_run.url}/api/v1/workflows",
        json={"workflow_yaml": yaml.safe_dump(document)},
        timeout=10,
    )
    assert refused.status_code == 400 and "billing-service" in refused.text


def test_sigterm_stops_the_server_and_the_demo_participants(tmp_path: Path) -> None:
    """SIGTERM ends `saga serve` with status 0, no process of it left, and the demo
    participants' ports closed."""
    server = MakeRun(clean_clone(tmp_path / "saga-server"))
    try:
        ports = server.demo_ports()
        saga_id = server.start({"order_id": "B-1", "card": "ok"}, "B-1")
        assert server.wait_ended(saga_id)["saga"]["status"] == "COMPLETED"
    finally:
        code = server.stop()
    assert code == 0, server.log()
    wait_until(
        lambda: not session_processes(server.proc.pid), 10, what="every server process to exit"
    )
    for port in ports.values():
        assert refuses_connections(port), f"a demo participant still answers on {port}"
    assert "demo participants stopped" in server.log()


def test_a_config_with_its_own_services_starts_no_demo_participant(tmp_path: Path) -> None:
    """config/config.yaml with a `services` section of the user's own: no demo participant
    starts (the log says so, the server listens on its gRPC port only), and sagas call the
    user's participant."""
    directory = clean_clone(tmp_path / "saga-server")
    participant = ParticipantProcess({}, tmp_path)
    try:
        config_file = directory / "config" / "config.yaml"
        doc = yaml.safe_load(config_file.read_text())
        assert doc["saga"]["demo_participants"] is True
        doc["services"] = {
            name: {"host": "127.0.0.1", "port": participant.port}
            for name in ("inventory-service", "payment-service", "shipping-service")
        }
        config_file.write_text(yaml.safe_dump(doc))
        server = MakeRun(directory)
        try:
            assert "saga.demo_participants is ignored" in server.log()
            assert not DEMO_LINE.search(server.log())
            assert {port for _, port in listening_ports(server.proc.pid)} == {server.grpc}
            saga_id = server.start({"order_id": "C-1", "card": "declined"}, "C-1")
            detail = server.wait_ended(saga_id)
            # The user's participant has no declined card: everything succeeds there.
            assert detail["saga"]["status"] == "COMPLETED", detail
            called = {call["path"] for call in participant.calls()}
            assert {
                "/InventoryService/Reserve",
                "/PaymentService/Charge",
                "/ShippingService/CreateShipment",
            } <= called
            for pid in server.rest_children():
                config = load_config(environ=process_environ(pid))
                assert set(config.service_map.values()) == {("127.0.0.1", participant.port)}
        finally:
            assert server.stop() == 0, server.log()
    finally:
        participant.stop()


def test_turned_off_from_the_environment(tmp_path: Path) -> None:
    """SAGA_SAGA_DEMO_PARTICIPANTS=false on config/config.yaml starts no demo participant."""
    server = MakeRun(clean_clone(tmp_path / "saga-server"), SAGA_SAGA_DEMO_PARTICIPANTS="false")
    try:
        assert not DEMO_LINE.search(server.log())
        assert {port for _, port in listening_ports(server.proc.pid)} == {server.grpc}
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize(
    ("value", "named"),
    [("{", "SAGA_SERVICES"), ('{"payment-service": {"host": "10.0.0.7"}}', "port")],
    ids=["not-yaml", "no-port"],
)
def test_a_bad_services_variable_stops_serve_with_one_line(
    tmp_path: Path, value: str, named: str
) -> None:
    """A SAGA_SERVICES that is not a mapping of {host, port} stops `saga serve` at start with
    exit status 2 and one line naming the problem, no stack trace."""
    directory = clean_clone(tmp_path / "saga-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env.pop("CONFIG_PATH", None)
    env["SAGA_SERVICES"] = value
    done = subprocess.run(
        [*SAGA, "serve", "--port", str(free_port()), "--grpc-port", str(free_port())],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saga: bad config:"), done.stderr
    assert named in lines[0] and "services" in lines[0].lower()
    assert not (directory / "data").exists()  # stopped before anything was opened
