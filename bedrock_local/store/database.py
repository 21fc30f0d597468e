"""Opening the database: SQLite (WAL) in the data dir by default, PostgreSQL by URL; migrations
run with Alembic under a lock so that several processes may start at once."""

import contextlib
import fcntl
import os
import secrets
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bedrock_local.store.schema import Meta

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x6265_6472  # "bedr"


class Database:
    """An engine and a session factory over one database URL."""

    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._token_secret: bytes | None = None
        if self.is_sqlite:
            self.engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            url = url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
            self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self._own = threading.local()  # SQLite: each thread's own connection for one-statement reads
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessions = sessionmaker(self.engine.execution_options(readonly=True), expire_on_commit=False)

    def session(self) -> Session:
        """A session for work that writes (on SQLite it takes the write lock at BEGIN)."""
        return self.sessions()

    def read_session(self) -> Session:
        """A session that only reads: never waits for writers."""
        return self.read_sessions()

    def own_read_connection(self):
        """SQLite only: this thread's own DBAPI connection, kept for one-statement reads outside any
        transaction (autocommit, WAL: each statement sees the newest commit and waits for no writer).
        Taking a pooled connection and giving it back costs more than an indexed lookup by ARN.
        A process made by fork() opens its own instead of sharing its parent's."""
        own = getattr(self._own, "connection", None)
        if own is None or own[0] != os.getpid():
            connection = self.engine.raw_connection()
            connection.detach()  # out of the pool's count, closed with the thread's last reference
            own = self._own.connection = (os.getpid(), connection)
        return own[1]

    def migrate(self) -> None:
        """Bring the schema to the newest revision; safe to call from many processes at once."""
        with self._migration_lock():
            with self.engine.connect() as connection:
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()

    @contextlib.contextmanager
    def _migration_lock(self):
        if self.is_sqlite:
            path = Path(self.engine.url.database).with_suffix(".migrate.lock")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield
        else:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})

    def meta_value(self, key: str, default_factory) -> str:
        """A value shared by every process on this database, made once on first use."""
        try:
            with self.session() as session, session.begin():
                row = session.get(Meta, key)
                if row is None:
                    row = Meta(key=key, value=default_factory())
                    session.add(row)
                return row.value
        except IntegrityError:  # another process made it at the same moment (PostgreSQL): use theirs
            with self.read_session() as session:
                return session.get(Meta, key).value

    def token_secret(self) -> bytes:
        if self._token_secret is None:
            self._token_secret = bytes.fromhex(self.meta_value("token_secret", lambda: secrets.token_hex(32)))
        return self._token_secret

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record):
    dbapi_connection.isolation_level = None  # transactions are begun explicitly (BEGIN IMMEDIATE)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _sqlite_begin(connection):
    readonly = connection.get_execution_options().get("readonly")
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def open_database(url: str, migrate: bool = True) -> Database:
    database = Database(url)
    if migrate:
        database.migrate()
    return database
