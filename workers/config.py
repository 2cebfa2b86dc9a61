"""Configuration (SPEC §9): `config/config.yaml` or the file named by `CONFIG_PATH`, then
environment overrides (`DATABASE_URL`, `SAGA_<SECTION>_<KEY>`). A bad file stops the program at
start with one line naming the file, the key and the problem (`ConfigError`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import cattrs
import yaml
from attrs import define, field

DEFAULT_CONFIG_PATH = "config/config.yaml"
DEFAULT_TOPIC = "k1s0.system.saga.events.v1"
# A JSON (or YAML) mapping, name -> {host, port}, that replaces the `services` section.
SERVICES_ENV = "SAGA_SERVICES"

# "30s", "5m", "1h30m", "250ms" (as in the original design's config), or a bare number of seconds.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|min|m|h)")
_DURATION_UNIT_SECS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def duration_secs(text: str) -> float:
    """The seconds in a duration such as "30s", "5m", "1h30m", "250ms" or "45" (seconds);
    raise ValueError for anything else (a negative one included)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value >= 0 and value != float("inf"):
            return value
        raise ValueError(f"not a duration: {text!r}")
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration such as 30s, 5m, 1h30m or 250ms: {text!r}")
    return sum(float(number) * _DURATION_UNIT_SECS[unit] for number, unit in parts)


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the user."""


@define
class AppConfig:
    name: str = "saga-server"
    version: str = "0.1.0"
    environment: str = "development"


@define
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 2
    threads: int = 8


PAYLOAD_ENCODINGS = ("json", "struct")


@define
class GrpcConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    max_workers: int = 32
    # Calls held at once (running or queued for a worker thread); past it a call is refused
    # with RESOURCE_EXHAUSTED. None: four per worker thread.
    max_concurrent_rpcs: int | None = None
    # How responses carry payload fields (SPEC §5): UTF-8 JSON bytes, or an encoded
    # google.protobuf.Struct for clients of the later k1s0 proto. Requests may use either.
    payload_encoding: str = "json"

    @property
    def concurrent_rpcs(self) -> int:
        """`max_concurrent_rpcs`, or its default of four calls per worker thread."""
        if self.max_concurrent_rpcs is not None:
            return self.max_concurrent_rpcs
        return 4 * max(1, self.max_workers)


@define
class DatabaseConfig:
    name: str
    user: str
    host: str = "localhost"
    port: int = 5432
    password: str = ""
    ssl_mode: str = "disable"
    max_open_conns: int = 25
    max_idle_conns: int = 5
    conn_max_lifetime: str = "5m"  # a pooled connection is replaced after this long; 0: never
    statement_timeout: str = "30s"  # PostgreSQL cancels a statement running longer; 0: never

    @property
    def max_lifetime_secs(self) -> float:
        seconds = duration_secs(self.conn_max_lifetime)
        return seconds if seconds > 0 else float("inf")

    @property
    def statement_timeout_secs(self) -> float:
        return duration_secs(self.statement_timeout)

    @property
    def url(self) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgres://{auth}@{self.host}:{self.port}/{quote(self.name, safe='')}?sslmode={self.ssl_mode}"


@define
class SaslConfig:
    mechanism: str = "PLAIN"
    username: str = ""
    password: str = ""


@define
class TopicsConfig:
    publish: str = DEFAULT_TOPIC


@define
class KafkaConfig:
    brokers: list[str]
    security_protocol: str = "PLAINTEXT"
    sasl: SaslConfig | None = None
    topics: TopicsConfig = field(factory=TopicsConfig)
    # Accepted so that configuration files written for the original server load; this server
    # only publishes (it consumes no topic), so it is not used (the engine says so at start).
    consumer_group: str | None = None
    retention_hours: float = 24.0
    relay_batch: int = 500


@define
class ServiceEndpoint:
    host: str
    port: int


@define
class SagaSection:
    max_concurrent: int = 100
    workflow_dir: str = "workflows"
    sqlite_path: str = "data/saga.sqlite3"
    execute: bool = True
    lease_secs: float = 30.0
    claim_interval_ms: int = 50
    commit_batch: int = 512
    # SPEC §13: ended sagas whose updated_at is older than this many days are deleted.
    # None (the default): nothing is ever deleted.
    retention_days: float | None = None
    # `saga serve` only: start the demo participants of `saga demo` on loopback and point the
    # services at them, when the configuration names no service of its own (with one, they are
    # not started and the log says so). config/config.yaml sets it, so `make run` just works.
    demo_participants: bool = False


@define
class AuthConfig:
    jwks_url: str
    issuer: str
    audience: str
    jwks_cache_ttl_secs: int = 300
    leeway_secs: int = 30


@define
class TelemetryConfig:
    """SPEC §12: where spans are exported over OTLP (gRPC), and which sagas are traced.
    Without the section nothing is exported; trace context is still passed on."""

    otlp_endpoint: str  # http://host:port (plaintext) or https://host:port (TLS)
    service_name: str = "saga-server"
    # The share of new traces sampled, 0..1 (a trace a request joined keeps its caller's choice).
    sample_ratio: float = 1.0


@define
class LimitsConfig:
    request_body_bytes: int = 1024 * 1024
    payload_bytes: int = 256 * 1024
    json_depth: int = 64
    string_length: int = 255
    page_size: int = 100
    workflow_bytes: int = 64 * 1024
    workflow_steps: int = 200
    grpc_receive_bytes: int = 4 * 1024 * 1024
    grpc_send_bytes: int = 4 * 1024 * 1024
    participant_response_bytes: int = 1024 * 1024


@define
class Config:
    app: AppConfig = field(factory=AppConfig)
    server: ServerConfig = field(factory=ServerConfig)
    grpc: GrpcConfig = field(factory=GrpcConfig)
    database: DatabaseConfig | None = None
    kafka: KafkaConfig | None = None
    services: dict[str, ServiceEndpoint] = field(factory=dict)
    saga: SagaSection = field(factory=SagaSection)
    auth: AuthConfig | None = None
    limits: LimitsConfig = field(factory=LimitsConfig)
    telemetry: TelemetryConfig | None = None
    database_url: str | None = None
    source: str = "<defaults>"

    @property
    def postgres_url(self) -> str | None:
        """`DATABASE_URL`, else the `database` section; None means the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return self.database.url if self.database else None

    @property
    def service_map(self) -> dict[str, tuple[str, int]]:
        return {name: (e.host, e.port) for name, e in self.services.items()}


_converter = cattrs.Converter(forbid_extra_keys=True)

_SECTIONS = ("app", "server", "grpc", "database", "kafka", "saga", "auth", "limits", "telemetry")


def _env_value(key: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: not a valid value: {getattr(exc, 'problem', exc)}") from None


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, raw in environ.items():
        if key == SERVICES_ENV:
            # Service names are not environment-variable names: the whole section at once.
            data["services"] = _env_value(key, raw)
            continue
        if not key.startswith("SAGA_") or key.count("_") < 2:
            continue
        rest = key[len("SAGA_") :].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                name = rest[len(section) + 1 :]
                target = data.get(section)
                if not isinstance(target, dict):
                    target = {}
                    data[section] = target
                target[name] = _env_value(key, raw)
                break


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate; raise ConfigError on any problem."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    file = Path(path)
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(
                f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    elif path != DEFAULT_CONFIG_PATH or environ.get("CONFIG_PATH"):
        raise ConfigError(f"{path}: file not found")
    _env_overrides(data, environ)
    for key in ("database_url", "source"):
        if key in data:
            raise ConfigError(f"{path}: {key}: unknown section")
    if environ.get("DATABASE_URL"):
        data["database_url"] = environ["DATABASE_URL"]
    data["source"] = str(path)
    try:
        config = _converter.structure(data, Config)
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, path="")
        first = problems[0] if problems else str(exc)
        message, _, where = first.partition(" @ ")
        where = where.lstrip("$.").replace("$", "") or "(top level)"
        raise ConfigError(f"{path}: {where}: {message}") from None
    _check(config, str(path))
    return config


def _check(config: Config, path: str) -> None:
    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {problem}")

    for key, value in (
        ("server.port", config.server.port),
        ("grpc.port", config.grpc.port),
    ):
        if not 0 <= value <= 65535:
            raise bad(key, "must be a port number (0..65535)")
    if config.grpc.payload_encoding not in PAYLOAD_ENCODINGS:
        raise bad(
            "grpc.payload_encoding",
            f"must be one of {', '.join(PAYLOAD_ENCODINGS)}, not {config.grpc.payload_encoding!r}",
        )
    if config.database is not None:
        for key in ("conn_max_lifetime", "statement_timeout"):
            try:
                duration_secs(getattr(config.database, key))
            except ValueError as exc:
                raise bad(f"database.{key}", str(exc)) from None
    if config.grpc.max_concurrent_rpcs is not None and config.grpc.max_concurrent_rpcs < 1:
        raise bad("grpc.max_concurrent_rpcs", "must be >= 1")
    if config.saga.max_concurrent < 1:
        raise bad("saga.max_concurrent", "must be >= 1")
    if config.saga.lease_secs <= 0:
        raise bad("saga.lease_secs", "must be > 0")
    if config.saga.retention_days is not None and not 0 < config.saga.retention_days < 1e6:
        raise bad("saga.retention_days", "must be a number of days > 0 (leave it out to keep all)")
    for name, endpoint in config.services.items():
        if not 1 <= endpoint.port <= 65535:
            raise bad(f"services.{name}.port", "must be a port number (1..65535)")
        if not endpoint.host:
            raise bad(f"services.{name}.host", "must not be empty")
    if config.kafka is not None and not config.kafka.brokers:
        raise bad("kafka.brokers", "must list at least one broker")
    for field_name in (
        "request_body_bytes",
        "payload_bytes",
        "json_depth",
        "string_length",
        "page_size",
        "workflow_bytes",
        "workflow_steps",
        "grpc_receive_bytes",
        "grpc_send_bytes",
        "participant_response_bytes",
    ):
        if getattr(config.limits, field_name) < 1:
            raise bad(f"limits.{field_name}", "must be >= 1")
    if config.telemetry is not None:
        _check_telemetry(config.telemetry, bad)
    if config.auth is not None:
        if not config.auth.jwks_url.startswith(("https://", "http://")):
            raise bad("auth.jwks_url", "must be an http(s) URL")
        for field_name in ("issuer", "audience"):
            if not getattr(config.auth, field_name):
                raise bad(f"auth.{field_name}", "must not be empty")
        for field_name in ("jwks_cache_ttl_secs", "leeway_secs"):
            if getattr(config.auth, field_name) < 0:
                raise bad(f"auth.{field_name}", "must be >= 0")


def _check_telemetry(telemetry: TelemetryConfig, bad: Callable[[str, str], ConfigError]) -> None:
    endpoint = urlsplit(telemetry.otlp_endpoint)
    try:
        port = endpoint.port
    except ValueError:
        port = None
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname or port is None:
        raise bad(
            "telemetry.otlp_endpoint",
            f"must be http://host:port or https://host:port, not {telemetry.otlp_endpoint!r}",
        )
    if endpoint.path not in ("", "/") or endpoint.query or endpoint.fragment:
        raise bad("telemetry.otlp_endpoint", "must have no path: OTLP over gRPC is host:port")
    if not telemetry.service_name.strip():
        raise bad("telemetry.service_name", "must not be empty")
    if not 0.0 <= telemetry.sample_ratio <= 1.0:
        raise bad("telemetry.sample_ratio", "must be a number from 0 to 1")
