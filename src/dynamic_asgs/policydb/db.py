"""Connecting to the policy DB: SQLite (embedded default), PostgreSQL or MySQL/MariaDB.

The ``database`` configuration object keeps the Go jobs' keys (``type``, ``user``,
``password``, ``host``, ``port``, ``database_name``, ``timeout``, ``require_ssl``,
``ca_cert``, ``skip_hostname_validation``, ``client_cert``, ``client_key``) so that BOSH
properties map 1:1. ``type`` is ``postgres``, ``mysql`` or ``sqlite``; for SQLite
``database_name`` is the path of the database file.

Mechanisms:

* SQLite runs in WAL mode (readers never block the writer) with a busy timeout, and
  SQLAlchemy emits the ``BEGIN`` itself: ``BEGIN IMMEDIATE`` for connections marked
  ``write=True`` by :func:`write_connection` (so a writer takes the lock up front and
  check-then-write sequences are serialised), a plain ``BEGIN`` otherwise (a consistent
  snapshot for readers).
* :func:`db_now` reads the database's clock; leases use it as their only clock, so
  clock skew between syncer VMs does not matter.
* :func:`database_errors` is the boundary where driver errors become
  :class:`~dynamic_asgs.errors.DatabaseError` (driver message only, never the SQL's
  parameters or the connection password).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dynamic_asgs.config import load_schema
from dynamic_asgs.errors import ConfigError, DatabaseError

__all__ = [
    "DatabaseSettings",
    "create_engine",
    "daemon_schema",
    "database_errors",
    "db_now",
    "read_connection",
    "write_connection",
]

_DRIVERS = {"postgres": "postgresql+psycopg", "mysql": "mysql+pymysql"}
_NOW = {
    "postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
    "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
    "mariadb": "SELECT UNIX_TIMESTAMP(NOW(6))",
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
}


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """The ``database`` object of a daemon's configuration."""

    type: str
    database_name: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: int = 0
    timeout: int = 120
    require_ssl: bool = False
    ca_cert: str = ""
    skip_hostname_validation: bool = False
    client_cert: str = ""
    client_key: str = ""

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], *, source: str) -> DatabaseSettings:
        """Build settings from a validated config object; check what the schema cannot."""
        settings = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        if settings.type != "sqlite":
            for key in ("host", "port", "user"):
                if not getattr(settings, key):
                    raise ConfigError(f"{source}: $.database.{key}: is required for type {settings.type!r}")
        return settings


def daemon_schema(package: str, name: str) -> dict[str, Any]:
    """A daemon's config schema with ``$defs.database`` filled from ``database_schema.json``."""
    schema = load_schema(package, name)
    database = load_schema("dynamic_asgs.policydb", "database_schema.json")
    database.pop("$schema", None)
    schema.setdefault("$defs", {})["database"] = database
    return schema


def _url(settings: DatabaseSettings) -> sa.URL:
    if settings.type == "sqlite":
        return sa.URL.create("sqlite+pysqlite", database=settings.database_name)
    return sa.URL.create(
        _DRIVERS[settings.type], username=settings.user, password=settings.password or None,
        host=settings.host, port=settings.port, database=settings.database_name,
    )


# Bounded waits, so that a session lost without a reset (a silent network cut) cannot hang the
# next sync on the row locks it still holds: the server ends a transaction left idle, a lock
# wait or a statement fails after a bound (the syncer retries), and keepalives find dead peers.
LOCK_WAIT_SECONDS = 30
STATEMENT_SECONDS = 120
IDLE_IN_TRANSACTION_SECONDS = 60
MYSQL_IDLE_SECONDS = 600  # the server drops idle sessions (and rolls back their work) after this
_POSTGRES_OPTIONS = (f"-c lock_timeout={LOCK_WAIT_SECONDS * 1000} -c statement_timeout={STATEMENT_SECONDS * 1000} "
                     f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_SECONDS * 1000}")
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _connect_args(settings: DatabaseSettings) -> dict[str, Any]:
    if settings.type == "sqlite":
        return {"timeout": 30, "check_same_thread": False}
    if settings.type == "postgres":
        args: dict[str, Any] = {"connect_timeout": settings.timeout, "application_name": "dynamic-asgs",
                                "options": _POSTGRES_OPTIONS, **_KEEPALIVES}
        if settings.require_ssl:
            args["sslmode"] = "require" if settings.skip_hostname_validation else "verify-full"
            if settings.ca_cert:
                args["sslrootcert"] = settings.ca_cert
            if settings.client_cert:
                args.update(sslcert=settings.client_cert, sslkey=settings.client_key)
        else:
            args["sslmode"] = "disable"
        return args
    args = {"connect_timeout": settings.timeout, "charset": "utf8mb4", "read_timeout": STATEMENT_SECONDS,
            "write_timeout": STATEMENT_SECONDS,
            "init_command": f"SET SESSION innodb_lock_wait_timeout={LOCK_WAIT_SECONDS}, "
                            f"SESSION wait_timeout={MYSQL_IDLE_SECONDS}"}
    if settings.require_ssl:
        ssl: dict[str, Any] = {"check_hostname": not settings.skip_hostname_validation}
        if settings.ca_cert:
            ssl["ca"] = settings.ca_cert
        if settings.client_cert:
            ssl.update(cert=settings.client_cert, key=settings.client_key)
        args["ssl"] = ssl
    return args


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("dasg_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_engine(settings: DatabaseSettings, *, pool_size: int = 5, max_overflow: int = 10,
                  pool_recycle: int = 3600) -> Engine:
    """An engine for ``settings`` (connections are opened lazily)."""
    kwargs: dict[str, Any] = {"connect_args": _connect_args(settings), "pool_pre_ping": True}
    if settings.type != "sqlite":
        if settings.type != "postgres":
            pool_recycle = min(pool_recycle, MYSQL_IDLE_SECONDS - 60)  # before the server drops them
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_recycle=pool_recycle)
    engine = sa.create_engine(_url(settings), **kwargs)
    if settings.type == "sqlite":
        _sqlite_hooks(engine)
    return engine


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a write transaction (committed when the block ends without error)."""
    with engine.connect() as conn:
        conn.execution_options(dasg_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read_connection(engine: Engine, *, snapshot: bool = False) -> Iterator[Connection]:
    """A connection inside a read transaction; ``snapshot`` makes every read see one state."""
    with engine.connect() as conn:
        if snapshot and engine.dialect.name in ("postgresql", "mysql", "mariadb"):
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def db_now(conn: Connection) -> float:
    """The database server's current time, in epoch seconds."""
    value = conn.exec_driver_sql(_NOW[conn.dialect.name]).scalar_one()
    return float(value)


@contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Turn driver and pool errors inside the block into DatabaseError naming ``what``."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        detail = str(orig if orig is not None else exc).strip().splitlines()
        reason = detail[0] if detail else type(exc).__name__
        raise DatabaseError(f"policy DB: {what}: {reason}") from exc
