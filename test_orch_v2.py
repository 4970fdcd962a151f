"""Tests for orch_v2, in the module's order: real MariaDB servers, real SQLite files, real HTTP.

Every MySQL test runs against a mariadbd started here (throwaway data directory, free port) with
orchestrator's real schema; the conformance tests replay the shared fixtures with the backend clock frozen
at the capture instant (libfaketime).  Nothing is mocked.  Run: python -m pytest -q test_orch_v2.py
"""

import base64
import contextlib
import datetime
import glob
import http.client
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import orch_v2

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "testdata")
SHARED = os.environ.get("ORCH_V2_SHARED") or next(
    (path for path in (os.path.join(HERE, "..", "shared"), "/work/shared") if os.path.isdir(path)),
    os.path.join(HERE, "..", "shared"))
FIXTURES = os.path.join(SHARED, "fixtures")
IN_CI = os.environ.get("CI") == "true"


# ============================================================================================ harness

def require(available, what):
    """Skip a test whose prerequisite is missing; with CI=true, fail it instead."""
    if not available:
        if IN_CI:
            pytest.fail(f"{what} is required when CI=true")
        pytest.skip(f"{what} is not available")


def find_program(*names):
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


MARIADBD = find_program("mariadbd", "mysqld")
INSTALL_DB = find_program("mariadb-install-db", "mysql_install_db")
MARIADB_CLIENT = find_program("mariadb", "mysql")
FAKETIME_LIBRARY = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                                    + glob.glob("/usr/lib/faketime/libfaketime.so.1"))), None)

try:
    import pymysql
except ImportError:
    pymysql = None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class MariaDB:
    """A throwaway mariadbd: its own data directory and free port, root over a Unix socket.

    frozen_at starts it under libfaketime with NOW() fixed at that UTC instant; init_connect sets the
    server's init_connect (the ProxySQL Admin stand-in uses it).
    """

    _template = None  # one initialised data directory per test session, copied for every server

    def __init__(self, name, frozen_at=None, extra_arguments=()):
        require(pymysql is not None, "PyMySQL")
        require(MARIADBD and INSTALL_DB and MARIADB_CLIENT, "MariaDB server (mariadbd, mariadb-install-db)")
        if frozen_at:
            require(FAKETIME_LIBRARY, "libfaketime (Debian package faketime)")
        self.name = name
        self.frozen_at = frozen_at
        self.extra_arguments = list(extra_arguments)
        self.directory = tempfile.mkdtemp(prefix=f"orch_v2-test-{name}-")
        self.socket = os.path.join(self.directory, "mysqld.sock")
        self.port = free_port()
        self.process = None

    @classmethod
    def _data_template(cls):
        if cls._template is None:
            directory = tempfile.mkdtemp(prefix="orch_v2-test-template-")
            datadir = os.path.join(directory, "data")
            arguments = [INSTALL_DB, "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
                         "--auth-root-authentication-method=normal"]
            if os.geteuid() == 0:
                arguments.append("--user=root")
            subprocess.run(arguments, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
            cls._template = datadir
        return cls._template

    def start(self):
        datadir = os.path.join(self.directory, "data")
        if not os.path.isdir(datadir):
            shutil.copytree(self._data_template(), datadir)
        arguments = [MARIADBD, "--no-defaults", f"--datadir={datadir}", f"--port={self.port}",
                     "--bind-address=127.0.0.1", f"--socket={self.socket}",
                     f"--pid-file={os.path.join(self.directory, 'mysqld.pid')}", "--skip-log-bin",
                     "--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--max-connections=1000",
                     "--performance-schema=OFF", *self.extra_arguments]
        if os.geteuid() == 0:
            arguments.append("--user=root")
        environment = dict(os.environ, TZ="UTC")
        if self.frozen_at:
            environment.update(LD_PRELOAD=FAKETIME_LIBRARY, FAKETIME=self.frozen_at)
        self.log = open(os.path.join(self.directory, "mysqld.log"), "ab")
        self.process = subprocess.Popen(arguments, env=environment, stdout=self.log, stderr=self.log)
        wait_until(self._answers, 60, 0.1, f"mariadbd {self.name} to start")
        return self

    def _answers(self):
        if self.process.poll() is not None:
            raise AssertionError(f"mariadbd {self.name} exited: see {self.directory}/mysqld.log")
        try:
            self.connect().close()
            return True
        except pymysql.err.OperationalError:
            return False

    def connect(self, database=None):
        """A root connection over the Unix socket, autocommit."""
        return pymysql.connect(unix_socket=self.socket, user="root", database=database, autocommit=True,
                               charset="utf8mb4")

    def execute(self, statement, params=None, database=None):
        with contextlib.closing(self.connect(database)) as connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall()

    def load(self, path, database):
        """Run an SQL file (a dump, a schema) with the mariadb client, as an operator would."""
        with open(path, "rb") as stream:
            subprocess.run([MARIADB_CLIENT, "--no-defaults", f"--socket={self.socket}", "-uroot", database],
                           stdin=stream, check=True, capture_output=True, timeout=120)

    def create_reader(self, database, user="orch_v2_reader"):
        """A user with SELECT on the database and nothing else (decision D11); returns (user, password)."""
        password = "pw-" + secrets.token_hex(8)
        self.execute(f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}'")
        self.execute(f"ALTER USER '{user}'@'%' IDENTIFIED BY '{password}'")
        self.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'")
        return user, password

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def pause(self):
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self):
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def destroy(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def write_config(directory, settings, name="orchestrator.conf.json"):
    path = os.path.join(directory, name)
    with open(path, "w") as stream:
        json.dump(settings, stream, indent=1)
    return path


class Response:
    """One HTTP answer: status, headers, raw body and the decoded JSON (key order kept)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        self.json = None
        if body and headers.get("Content-Type", "").startswith("application/json"):
            self.json = json.loads(body)

    @property
    def data(self):
        assert self.json is not None and self.json.get("status") == "ok", (self.status, self.body[:500])
        return self.json["data"]

    def __repr__(self):
        return f"<Response {self.status} {self.body[:300]!r}>"


def http_request(host, port, path, method="GET", headers=None, context=None, timeout=30):
    """One request on a fresh connection (HTTPS when context is given)."""
    if context is not None:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    with contextlib.closing(connection):
        connection.request(method, path, headers=headers or {})
        answer = connection.getresponse()
        return Response(answer.status, answer.headers, answer.read())


class OpenAPIContract:
    """openapi.yaml as a validator: every response the tests receive is checked against it (issue 8)."""

    def __init__(self, path=os.path.join(HERE, "openapi.yaml")):
        import yaml
        from openapi_schema_validator import OAS30Validator, oas30_format_checker
        with open(path) as stream:
            self.document = yaml.safe_load(stream)
        self._validator_class, self._format_checker = OAS30Validator, oas30_format_checker
        self._templates = [(template, template.split("/")[1:]) for template in self.document["paths"]]

    def _resolve(self, node):
        while isinstance(node, dict) and "$ref" in node:
            target = self.document
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node

    def operation(self, api_path):
        segments = api_path.split("/")[1:]
        for template, parts in self._templates:
            if len(parts) == len(segments) and all(
                    part == segment or (part.startswith("{") and segment) for part, segment in zip(parts, segments)):
                return template
        return None

    def check(self, method, api_path, response):
        """Assert that the status is documented for the operation and the body matches its schema."""
        template = self.operation(api_path) if api_path is not None else None
        if template is None:  # outside the API (unknown path, other prefix): the error envelope
            schema = {"$ref": "#/components/schemas/ErrorEnvelope"}
        else:
            responses = self.document["paths"][template]["get"]["responses"]
            key = str(response.status)
            if response.status == 405:
                described = self._resolve({"$ref": "#/components/responses/MethodNotAllowed"})
            else:
                assert key in responses, f"{method} {api_path}: status {key} is not documented for {template}"
                described = self._resolve(responses[key])
            if "content" not in described:
                return
            media = "application/yaml" if template == "/openapi.yaml" and response.status == 200 \
                else "application/json"
            schema = described["content"][media]["schema"]
            if media != "application/json":
                return
        assert response.json is not None, f"{method} {api_path}: answer is not JSON: {response.body[:200]!r}"
        root = dict(schema, components=self.document["components"])
        errors = sorted(self._validator_class(root, format_checker=self._format_checker).iter_errors(response.json),
                        key=str)
        assert not errors, f"{method} {api_path} ({response.status}) breaks openapi.yaml: {errors[0]}"


_CONTRACT = []


def contract():
    """The OpenAPI contract, or None when its validator is not installed (not allowed with CI=true)."""
    if not _CONTRACT:
        try:
            _CONTRACT.append(OpenAPIContract())
        except ImportError:
            if IN_CI:
                raise
            _CONTRACT.append(None)
    return _CONTRACT[0]


class Client:
    """Requests to a running orch_v2, each answer checked against openapi.yaml."""

    def __init__(self, host, port, prefix="", context=None):
        self.host, self.port, self.prefix, self.context = host, port, prefix, context

    def get(self, path, method="GET", headers=None, check=True):
        """path is relative to {prefix}/api/v2 when it starts with '/', else sent as it is."""
        full = f"{self.prefix}/api/v2{path}" if path.startswith("/") else path
        response = http_request(self.host, self.port, full, method, headers, self.context)
        api_root = f"{self.prefix}/api/v2"
        validator = contract()
        if check and validator is not None and method in ("GET", "HEAD") and response.body:
            inner = full.split("?")[0]
            api_path = inner[len(api_root):].rstrip("/") if inner.startswith(api_root + "/") else None
            validator.check(method, api_path, response)
        return response


def assert_error(response, status, code, message=None):
    """An error answer: status, envelope with code, and the message (or its prefix, ending in '...')."""
    assert response.status == status, response
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert list(response.json) == ["status", "error"], response.json
    assert response.json["status"] == "error"
    assert response.json["error"]["code"] == code, response.json
    if message is not None:
        actual = response.json["error"]["message"]
        if message.endswith("..."):
            assert actual.startswith(message[:-3]), actual
        else:
            assert actual == message


class OrchV2:
    """orch_v2's ApiServer serving in a thread of this process on a free port, its log captured."""

    def __init__(self, settings, threads=8, request_timeout=10.0, access_log=True, directory=None):
        self.directory = directory or tempfile.mkdtemp(prefix="orch_v2-test-server-")
        settings = dict(settings)
        settings.setdefault("ListenAddress", "127.0.0.1:0")
        self.config = orch_v2.load_config(write_config(self.directory, settings))
        self.backend = orch_v2.open_backend(self.config)
        self.log = io.StringIO()
        self.server = orch_v2.ApiServer(self.config, self.backend, threads=threads,
                                        request_timeout=request_timeout, access_log=access_log,
                                        log_stream=self.log)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.client = Client("127.0.0.1", self.server.address[1], self.config.url_prefix)
        self.get = self.client.get

    def close(self):
        self.server.shutdown()
        assert self.server.wait_stopped(30), "orch_v2 did not stop"


class OrchV2Process:
    """orch_v2 as its own process (python -m orch_v2), for what needs a process: signals, a frozen clock."""

    def __init__(self, settings, arguments=(), environment=None, directory=None):
        self.directory = directory or tempfile.mkdtemp(prefix="orch_v2-test-process-")
        self.port = free_port()
        settings = dict(settings, ListenAddress=f"127.0.0.1:{self.port}")
        self.config_path = write_config(self.directory, settings)
        self.log_path = os.path.join(self.directory, "orch_v2.log")
        self.log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "orch_v2", "--config", self.config_path, *arguments],
                                        cwd=HERE, env=dict(os.environ, **(environment or {})),
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        wait_until(self._listening, 30, 0.05, "orch_v2 to listen")
        self.client = Client("127.0.0.1", self.port, settings.get("URLPrefix", "").strip("/") and
                             "/" + settings["URLPrefix"].strip("/"))
        self.get = self.client.get

    def _listening(self):
        if self.process.poll() is not None:
            raise AssertionError(f"orch_v2 exited with {self.process.returncode}: {self.output()}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def output(self):
        with open(self.log_path, "rb") as stream:
            return stream.read().decode("utf-8", "replace")

    def stop(self, signal_number=signal.SIGTERM, timeout=30):
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        return self.process.wait(timeout)


def run_cli(*arguments, cwd=None, timeout=30, environment=None):
    """python -m orch_v2 with arguments; returns the finished process (stdout and stderr as text)."""
    return subprocess.run([sys.executable, "-m", "orch_v2", *arguments], cwd=cwd or HERE, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=HERE, **(environment or {})))


def load_golden(name):
    with open(os.path.join(FIXTURES, name, "golden.json")) as stream:
        return json.load(stream)


def fixture_settings(name):
    with open(os.path.join(FIXTURES, name, "orchestrator.conf.json")) as stream:
        return json.load(stream)


def captured_at(name):
    with open(os.path.join(FIXTURES, name, "captured_at")) as stream:
        return stream.read().strip()


def assert_same_json(actual, expected, what):
    """Equal as JSON values with the same key order (dumps of order-keeping dicts compare both)."""
    if json.dumps(actual, sort_keys=False) != json.dumps(expected, sort_keys=False):
        assert json.dumps(actual, indent=1) == json.dumps(expected, indent=1), what


@pytest.fixture(scope="session")
def shared_fixtures():
    require(os.path.isdir(FIXTURES), f"the shared fixtures ({FIXTURES})")
    return FIXTURES


# ======================================================================================= hand-made rows

def _absolute_time(value, now):
    """'@now', '@now+3600', '@now-300' as UTC 'YYYY-MM-DD HH:MM:SS'; anything else unchanged."""
    match = re.fullmatch(r"@now([+-][0-9]+)?", value) if isinstance(value, str) else None
    if not match:
        return value
    moment = now + datetime.timedelta(seconds=int(match.group(1) or 0))
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def dataset_rows(*names):
    """Rows of testdata/<name>.json datasets, completed from testdata/defaults.json: {table: [rows]}.

    A database_instance row with "replica_of": "host:port" also gets the "replica" defaults (a running
    replica of that master).  Keys starting with '_' are comments.
    """
    with open(os.path.join(TESTDATA, "defaults.json")) as stream:
        defaults = json.load(stream)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    tables = {}
    for name in names:
        with open(os.path.join(TESTDATA, f"{name}.json")) as stream:
            dataset = json.load(stream)
        for table, rows in dataset["tables"].items():
            for given in rows:
                row = dict(defaults.get(table, {}))
                given = dict(given)
                if "replica_of" in given:
                    host, port = given.pop("replica_of").rsplit(":", 1)
                    row.update(defaults["replica"], master_host=host, master_port=int(port))
                row.update(given)
                tables.setdefault(table, []).append(
                    {column: _absolute_time(value, now) for column, value in row.items() if not column.startswith("_")})
    return tables


class Store:
    """Where a test's hand-made rows live: a database on the session's MariaDB, or an orchestrator SQLite file.

    Both get orchestrator's real schema (testdata/schema-*.sql); orch_v2 reads MySQL as a SELECT-only user.
    """

    def __init__(self, kind, mariadb=None):
        self.kind = kind
        self.mariadb = mariadb
        self.servers = []
        self.directory = tempfile.mkdtemp(prefix=f"orch_v2-test-{kind}-")
        if kind == "mysql":
            self.database = "orch_" + secrets.token_hex(4)
            mariadb.execute(f"CREATE DATABASE `{self.database}`")
            mariadb.load(os.path.join(TESTDATA, "schema-mysql.sql"), self.database)
            self.user, self.password = mariadb.create_reader(self.database, user="r_" + self.database)
        else:
            self.path = os.path.join(self.directory, "orchestrator.db")
            with contextlib.closing(sqlite3.connect(self.path)) as connection:
                connection.execute("PRAGMA journal_mode = WAL")  # as orchestrator runs its file
                with open(os.path.join(TESTDATA, "schema-sqlite.sql")) as stream:
                    connection.executescript(stream.read())

    def execute(self, statement, params=()):
        """Run a writing statement (with ? placeholders) as orchestrator would, outside orch_v2."""
        if self.kind == "mysql":
            with contextlib.closing(self.mariadb.connect(self.database)) as connection:
                with connection.cursor() as cursor:
                    cursor.execute(statement.replace("%", "%%").replace("?", "%s"), tuple(params))
                    return cursor.fetchall()
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as connection:
            rows = connection.execute(statement, tuple(params)).fetchall()
            connection.commit()
            return rows

    def insert(self, tables):
        for table, rows in tables.items():
            for row in rows:
                columns = ", ".join(row)
                self.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})",
                             list(row.values()))

    def load(self, *names):
        """Insert the rows of testdata datasets; returns self."""
        self.insert(dataset_rows(*names))
        return self

    def settings(self, **extra):
        """orchestrator.conf.json settings that point at this store."""
        if self.kind == "mysql":
            settings = {"MySQLOrchestratorHost": "127.0.0.1", "MySQLOrchestratorPort": self.mariadb.port,
                        "MySQLOrchestratorDatabase": self.database, "MySQLOrchestratorUser": self.user,
                        "MySQLOrchestratorPassword": self.password, "MySQLConnectTimeoutSeconds": 1}
        else:
            settings = {"BackendDB": "sqlite", "SQLite3DataFile": self.path}
        settings.update(HostnameResolveMethod="none", **extra)
        return settings

    def serve(self, **extra):
        """orch_v2 on this store (stopped at the end of the test)."""
        orch = OrchV2(self.settings(**extra), directory=self.directory)
        self.servers.append(orch)
        return orch

    def drop(self):
        for orch in self.servers:
            orch.close()
        if self.kind == "mysql" and self.mariadb.process is not None:
            self.mariadb.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
            self.mariadb.execute(f"DROP USER IF EXISTS '{self.user}'@'%'")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def live_mariadb():
    """A MariaDB whose clock runs, shared by the tests of the session (each uses its own database)."""
    db = MariaDB("live").start()
    yield db
    db.destroy()


@pytest.fixture(params=["mysql", "sqlite"])
def store(request):
    """A fresh store on each backend: the hand-made suite runs once on MySQL and once on SQLite."""
    mariadb = request.getfixturevalue("live_mariadb") if request.param == "mysql" else None
    created = Store(request.param, mariadb)
    yield created
    created.drop()


@pytest.fixture
def mysql_store(live_mariadb):
    created = Store("mysql", live_mariadb)
    yield created
    created.drop()


@pytest.fixture
def sqlite_store():
    created = Store("sqlite")
    yield created
    created.drop()


# =============================================================================== conformance (fixtures)

def _golden_cases(*names):
    cases = []
    for name in names:
        path = os.path.join(FIXTURES, name, "golden.json")
        if os.path.exists(path):
            cases += [pytest.param(name, request_path, id=f"{name}{request_path}")
                      for request_path in load_golden(name)]
    return cases


@pytest.fixture(scope="module")
def mysql_labs(shared_fixtures):
    """orch_v2 on lab-a and lab-b: each backend.sql in a MariaDB frozen at its capture instant."""
    started, servers = {}, []

    def lab(name):
        if name not in started:
            settings = fixture_settings(name)
            database = settings["MySQLOrchestratorDatabase"]
            db = MariaDB(name, frozen_at=captured_at(name)).start()
            servers.append(db)
            db.execute(f"CREATE DATABASE `{database}`")
            db.load(os.path.join(FIXTURES, name, "backend.sql"), database)
            user, password = db.create_reader(database)
            settings.update(MySQLOrchestratorHost="127.0.0.1", MySQLOrchestratorPort=db.port,
                            MySQLOrchestratorUser=user, MySQLOrchestratorPassword=password)
            started[name] = OrchV2(settings)
            started[name].db = db
        return started[name]

    yield lab
    for orch in started.values():
        orch.close()
    for db in servers:
        db.destroy()


@pytest.fixture(scope="module")
def sqlite_lab(shared_fixtures):
    """orch_v2 as a process on a copy of sqlite-a's file, its clock frozen at the capture instant."""
    require(FAKETIME_LIBRARY, "libfaketime (Debian package faketime)")
    directory = tempfile.mkdtemp(prefix="orch_v2-test-sqlite-a-")
    for path in glob.glob(os.path.join(FIXTURES, "sqlite-a", "orchestrator.db*")):
        shutil.copy(path, directory)
        os.chmod(os.path.join(directory, os.path.basename(path)), 0o644)
    settings = dict(fixture_settings("sqlite-a"), SQLite3DataFile=os.path.join(directory, "orchestrator.db"))
    orch = OrchV2Process(settings, ["--quiet"], directory=directory, environment={
        "LD_PRELOAD": FAKETIME_LIBRARY, "FAKETIME": captured_at("sqlite-a"), "TZ": "UTC",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    yield orch
    orch.stop()
    shutil.rmtree(directory, ignore_errors=True)


def _check_golden(orch, fixture, request_path):
    expected = load_golden(fixture)[request_path]
    response = orch.get(request_path)
    assert response.status == 200, response
    actual = response.data
    if request_path == "/status":  # Hostname and Token belong to the answering process (fixtures README)
        assert actual["Hostname"] == socket.gethostname()
        assert len(actual["Token"]) == 64 and set(actual["Token"]) <= set("0123456789abcdef")
        actual = dict(actual, Hostname=None, Token=None)
    assert_same_json(actual, expected, f"{fixture} {request_path}")


class TestConformance:
    """Every golden.json entry, replayed at the capture instant, equals orch_v2's answer."""

    @pytest.mark.parametrize("fixture, request_path", _golden_cases("lab-a", "lab-b"))
    def test_mysql_fixture_entry_matches_orchestrator(self, mysql_labs, fixture, request_path):
        _check_golden(mysql_labs(fixture), fixture, request_path)

    @pytest.mark.parametrize("fixture, request_path", _golden_cases("sqlite-a"))
    def test_sqlite_fixture_entry_matches_orchestrator(self, sqlite_lab, fixture, request_path):
        _check_golden(sqlite_lab, fixture, request_path)

    def test_shared_fixtures_are_present_in_ci(self, shared_fixtures):
        """With CI=true the conformance tests must run: the fixtures are there and hold entries."""
        assert len(_golden_cases("lab-a", "lab-b", "sqlite-a")) > 90

    @pytest.mark.parametrize("hint", ["SHOP", "shop-db.example.internal", "nonexistent", "127.0.0.1", "%25",
                                      "abc:def", "d%C3%BC-a", "a" * 300])
    def test_unresolvable_hint_is_404_not_found(self, mysql_labs, hint):
        """Decision D1: a hint orchestrator cannot resolve is 404, on every cluster endpoint."""
        orch = mysql_labs("lab-a")
        for suffix in ("", "/instances", "/topology"):
            response = orch.get(f"/clusters/{hint}{suffix}")
            assert_error(response, 404, "NOT_FOUND", "Cluster not found: Unable to determine cluster name. "
                                                      "clusterHint=...")
