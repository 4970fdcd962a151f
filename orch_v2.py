#!/usr/bin/env python3
"""orch_v2: orchestrator's API v2, served read-only from orchestrator's own backend.

orch_v2 reads the backend database of an orchestrator deployment (MySQL/MariaDB through PyMySQL, or
orchestrator's SQLite file through the standard library) and ProxySQL's Admin interface, computes what
orchestrator itself would answer, and serves it under ``{URLPrefix}/api/v2`` with one JSON envelope::

    {"status": "ok", "data": ...}
    {"status": "error", "error": {"code": "NOT_FOUND", "message": "..."}}

Run it beside orchestrator with orchestrator's own configuration file::

    python -m orch_v2 --config /etc/orchestrator.conf.json

or try it with nothing installed: ``python -m orch_v2 --demo``.  It never writes to the backend.
"""

import argparse
import base64
import binascii
import collections
import contextlib
import datetime
import decimal
import functools
import hashlib
import hmac
import http.server
import io
import itertools
import json
import math
import os
import queue
import re
import secrets
import select
import selectors
import signal
import socket
import sqlite3
import ssl
import stat
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

__version__ = "0.1.0"
__all__ = [
    "ApiError",
    "ApiServer",
    "BackendError",
    "Config",
    "ConfigError",
    "MySQLBackend",
    "SQLiteBackend",
    "create_demo_database",
    "load_config",
    "main",
    "open_backend",
    "read_active_recoveries",
    "read_cluster_info",
    "read_cluster_instances",
    "read_clusters",
    "read_instance",
    "read_proxysql_servers",
    "read_recoveries",
    "read_status",
    "render_topology",
    "resolve_cluster_hint",
    "route_request",
]


# ============================================================================================ constants

API_ROOT = "/api/v2"
# Where orchestrator looks for its configuration when --config is not given; every file found applies.
DEFAULT_CONFIG_FILES = ("/etc/orchestrator.conf.json", "conf/orchestrator.conf.json", "orchestrator.conf.json")
RECOVERY_PAGE_SIZE = 20  # decision D10: orchestrator's constant; AuditPageSize is ignored, as orchestrator does
MAX_HINT_LENGTH = 255  # decision D1: longer hints and hosts cannot be stored in the backend
MAX_REQUEST_LINE = 8192
MAX_REQUEST_HEAD = 65536
DEFAULT_THREADS = 16
KEEP_ALIVE_LINGER_SECONDS = 0.005  # how long a free worker waits for a keep-alive client's next request
QUICK_WORKERS = 2  # workers kept for answers that need no backend, so that a hung backend cannot delay them
DEFAULT_REQUEST_TIMEOUT = 10.0
SHUTDOWN_GRACE_SECONDS = 10.0
PROXYSQL_TIMEOUT_SECONDS = 1  # connect, read and write, as the ProxySQL fork's reader uses
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
UINT64_MAX = 2 ** 64 - 1
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as orchestrator prints it
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"


# =============================================================================================== errors

class ConfigError(Exception):
    """The configuration cannot be used: orch_v2 refuses to start (exit status 2)."""


class BackendError(Exception):
    """A read from orchestrator's backend or from ProxySQL failed; the message is safe to show to clients."""


class ApiError(Exception):
    """An error answer: HTTP status, envelope code and message."""

    def __init__(self, status, code, message, headers=()):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = tuple(headers)


# ======================================================================================== configuration

# Every orchestrator.conf.json key orch_v2 honours: (name, type, default) (spec: config.md section 3).
CONFIG_KEYS = (
    # backend
    ("BackendDB", "string", "mysql"),
    ("SQLite3DataFile", "string", ""),
    ("MySQLOrchestratorHost", "string", ""),
    ("MySQLOrchestratorPort", "uint", 3306),
    ("MySQLOrchestratorDatabase", "string", ""),
    ("MySQLOrchestratorUser", "string", ""),
    ("MySQLOrchestratorPassword", "string", ""),
    ("MySQLOrchestratorCredentialsConfigFile", "string", ""),
    ("MySQLOrchestratorUseMutualTLS", "bool", False),
    ("MySQLOrchestratorSSLCAFile", "string", ""),
    ("MySQLOrchestratorSSLCertFile", "string", ""),
    ("MySQLOrchestratorSSLPrivateKeyFile", "string", ""),
    ("MySQLOrchestratorSSLSkipVerify", "bool", False),
    ("MySQLConnectTimeoutSeconds", "int", 2),
    ("MySQLOrchestratorReadTimeoutSeconds", "int", 30),
    ("MySQLOrchestratorMaxPoolConnections", "int", 128),
    ("MySQLConnectionLifetimeSeconds", "int", 0),
    # HTTP
    ("ListenAddress", "string", ":3000"),
    ("ListenSocket", "string", ""),
    ("URLPrefix", "string", ""),
    ("UseSSL", "bool", False),
    ("SSLCertFile", "string", ""),
    ("SSLPrivateKeyFile", "string", ""),
    ("UseMutualTLS", "bool", False),
    ("SSLCAFile", "string", ""),
    ("SSLValidOUs", "list", []),
    ("StatusEndpoint", "string", "/api/status"),
    ("StatusOUVerify", "bool", False),
    ("AuthenticationMethod", "string", ""),
    ("HTTPAuthUser", "string", ""),
    ("HTTPAuthPassword", "string", ""),
    # data rules
    ("InstancePollSeconds", "uint", 5),
    ("ReasonableReplicationLagSeconds", "int", 10),
    ("ReasonableMaintenanceReplicationLagSeconds", "int", 20),
    ("DefaultInstancePort", "int", 3306),
    ("HostnameResolveMethod", "string", "default"),
    ("RejectHostnameResolvePattern", "string", ""),
    ("ExpiryHostnameResolvesMinutes", "int", 60),
    ("ClusterNameToAlias", "map", {}),
    ("RecoverMasterClusterFilters", "list", []),
    ("RecoverIntermediateMasterClusterFilters", "list", []),
    ("ServeAgentsHttp", "bool", False),
    ("RaftEnabled", "bool", False),
    ("RaftBind", "string", "127.0.0.1:10008"),
    ("RaftAdvertise", "string", ""),
    # ProxySQL
    ("ProxySQLAdminAddress", "string", ""),
    ("ProxySQLAdminPort", "int", 6032),
    ("ProxySQLAdminUser", "string", "admin"),
    ("ProxySQLAdminPassword", "string", ""),
    ("ProxySQLAdminUseTLS", "bool", False),
    ("ProxySQLWriterHostgroup", "int", 0),
    ("ProxySQLReaderHostgroup", "int", 0),
)
_CONFIG_KEYS_BY_LOWER_NAME = {name.lower(): (name, kind) for name, kind, _ in CONFIG_KEYS}
_SECRET_KEYS = ("MySQLOrchestratorPassword", "HTTPAuthPassword", "ProxySQLAdminPassword")


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so that key order and repeated keys survive decoding."""


class _FloatLiteral(str):
    """A JSON number with a fraction or an exponent, kept as text so that integer fields can reject it."""


def _reject_json_constant(name):
    raise ValueError(f"{name} is not JSON")


def _decode_json(text):
    """Decode JSON as Go does for orchestrator's files: objects as _Pairs, no NaN/Infinity, floats marked."""
    return json.loads(text, object_pairs_hook=_Pairs, parse_float=_FloatLiteral,
                      parse_constant=_reject_json_constant)


def _is_json_string(value):
    return isinstance(value, str) and not isinstance(value, _FloatLiteral)


def _config_value(name, kind, value, current, source):
    """Decode one occurrence of a known key; a wrong type is a start-up error (spec: config.md 2)."""
    if value is None:  # null leaves scalars unchanged and empties lists and maps
        return [] if kind == "list" else {} if kind == "map" else current
    wrong = f"{source}: {name} must be "
    if kind == "string":
        if _is_json_string(value):
            return value
        raise ConfigError(wrong + "a string")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(wrong + "true or false")
    if kind in ("int", "uint"):
        low, high = (INT64_MIN, INT64_MAX) if kind == "int" else (0, UINT64_MAX)
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise ConfigError(wrong + ("an integer" if kind == "int" else "a non-negative integer")
                          + " without fraction or exponent")
    if kind == "list":
        if isinstance(value, list) and not isinstance(value, _Pairs) and all(
                item is None or _is_json_string(item) for item in value):
            return ["" if item is None else item for item in value]
        raise ConfigError(wrong + "a list of strings")
    # kind == "map": occurrences merge; a pattern keeps the position where it first appeared (decision D4)
    if isinstance(value, _Pairs) and all(item is None or _is_json_string(item) for _, item in value):
        merged = dict(current)
        for key, item in value:
            merged[key] = "" if item is None else item
        return merged
    raise ConfigError(wrong + "an object of strings")


def _read_text_file(path, what):
    try:
        with open(path, "rb") as stream:
            return stream.read().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None


def _apply_config_file(values, path):
    """Apply one orchestrator.conf.json on top of values (spec: config.md section 2)."""
    text = _read_text_file(path, "configuration file")
    try:
        document = _decode_json(text)
    except (ValueError, RecursionError) as error:
        raise ConfigError(f"configuration file {path} is not valid JSON: {error}") from None
    if not isinstance(document, _Pairs):
        raise ConfigError(f"configuration file {path} must hold one JSON object")
    for key, value in document:
        known = _CONFIG_KEYS_BY_LOWER_NAME.get(key.lower())
        if known is not None:
            name, kind = known
            values[name] = _config_value(name, kind, value, values[name], path)
    _adjust_config(values)


def _adjust_config(values):
    """orchestrator's adjustments after each file, in its order (spec: config.md 2.2)."""
    credentials_file = values["MySQLOrchestratorCredentialsConfigFile"]
    if credentials_file:
        values["MySQLOrchestratorUser"], values["MySQLOrchestratorPassword"] = \
            _load_credentials_file(credentials_file)
    variable = re.search(r"\$\{(.*)\}", values["MySQLOrchestratorPassword"])
    if variable:
        values["MySQLOrchestratorPassword"] = os.environ.get(variable.group(1), "")
    prefix = values["URLPrefix"].strip("/")
    values["URLPrefix"] = "/" + prefix if prefix else ""  # decision D12
    if not values["RaftAdvertise"]:
        values["RaftAdvertise"] = values["RaftBind"]


def _load_credentials_file(path):
    """Return (user, password) from a git-config style [client] section (spec: config.md section 4)."""
    variables = _parse_credentials(_read_text_file(path, "MySQLOrchestratorCredentialsConfigFile"), path)
    return variables.get("user", ""), variables.get("password", "")


_CREDENTIAL_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def _parse_credentials(text, path):
    """Parse the [client] user/password file with gcfg's rules; anything else is a start-up error."""
    variables, in_client, position, line = {}, False, 0, 1

    def fail(problem):
        raise ConfigError(f"MySQLOrchestratorCredentialsConfigFile {path}, line {line}: {problem}")

    def skip_comment(at):
        end = text.find("\n", at)
        return len(text) if end < 0 else end

    while position < len(text):
        char = text[position]
        if char == "\n":
            line, position = line + 1, position + 1
        elif char in " \t\r\f\v":
            position += 1
        elif char in "#;":
            position = skip_comment(position)
        elif char == "[":
            end = text.find("]", position)
            newline = text.find("\n", position)
            if end < 0 or (0 <= newline < end):
                fail("unterminated section header")
            section = text[position + 1:end].strip()
            if section.lower() != "client":
                fail(f"section [{section}] is not allowed; only [client] with user and password")
            in_client, position = True, end + 1
            rest_end = skip_comment(position)
            rest = text[position:rest_end]
            comment = re.search(r"[#;]", rest)
            if (rest[:comment.start()] if comment else rest).strip():
                fail("unexpected text after the section header")
            position = rest_end
        elif char.isascii() and char.isalpha():
            name = re.match(r"[A-Za-z][A-Za-z0-9-]*", text[position:]).group(0)
            position += len(name)
            if not in_client:
                fail(f"variable {name} outside the [client] section")
            if name.lower() not in ("user", "password"):
                fail(f"variable {name} is not allowed; only user and password")
            while position < len(text) and text[position] in " \t":
                position += 1
            if position >= len(text) or text[position] != "=":
                fail(f"variable {name} has no value")
            value, position, line = _scan_credential_value(text, position + 1, line, fail)
            variables[name.lower()] = value
        else:
            fail(f"syntax error at {char!r}")
    return variables


def _scan_credential_value(text, position, line, fail):
    """Scan a value after '=': quotes, the four escapes, comments and line continuations."""
    out, pending_space, quoted = [], [], False
    while position < len(text) and text[position] in " \t":
        position += 1
    while position < len(text):
        char = text[position]
        if char == "\n":
            if quoted:
                fail("unterminated quoted value")
            break
        if char == "\\":
            following = text[position + 1:position + 2]
            if following == "\r" and text[position + 2:position + 3] == "\n":
                following = "\r\n"
            if following in ("\n", "\r\n") and not quoted:
                line, position = line + 1, position + 1 + len(following)
                continue
            if following not in _CREDENTIAL_ESCAPES:
                fail(f"invalid escape \\{following}")
            out.extend(pending_space)
            pending_space = []
            out.append(_CREDENTIAL_ESCAPES[following])
            position += 2
            continue
        if char == '"':
            out.extend(pending_space)
            pending_space, quoted = [], not quoted
        elif not quoted and char in "#;":
            end = text.find("\n", position)
            position = len(text) if end < 0 else end
            break
        elif not quoted and char in " \t\r":
            pending_space.append(char)  # kept only if more text follows: trailing space is trimmed
        else:
            out.extend(pending_space)
            pending_space = []
            out.append(char)
        position += 1
    if quoted:
        fail("unterminated quoted value")
    return "".join(out), position, line


def _parse_listen_address(text):
    """Split 'host:port' or '[v6]:port' (empty host: every interface); None when malformed."""
    match = re.fullmatch(r"\[([^\]]*)\]:([0-9]{1,5})|([^:\[\]]*):([0-9]{1,5})", text)
    if not match:
        return None
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    return (host, port) if port <= 65535 else None


class _ClusterFilter:
    """One entry of Recover(Intermediate)MasterClusterFilters (spec: clusters-and-topology.md 1.4)."""

    def __init__(self, text, compile_pattern):
        self.text = text
        self.alias_value = text[len("alias="):] if text.startswith("alias=") else None
        self.alias_pattern = None
        self.name_pattern = None
        if self.alias_value is None and text.startswith("alias~="):
            self.alias_pattern = compile_pattern(text[len("alias~="):])
        elif self.alias_value is None and text not in ("*", ""):
            self.name_pattern = compile_pattern(text)
        self.is_alias_regex = self.alias_value is None and text.startswith("alias~=")

    def matches(self, name, alias):
        if self.text in (name, alias):
            return True
        if self.alias_value is not None:
            return alias == self.alias_value
        if self.is_alias_regex:
            return self.alias_pattern is not None and self.alias_pattern.search(alias) is not None
        if self.text == "*":
            return True
        return self.name_pattern is not None and self.name_pattern.search(name) is not None


class Config:
    """orchestrator.conf.json values under orchestrator's key names, and what orch_v2 derives from them."""

    def __init__(self, values, files=()):
        self.values = values
        self.files = tuple(files)
        self.warnings = []
        self.backend_kind = "sqlite" if "sqlite" in values["BackendDB"] else "mysql"
        if self.backend_kind == "mysql" and values["BackendDB"].lower() not in ("mysql", ""):
            # orchestrator itself runs on MySQL with such a value, so that is the backend to read
            self.warnings.append(f"BackendDB {values['BackendDB']!r} is read as MySQL, as orchestrator reads it "
                                 "(only a value containing 'sqlite' selects SQLite)")
        self.url_prefix = values["URLPrefix"]
        self.alias_patterns = [(self._compile("ClusterNameToAlias", pattern) if pattern else None, alias)
                               for pattern, alias in values["ClusterNameToAlias"].items()]
        self.master_filters = [
            _ClusterFilter(text, lambda p: self._compile("RecoverMasterClusterFilters", p))
            for text in values["RecoverMasterClusterFilters"]]
        self.intermediate_filters = [
            _ClusterFilter(text, lambda p: self._compile("RecoverIntermediateMasterClusterFilters", p))
            for text in values["RecoverIntermediateMasterClusterFilters"]]
        reject = values["RejectHostnameResolvePattern"]
        self.reject_resolve_pattern = self._compile("RejectHostnameResolvePattern", reject) if reject else None
        self.listen = None
        if not values["ListenSocket"]:
            self.listen = _parse_listen_address(values["ListenAddress"])
            if self.listen is None:
                raise ConfigError(f"ListenAddress {values['ListenAddress']!r} is not host:port with a port up to "
                                  "65535 (for example 127.0.0.1:3000, :3000 or [::1]:3000)")
        self.auth_method = values["AuthenticationMethod"].lower()
        if self.auth_method == "multi" and not values["HTTPAuthUser"]:
            raise ConfigError("AuthenticationMethod multi needs a non-empty HTTPAuthUser")
        self.auth_user = values["HTTPAuthUser"].encode("utf-8")
        self.auth_password = values["HTTPAuthPassword"].encode("utf-8")
        self.valid_ous = frozenset(values["SSLValidOUs"])
        if self.backend_kind == "sqlite":
            self.sqlite_path = _sqlite_path(values["SQLite3DataFile"])
        if values["ProxySQLAdminAddress"] and values["ProxySQLWriterHostgroup"] <= 0:
            self.warnings.append("ProxySQLAdminAddress is set but ProxySQLWriterHostgroup is not > 0: "
                                 "/proxysql/servers answers 503 PROXYSQL_NOT_CONFIGURED")

    def __getitem__(self, key):
        return self.values[key]

    def secrets(self):
        """The configured passwords, for scrubbing from anything orch_v2 prints or answers."""
        return [self.values[key] for key in _SECRET_KEYS if len(self.values[key]) >= 3]

    def _compile(self, key, pattern):
        """Compile a configured regex once; one that does not compile matches nothing (decision D5)."""
        try:
            return re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as error:
            self.warnings.append(f"{key}: pattern {pattern!r} does not compile ({error}); it matches nothing")
            return None


def _sqlite_path(data_file):
    """The SQLite file named by SQLite3DataFile, without driver parameters or 'file:' (decision D14)."""
    path = data_file.split("?", 1)[0]
    if path.startswith("file:"):
        path = path[len("file:"):]
    if not path:
        raise ConfigError("BackendDB is sqlite but SQLite3DataFile is empty")
    if ":memory:" in path:
        raise ConfigError("SQLite3DataFile names an in-memory database, which no other process can read")
    return path


def _default_values():
    """orchestrator's defaults for every key, with fresh lists and maps that a file can change."""
    return {name: (list(default) if kind == "list" else dict(default) if kind == "map" else default)
            for name, kind, default in CONFIG_KEYS}


def _apply_listen_option(values, address):
    """--listen HOST:PORT in place of ListenAddress and of ListenSocket; a malformed one is a start-up error."""
    if address is None:
        return
    if _parse_listen_address(address) is None:
        raise ConfigError(f"--listen {address!r} is not host:port with a port up to 65535 "
                          "(for example 127.0.0.1:3000, :3000 or [::1]:3000)")
    values.update(ListenAddress=address, ListenSocket="")


def load_config(path=None, listen=None):
    """Read orchestrator's configuration the way orchestrator does and return a Config.

    With path, only that file is read; without, every file of DEFAULT_CONFIG_FILES that exists applies in
    order on top of orchestrator's defaults.  listen (the --listen option) replaces ListenAddress and
    ListenSocket.  Raises ConfigError on anything orchestrator would refuse.
    """
    values = _default_values()
    files = [path] if path is not None else [name for name in DEFAULT_CONFIG_FILES if os.path.exists(name)]
    for name in files:
        _apply_config_file(values, name)
    _apply_listen_option(values, listen)
    config = Config(values, files)
    if not files:
        config.warnings.append("no configuration file found (" + ", ".join(DEFAULT_CONFIG_FILES) +
                               "): orchestrator's defaults apply; use --config FILE")
    return config


# ====================================================================================== backend access

_SURROGATES_TO_REPLACEMENT = {code: 0xFFFD for code in range(0xDC80, 0xDD00)}


def _decode_utf8(data):
    """UTF-8 text with one U+FFFD per byte that is not part of a valid sequence, as Go's JSON writes it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape").translate(_SURROGATES_TO_REPLACEMENT)


def _go_float_text(value):
    """A float as Go's shortest %g prints it (spec: sqlite-backend.md 3.1)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digit_tuple, exponent = decimal.Decimal(repr(value)).as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) - 1 + exponent  # decimal exponent of the first digit
    digits = digits.rstrip("0")
    minus = "-" if sign else ""
    if point < -4 or point >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if point < 0:
        return f"{minus}0.{'0' * (-point - 1)}{digits}"
    whole = digits[:point + 1].ljust(point + 1, "0")
    fraction = digits[point + 1:]
    return f"{minus}{whole}{'.' + fraction if fraction else ''}"


def _cell_text(value):
    """The text form of a backend cell, or None for NULL (spec: instance.md 3.4, sqlite-backend.md 3.1)."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _decode_utf8(bytes(value))
    if isinstance(value, float):
        return _go_float_text(value)
    return str(value)


_SQLITE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[ T]([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?(?:([+-])([0-9]{2}):([0-9]{2}))?)?)?")


def _rfc3339(moment, fraction="", offset="Z", year=None):
    # The year always has four digits, as Go writes it (strftime's %Y drops the zeros of years before 1000).
    year = moment.year if year is None else year
    return f"{year:04d}" + moment.strftime("-%m-%dT%H:%M:%S") + ("." + fraction if fraction else "") + offset


def _sqlite_timestamp_text(value):
    """A bare `timestamp` column as orchestrator's SQLite driver returns it (spec: sqlite-backend.md 3.2)."""
    if value is None:
        return None
    if isinstance(value, int):  # Unix time, in milliseconds when very large
        milliseconds = value if abs(value) > 10 ** 12 else value * 1000
        try:
            moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=milliseconds)
        except OverflowError:
            return ZERO_TIME
        return _rfc3339(moment, f"{milliseconds % 1000:03d}".rstrip("0"))
    if isinstance(value, float):
        return _go_float_text(value)
    text = _cell_text(value)
    match = _SQLITE_TIME.fullmatch(text[:-1] if text.endswith("Z") else text)
    if not match:
        return ZERO_TIME
    year, month, day, hour, minute, second, fraction, sign, offset_hours, offset_minutes = match.groups()
    try:
        # Go's calendar has a year 0000, a leap year like 2000, which Python's datetime lacks: check it as 2000.
        moment = datetime.datetime(int(year) or 2000, int(month), int(day), int(hour or 0), int(minute or 0),
                                   int(second or 0))
    except ValueError:
        return ZERO_TIME
    offset = "Z"
    if sign and (offset_hours, offset_minutes) != ("00", "00"):
        offset = f"{sign}{offset_hours}:{offset_minutes}"
    return _rfc3339(moment, (fraction or "")[:9].rstrip("0"), offset, year=int(year))


def _sqlite_timestamp_cell(value):
    """A cell of a bare `timestamp` column: the driver converts TEXT and INTEGER, never a BLOB (bytes)."""
    return _cell_text(value) if isinstance(value, bytes) else _sqlite_timestamp_text(value)


# orchestrator writes its statements for MySQL and rewrites them for SQLite; orch_v2 does the same, with
# the few rules its statements need (spec: sqlite-backend.md section 4).  This is the whole SQL dialect.
_SQLITE_REWRITES = (
    (re.compile(r"UNIX_TIMESTAMP\(\)"), "strftime('%s', 'now')"),
    (re.compile(r"UNIX_TIMESTAMP\(([^()]+)\)"), r"strftime('%s', \1)"),
    (re.compile(r"NOW\(\) - INTERVAL ([0-9]+) SECOND"), r"datetime('now', '-\1 second')"),
    (re.compile(r"NOW\(\)"), "datetime('now')"),
    (re.compile(r"CONCAT\(([^()]*)\)"),
     lambda match: "(" + " || ".join(part.strip() for part in match.group(1).split(",")) + ")"),
)


def _sqlite_statement(statement):
    for pattern, replacement in _SQLITE_REWRITES:
        statement = pattern.sub(replacement, statement)
    return statement


def _mysql_statement(statement):
    # PyMySQL interpolates parameters with %: literal % signs are doubled, placeholders become %s.
    return statement.replace("%", "%%").replace("?", "%s")


def _import_pymysql():
    try:
        import pymysql
    except ImportError:
        raise ConfigError("a MySQL backend (and ProxySQL) needs PyMySQL: pip install PyMySQL") from None
    return pymysql


_PYMYSQL_CLASSES = {}


def _length_encoded(data, position):
    """(length or None for NULL, start of the value) of a MySQL length-encoded string at position."""
    first = data[position]
    if first < 251:
        return first, position + 1
    if first == 251:
        return None, position + 1
    size = {252: 2, 253: 3}.get(first, 8)
    return int.from_bytes(data[position + 1:position + 1 + size], "little"), position + 1 + size


SERVER_MORE_RESULTS_EXISTS = 8  # MySQL protocol status flag
_COLUMN_DEFINITIONS = {}  # raw column-definition packets of a result -> their parse (TextResult)


def _read_mysql_packet(connection):
    """The payload of one MySQL packet read on a PyMySQL connection (several packets for 16 MB and over)."""
    payload = b""
    while True:
        header = connection._read_bytes(4)
        length = header[0] | header[1] << 8 | header[2] << 16
        if header[3] != connection._next_seq_id:
            connection._force_close()
            raise _import_pymysql().err.OperationalError(2013, "Lost connection to MySQL server during query "
                                                               "(packet out of sequence)")
        connection._next_seq_id = (header[3] + 1) % 256
        payload += connection._read_bytes(length)
        if length < 0xFFFFFF:
            return payload


def _pymysql_connection_class(send_session_statements):
    """PyMySQL's Connection, failing when TLS was asked for and the server offers none, reading text results.

    Without session statements it also skips the SET NAMES that PyMySQL sends after the handshake:
    ProxySQL Admin rejects it (the character set is already agreed in the handshake).
    """
    if send_session_statements in _PYMYSQL_CLASSES:
        return _PYMYSQL_CLASSES[send_session_statements]
    pymysql = _import_pymysql()
    from pymysql.constants import CLIENT

    class TextResult(pymysql.connections.MySQLResult):
        """PyMySQL's result reader cut down to what orch_v2 uses: column names, and every cell as text.

        orch_v2 converts every cell itself, so the stock reader's per-field metadata objects and per-cell
        converter lookups are pure cost; on wide instance rows they cost more than the query itself.
        """

        def _get_descriptions(self):
            connection = self.connection
            packets = tuple(_read_mysql_packet(connection) for _ in range(self.field_count))
            if _read_mysql_packet(connection)[:1] != b"\xfe":
                raise pymysql.err.InternalError("Protocol error: no EOF after the column definitions")
            # A statement's column definitions are the same bytes every time: parse them once.
            key = (connection.encoding, packets)
            described = _COLUMN_DEFINITIONS.get(key)
            if described is None:
                described = _COLUMN_DEFINITIONS[key] = self._parse_definitions(packets, connection.encoding)
                for stale in list(_COLUMN_DEFINITIONS)[:-256]:  # keep the newest 256 (a dozen statements in use)
                    _COLUMN_DEFINITIONS.pop(stale, None)
            self._encodings, self.converters, self.description = described

        @staticmethod
        def _parse_definitions(packets, text_encoding):
            """(cell encodings, PyMySQL converters, cursor description) of a result's column definitions."""
            names, encodings = [], []
            for data in packets:
                position = 0
                for _ in range(4):  # catalog, schema, table, original table
                    length, position = _length_encoded(data, position)
                    position += length or 0
                length, position = _length_encoded(data, position)
                names.append(data[position:position + length].decode(text_encoding))
                length, position = _length_encoded(data, position + length)  # original name
                position += (length or 0) + 1  # and the length of the fixed fields
                charset, field_type = int.from_bytes(data[position:position + 2], "little"), data[position + 6]
                binary = charset == 63 and field_type in pymysql.connections.TEXT_TYPES
                encodings.append(None if binary else text_encoding)
            return (tuple(encodings), [(encoding, None) for encoding in encodings],
                    tuple((name, None, None, None, None, None, None) for name in names))

        def _read_rowdata_packet(self):
            # All rows in one loop straight from the socket reader: no packet object and no method calls per
            # row (the stock loop costs more than the rows on a 200-row result).
            connection, rows = self.connection, []
            while True:
                data = _read_mysql_packet(connection)
                if data[:1] == b"\xfe" and len(data) < 9:  # EOF: warnings, status flags
                    self.warning_count = int.from_bytes(data[1:3], "little")
                    self.has_next = bool(int.from_bytes(data[3:5], "little") & SERVER_MORE_RESULTS_EXISTS)
                    break
                if data[:1] == b"\xff":
                    pymysql.protocol.MysqlPacket(data, connection.encoding).raise_for_error()
                rows.append(self._parse_row(data, 0))
            self.connection = None
            self.affected_rows = len(rows)
            self.rows = tuple(rows)

        def _read_row_from_packet(self, packet):
            return self._parse_row(packet._data, packet._position)

        def _parse_row(self, data, position):
            row = []
            append = row.append
            try:
                for encoding in self._encodings:
                    length = data[position]
                    if length < 251:
                        start = position + 1
                    elif length == 251:  # NULL
                        append(None)
                        position += 1
                        continue
                    else:
                        length, start = _length_encoded(data, position)
                    position = start + length
                    append(data[start:position].decode(encoding) if encoding else _decode_utf8(data[start:position]))
            except IndexError:
                pass  # a row shorter than its columns ends there, as PyMySQL's reader does
            return tuple(row)

    class Connection(pymysql.connections.Connection):
        def connect(self, sock=None):
            # The server's greeting is part of connecting: a server that accepts and then never answers (hung,
            # stopped with SIGSTOP) fails after the connect timeout, not after the longer read timeout.
            read_timeout = self._read_timeout
            if read_timeout is None or (self.connect_timeout or read_timeout) < read_timeout:
                self._read_timeout = self.connect_timeout
            try:
                super().connect(sock)
            finally:
                self._read_timeout = read_timeout
            if self._sock is not None:
                self._sock.settimeout(read_timeout)
                self._current_timeout = read_timeout

        def _request_authentication(self):
            # Older PyMySQL releases silently continue in plain text here.
            if getattr(self, "_orch_v2_require_tls", False) and not self.server_capabilities & CLIENT.SSL:
                raise pymysql.err.OperationalError(2026, "TLS is required but the server does not offer it")
            super()._request_authentication()

        def _read_query_result(self, unbuffered=False):
            self._result = None
            result = TextResult(self)
            if unbuffered:
                result.init_unbuffered_query()
            else:
                result.read()
            self._result = result
            if result.server_status is not None:
                self.server_status = result.server_status
            return result.affected_rows

        if not send_session_statements:
            def set_character_set(self, charset, collation=None):
                self.charset, self.collation = charset, collation
                self.encoding = pymysql.charset.charset_by_name(charset).encoding

    _PYMYSQL_CLASSES[send_session_statements] = Connection
    return Connection


def _pymysql_text_conversions():
    # Keep PyMySQL's encoders (for parameters) and drop every decoder: cells arrive as the server's text.
    pymysql = _import_pymysql()
    return {key: value for key, value in pymysql.converters.conversions.items() if not isinstance(key, int)}


def _driver_error_text(error):
    """A driver error as a short text: '(code) message' for MySQL errors."""
    arguments = getattr(error, "args", ())
    if len(arguments) >= 2 and isinstance(arguments[0], int):
        return f"({arguments[0]}) {arguments[1]}"
    return str(error) or type(error).__name__


class _Backend:
    """What both backends share: one connection per server thread, statement translation and rows."""

    kind = None
    address = ""

    def __init__(self, config):
        self.config = config
        self.resolver = _HostnameResolver(config)
        self.records = _Records()
        self._local = threading.local()
        self._connections = set()
        self._lock = threading.Lock()
        self._statements = {}

    def describe(self):
        return f"{self.kind} backend {self.address}"

    def query(self, statement, params=(), timestamps=()):
        """Run one SELECT (written for MySQL, with ? placeholders) and return its rows as dicts of texts.

        Cells are texts or None (spec: instance.md 3.4); a later column overwrites an earlier one of the
        same name (instance.md 3.3).  Columns in timestamps are bare `timestamp` columns (SQLite converts
        them).  Raises BackendError.
        """
        translated = self._statements.get(statement)
        if translated is None:
            translated = self._statements[statement] = self._translate(statement)
        columns, rows = self._run(translated, tuple(params))
        return self._text_rows(columns, rows, timestamps)

    @contextlib.contextmanager
    def request_scope(self):
        """One API request on this thread: once the backend timed out or could not be reached, the request's
        remaining queries fail at once with that error instead of waiting again (MySQLBackend._run)."""
        self._local.unreachable = ""
        try:
            yield
        finally:
            self._local.unreachable = None

    def close(self):
        """Close every connection this backend opened (at shutdown, when no request is running)."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                pass

    def _connection(self):
        """This thread's connection, opened on first use; returns (connection, reused)."""
        connection = getattr(self._local, "connection", None)
        lifetime = self.config["MySQLConnectionLifetimeSeconds"]
        if connection is not None and lifetime > 0 and time.monotonic() - self._local.opened > lifetime:
            self._discard(connection)
            connection = None
        if connection is not None:
            return connection, True
        connection = self._connect()
        self._local.connection, self._local.opened = connection, time.monotonic()
        with self._lock:
            self._connections.add(connection)
        return connection, False

    def _discard(self, connection):
        self._local.connection = None
        with self._lock:
            self._connections.discard(connection)
        try:
            connection.close()
        except Exception:  # the connection is already broken; nothing more to release
            pass

    @staticmethod
    def _text_rows(columns, rows, timestamps):
        # PyMySQL's cells are already texts (TextResult); a timestamp is the server's text too.
        return [dict(zip(columns, row)) for row in rows]


class MySQLBackend(_Backend):
    """orchestrator's MySQL/MariaDB backend, read through PyMySQL in read-only autocommit sessions."""

    kind = "MySQL"

    def __init__(self, config):
        super().__init__(config)
        self._pymysql = _import_pymysql()
        host = config["MySQLOrchestratorHost"] or "localhost"
        port = config["MySQLOrchestratorPort"]
        if not 0 < port <= 65535:
            raise ConfigError(f"MySQLOrchestratorPort {port} is not a TCP port")
        self.address = f"{host}:{port}"
        read_timeout = _socket_timeout(config["MySQLOrchestratorReadTimeoutSeconds"])
        self._connect_arguments = dict(
            host=host, port=port, user=config["MySQLOrchestratorUser"],
            password=config["MySQLOrchestratorPassword"], database=config["MySQLOrchestratorDatabase"] or None,
            charset="utf8mb4", collation="utf8mb4_general_ci",  # as orchestrator's driver
            # PyMySQL wants a connect timeout: "none" (0) is a year
            connect_timeout=_socket_timeout(config["MySQLConnectTimeoutSeconds"]) or _YEAR_SECONDS,
            read_timeout=read_timeout, write_timeout=read_timeout,
            # Autocommit: a session left in a transaction would freeze its snapshot while NOW() moves on.
            autocommit=True, init_command="SET SESSION TRANSACTION READ ONLY",
            conv=_pymysql_text_conversions(), program_name="orch_v2", defer_connect=True,
        )
        self._connect_arguments.update(_mysql_tls_arguments(config))

    def _translate(self, statement):
        return _mysql_statement(statement)

    def _connect(self):
        connection = _pymysql_connection_class(True)(**self._connect_arguments)
        connection._orch_v2_require_tls = self.config["MySQLOrchestratorUseMutualTLS"]
        try:
            connection.connect()
        except self._pymysql.err.Error as error:
            raise BackendError(f"{self.describe()}: {_driver_error_text(error)}") from None
        return connection

    def _run(self, statement, params):
        if getattr(self._local, "unreachable", None):
            # This request already waited for the backend once: a hung server costs one timeout, not one per
            # query (lookups whose failure is ignored, such as hostname_resolve's, go on to the next query).
            raise BackendError(self._local.unreachable)
        for attempt in (1, 2):
            try:
                connection, reused = self._connection()
            except BackendError as error:
                self._remember_unreachable(error)
                raise
            try:
                with connection.cursor() as cursor:
                    cursor.execute(statement, params)
                    columns = [column[0] for column in cursor.description or ()]
                    return columns, cursor.fetchall()
            except (self._pymysql.err.Error, OSError) as error:
                self._discard(connection)
                if attempt == 1 and reused and self._was_disconnected(error):
                    continue  # the server closed an idle connection (restart, KILL, wait_timeout): reconnect
                failure = BackendError(f"{self.describe()}: {_driver_error_text(error)}")
                if _timed_out(error):
                    self._remember_unreachable(failure)
                raise failure from None

    def _remember_unreachable(self, error):
        if getattr(self._local, "unreachable", None) is not None:  # inside request_scope
            self._local.unreachable = str(error)

    def _was_disconnected(self, error):
        """True when a reused connection had been closed by the server, not when a read timed out."""
        if _timed_out(error):
            return False
        if isinstance(error, self._pymysql.err.InterfaceError):
            return True
        code = error.args[0] if error.args else None
        # 2006 gone away, 2013 lost connection, 1927 killed (MariaDB), 4031 idle disconnect (MySQL 8)
        return isinstance(error, self._pymysql.err.OperationalError) and code in (2006, 2013, 1927, 4031)


_YEAR_SECONDS = 365 * 24 * 3600


def _socket_timeout(seconds):
    """A configured timeout for a socket: None for 0 (none); longer than a year, which sockets refuse, is a year."""
    return min(seconds, _YEAR_SECONDS) if seconds > 0 else None


def _timed_out(error):
    """True when a driver error was caused by a socket timeout."""
    while error is not None:
        if isinstance(error, TimeoutError):
            return True
        error = error.__context__
    return False


def _mysql_tls_arguments(config):
    """PyMySQL TLS arguments for the backend (spec: config.md 5.2, decision D13)."""
    if not config["MySQLOrchestratorUseMutualTLS"]:
        return {"ssl_disabled": True}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1
    ca_file = config["MySQLOrchestratorSSLCAFile"]
    try:
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        if config["MySQLOrchestratorSSLSkipVerify"]:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            if not ca_file:
                context.load_default_certs()
            cert, key = config["MySQLOrchestratorSSLCertFile"], config["MySQLOrchestratorSSLPrivateKeyFile"]
            if cert and key:
                context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load the backend TLS files: {error}") from None
    return {"ssl": context}


class SQLiteBackend(_Backend):
    """orchestrator's SQLite file, opened read-only; every statement is its own short read (WAL-friendly)."""

    kind = "SQLite"

    def __init__(self, config, path=None):
        super().__init__(config)
        self.path = path or config.sqlite_path
        self.address = self.path
        self._uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"

    def check(self):
        """Fail at start-up when the file is missing, unreadable or not a SQLite database."""
        if not os.path.isfile(self.path):
            raise ConfigError(f"SQLite3DataFile {self.path} does not exist")
        try:
            connection = self._connect()
            try:
                tables = connection.execute("SELECT name FROM sqlite_master WHERE name = 'database_instance'")
                if not tables.fetchall():  # orchestrator may not have created its tables yet
                    self.config.warnings.append(f"SQLite3DataFile {self.path} has no orchestrator tables "
                                                "(yet): requests fail until orchestrator creates them")
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise ConfigError(f"cannot read SQLite3DataFile {self.path}: {error}") from None

    def _translate(self, statement):
        return _sqlite_statement(statement)

    def _connect(self):
        # isolation_level None: never an implicit transaction; timeout: orchestrator's 5 s busy timeout.
        connection = sqlite3.connect(self._uri, uri=True, timeout=5, isolation_level=None,
                                     check_same_thread=False)
        # TEXT decoded here, with U+FFFD for invalid bytes; BLOBs stay bytes, so that they can be told apart
        connection.text_factory = _decode_utf8
        return connection

    def _run(self, statement, params):
        try:
            identity = os.stat(self.path)
            identity = (identity.st_dev, identity.st_ino)
        except OSError as error:
            raise BackendError(f"{self.describe()}: {error.strerror}") from None
        try:
            connection, reused = self._connection()
            if reused and getattr(self._local, "file_identity", identity) != identity:
                # The file was replaced (a restored backup, a new deployment): read the new one, not the old inode.
                self._discard(connection)
                connection, _ = self._connection()
        except sqlite3.Error as error:
            raise BackendError(f"{self.describe()}: {error}") from None
        self._local.file_identity = identity
        try:
            cursor = connection.execute(statement, params)
            try:
                columns = [column[0] for column in cursor.description or ()]
                return columns, cursor.fetchall()
            finally:
                cursor.close()  # ends the read at once, so orchestrator's checkpoints are not held back
        except sqlite3.Error as error:
            self._discard(connection)
            raise BackendError(f"{self.describe()}: {error}") from None

    @staticmethod
    def _text_rows(columns, rows, timestamps):
        # SQLite returns integers, floats, texts and BLOBs (bytes): each cell becomes text as orchestrator's
        # driver makes it.
        conversions = [_sqlite_timestamp_cell if name in timestamps else _cell_text for name in columns]
        return [dict(zip(columns, [convert(cell) for convert, cell in zip(conversions, row)])) for row in rows]


def open_backend(config):
    """The backend named by the configuration (MySQLBackend or SQLiteBackend); raises ConfigError."""
    if config.backend_kind == "sqlite":
        backend = SQLiteBackend(config)
        backend.check()
        return backend
    return MySQLBackend(config)


# ======================================================================================== cell values

_SIGNED_DIGITS = re.compile(r"[+-]?[0-9]+")


def _text(cell):
    return "" if cell is None else cell


def _decimal(text):
    """int(text) for decimal text ([+-]?[0-9]+); one too long for int() (4300 digits) still has its value
    when that is small (leading zeros), else it counts as +-2**65, beyond every range checked."""
    if len(text) < 4300:
        return int(text)
    digits = text.lstrip("+-").lstrip("0") or "0"
    value = int(digits) if len(digits) <= 20 else 2 ** 65
    return -value if text[0] == "-" else value


def _signed_decimal(text):
    """The value of decimal text ([+-]?[0-9]+, ASCII only), else None."""
    if text is None or not text.isascii() or not (text.isdigit() or _SIGNED_DIGITS.fullmatch(text)):
        return None
    return _decimal(text)


def _int(cell):
    """orchestrator's integer conversion: decimal text clamped to int64, anything else 0."""
    value = _signed_decimal(cell)
    return 0 if value is None else max(INT64_MIN, min(INT64_MAX, value))


def _uint(cell):
    """orchestrator's unsigned conversion: plain digits clamped to uint64, anything else 0."""
    if cell is None or not cell.isascii() or not cell.isdigit():
        return 0
    return min(UINT64_MAX, _decimal(cell))


def _bool(cell):
    return cell == "1" or (cell not in (None, "0", "") and _int(cell) != 0)  # "1" and "0" are most cells


def _nullint(cell):
    """A Go sql.NullInt64: valid only for decimal text within int64."""
    value = _signed_decimal(cell)
    if value is not None and INT64_MIN <= value <= INT64_MAX:
        return {"Int64": value, "Valid": True}
    return {"Int64": 0, "Valid": False}


def _int64(value):
    """Wrap an integer to int64 as Go's arithmetic does."""
    return (value + 2 ** 63) % 2 ** 64 - 2 ** 63


def _lag_beyond_delay(seconds, delay):
    """|seconds - delay| in orchestrator's int64 arithmetic (delay is a uint)."""
    return _int64(abs(_int64(seconds - _int64(delay))))


def _key(hostname, port):
    return {"Hostname": hostname, "Port": port}


def _decode_key_list(cell):
    """Decode a JSON list of instance keys (slave_hosts, replication_group_members): sorted, unique.

    Any malformed content gives [] (spec: instance.md section 5).
    """
    if cell == "[]":
        return []
    try:
        value = _decode_json(_text(cell))  # Go's rules, as for the configuration files
    except (ValueError, RecursionError):
        return []
    if type(value) is not list:  # null, or not an array
        return []
    keys = set()
    for element in value:
        hostname, port = "", 0
        if type(element) is _Pairs:
            for name, member in element:
                field = name.casefold()  # Go matches JSON member names case-insensitively
                if member is None or field not in ("hostname", "port"):
                    continue
                if field == "hostname":
                    if type(member) is not str:
                        return []
                    hostname = member
                elif type(member) is not int or not INT64_MIN <= member <= INT64_MAX:
                    return []
                else:
                    port = member
        elif element is not None:
            return []
        keys.add((hostname, port))
    return [_key(hostname, port) for hostname, port in sorted(keys)]


# ======================================================================================== domain reads

class _Record(dict):
    """An object built from backend rows that nobody changes afterwards; it keeps its JSON once encoded."""

    __slots__ = ("json",)


class _Records:
    """Built objects by the exact inputs they were built from, a bounded number of each kind.

    Building an instance or recovery object and encoding it cost more than reading its row.  The key holds
    every input of the build (the row's cells and whatever else goes in), so an unchanged row gives the same
    object and JSON bytes, and a changed one a new object: answers always follow the current rows.
    """

    # How many objects of each kind to keep: every cluster of a large fleet (they are small), a few pages of
    # instances and recoveries (an instance object and its JSON take about 12 KB).
    CAPACITY = {"cluster": 4096, "instance": 256, "recovery": 256}

    def __init__(self):
        self._entries = {kind: {} for kind in self.CAPACITY}

    def get(self, key, build):
        """The object for key = (kind, inputs...), built by build() when missing."""
        entries = self._entries[key[0]]
        record = entries.get(key)  # dict operations are atomic: no lock on this path, the hot one
        if record is None:
            record = _Record(build())
            record.json = None
            if len(entries) >= self.CAPACITY[key[0]]:
                entries.clear()  # start over rather than track the order of use on every hit
            entries[key] = record
        return record


def _record_json(record):
    if record.json is None:
        record.json = json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return record.json


_INSTANCE_QUERY = """
SELECT
    *,
    UNIX_TIMESTAMP() - UNIX_TIMESTAMP(last_checked) AS seconds_since_last_checked,
    IFNULL(last_checked <= last_seen, 0) AS is_last_check_valid,
    UNIX_TIMESTAMP() - UNIX_TIMESTAMP(last_seen) AS seconds_since_last_seen,
    candidate_database_instance.last_suggested IS NOT NULL
        AND candidate_database_instance.promotion_rule IN ('must', 'prefer') AS is_candidate,
    IFNULL(NULLIF(candidate_database_instance.promotion_rule, ''), 'neutral') AS promotion_rule,
    IFNULL(unresolved_hostname, '') AS unresolved_hostname,
    (database_instance_downtime.downtime_active IS NOT NULL
        AND IFNULL(database_instance_downtime.end_timestamp, NOW()) > NOW()) AS is_downtimed,
    IFNULL(database_instance_downtime.reason, '') AS downtime_reason,
    IFNULL(database_instance_downtime.owner, '') AS downtime_owner,
    IFNULL(UNIX_TIMESTAMP() - UNIX_TIMESTAMP(begin_timestamp), 0) AS elapsed_downtime_seconds,
    IFNULL(database_instance_downtime.end_timestamp, '') AS downtime_end_timestamp
FROM
    database_instance
    LEFT JOIN candidate_database_instance USING (hostname, port)
    LEFT JOIN hostname_unresolve USING (hostname)
    LEFT JOIN database_instance_downtime USING (hostname, port)
WHERE
    {condition}
ORDER BY
    hostname, port
"""
_INSTANCE_BY_KEY = _INSTANCE_QUERY.format(condition="hostname = ? AND port = ?")
_INSTANCES_BY_CLUSTER = _INSTANCE_QUERY.format(condition="cluster_name = ?")

# Fuzzy instance lookup: the hint as a literal substring (decision D3), on the same port.
_FUZZY_INSTANCE = """
SELECT hostname, port FROM database_instance
WHERE hostname LIKE CONCAT('%', ?, '%') ESCAPE '!' AND port = ?
LIMIT 2
"""

# Cluster-hint steps 3 and 4 in one statement: the exact key, else up to two fuzzy matches (the fuzzy scan is
# skipped at once when the exact key exists).
_HINT_INSTANCE = """
SELECT hostname, port, cluster_name, 1 AS is_exact FROM database_instance WHERE hostname = ? AND port = ?
UNION ALL
SELECT * FROM (
    SELECT hostname, port, cluster_name, 0 AS is_exact FROM database_instance
    WHERE NOT EXISTS (SELECT 1 FROM database_instance WHERE hostname = ? AND port = ?)
        AND hostname LIKE CONCAT('%', ?, '%') ESCAPE '!' AND port = ?
    LIMIT 2) AS fuzzy
"""
_HINT_INSTANCE_EXACT = "SELECT hostname, port, cluster_name, 1 AS is_exact FROM database_instance " \
                       "WHERE hostname = ? AND port = ?"

# orchestrator's cluster query grouped before the joins: the same rows (an alias or domain row joins a
# whole group or none of it), without joining every instance row first (spec: clusters-and-topology.md 1.2).
_CLUSTER_QUERY = """
SELECT
    cluster_name,
    count_instances,
    IFNULL(alias, cluster_name) AS alias,
    IFNULL(domain_name, '') AS domain_name{extra_columns}
FROM
    (SELECT cluster_name, COUNT(*) AS count_instances{group_columns}
     FROM database_instance {where}
     GROUP BY cluster_name) AS clusters
    LEFT JOIN cluster_alias USING (cluster_name)
    LEFT JOIN cluster_domain_name USING (cluster_name)
ORDER BY cluster_name
"""
_ALL_CLUSTERS = _CLUSTER_QUERY.format(extra_columns="", group_columns="", where="")
_CLUSTER_BY_NAME = _CLUSTER_QUERY.format(extra_columns="", group_columns="", where="WHERE cluster_name = ?")
# Hint steps 1 and 2: the cluster named like the hint, the one whose alias row says it (cluster_alias.alias
# is unique) and clusters whose name a ClusterNameToAlias entry mapping to the hint finds.
_HINT_CLUSTERS = _CLUSTER_QUERY.format(
    extra_columns=",\n    is_hint_name", group_columns=", MAX(cluster_name = ?) AS is_hint_name",
    where="WHERE cluster_name IN (?, (SELECT cluster_name FROM cluster_alias WHERE alias = ?){mapped})")
_CLUSTER_NAMES = "SELECT DISTINCT cluster_name FROM database_instance"

_RECOVERY_COLUMNS = """
SELECT
    recovery_id,
    uid,
    hostname,
    port,
    (IFNULL(end_active_period_unixtime, 0) = 0) AS is_active,
    start_active_period,
    IFNULL(end_active_period_unixtime, 0) AS end_active_period_unixtime,
    IFNULL(end_recovery, '') AS end_recovery,
    is_successful,
    processing_node_hostname,
    processcing_node_token,
    IFNULL(successor_hostname, '') AS successor_hostname,
    IFNULL(successor_port, 0) AS successor_port,
    IFNULL(successor_alias, '') AS successor_alias,
    analysis,
    cluster_name,
    cluster_alias,
    count_affected_slaves,
    slave_hosts,
    participating_instances,
    lost_slaves,
    all_errors,
    acknowledged,
    acknowledged_at,
    acknowledged_by,
    acknowledge_comment,
    last_detection_id
FROM topology_recovery
"""
_RECOVERY_TIMESTAMPS = ("start_active_period", "acknowledged_at")
_ACTIVE_RECOVERIES = _RECOVERY_COLUMNS + """WHERE in_active_period = 1 AND end_recovery IS NULL
ORDER BY recovery_id DESC
"""

_ACTIVE_NODE = """
SELECT hostname, token, first_seen_active, last_seen_active,
    (last_seen_active >= NOW() - INTERVAL 5 SECOND) AS is_fresh
FROM active_node
WHERE anchor = 1
"""
_AVAILABLE_NODES = """
SELECT hostname, token, app_version, first_seen_active, last_seen_active, db_backend
FROM node_health
WHERE last_seen_active > NOW() - INTERVAL 2 SECOND AND extra_info = 'HttpMode'
ORDER BY hostname, token
"""
_NODE_TIMESTAMPS = ("first_seen_active", "last_seen_active")

_IPV4_SHAPED = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_DETACHED_COORDINATES = re.compile(r"//[^/:]+:[0-9]+")
# The four forms of an instance key in a hint or a comma list (spec: clusters-and-topology.md 2.3).
_INSTANCE_KEY_FORMS = (
    (re.compile(r"([^:]+):([0-9]+)"), True),
    (re.compile(r"([^:]+)"), False),
    (re.compile(r"\[([:0-9a-fA-F]+)\]:([0-9]+)"), True),
    (re.compile(r"([:0-9a-fA-F]+)"), False),
)
# Go's unicode.IsSpace, which orchestrator's hostname trimming uses (str.strip() also strips \x1c-\x1f).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
            "\u200a\u2028\u2029\u202f\u205f\u3000"


def _is_storable(text):
    """Decision D1: a hint or host outside ASCII or over 255 characters can match no stored row."""
    return text.isascii() and len(text) <= MAX_HINT_LENGTH


def _memoized_for_short_text(longest, size):
    """Memoize a pure function of a text (and more) for texts up to `longest` characters: hints and comma
    lists come back on every request, while keeping long ones could hold a lot of memory."""
    def decorate(function):
        memoized = functools.lru_cache(maxsize=size)(function)

        @functools.wraps(function)
        def call(text, *rest):
            return memoized(text, *rest) if len(text) <= longest else function(text, *rest)
        return call
    return decorate


@_memoized_for_short_text(300, 4096)
def _parse_instance_key(text, default_port):
    """(host, port) from 'host:port', 'host', '[v6]:port' or a bare IPv6 host; None when unparseable."""
    for pattern, has_port in _INSTANCE_KEY_FORMS:
        match = pattern.fullmatch(text)
        if match:
            port = _decimal(match.group(2)) if has_port else default_port
            return (match.group(1), port) if port <= INT64_MAX else None
    return None


def _like_literal(text):
    """Escape a LIKE pattern so that every character matches only itself (decision D3)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


class _HostnameResolver:
    """orchestrator's hostname normalisation with its in-process cache (spec: instance.md section 2)."""

    MAX_CACHED = 10000  # bounds memory when clients send many distinct hosts

    def __init__(self, config):
        self.method = config["HostnameResolveMethod"].lower()
        self.reject_pattern = config.reject_resolve_pattern
        self.expiry_seconds = max(1, config["ExpiryHostnameResolvesMinutes"]) * 60
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, backend, host):
        """Return (normalised host, None) or (None, error text)."""
        return self.resolve_many(backend, [host])[host]

    def resolve_many(self, backend, hosts):
        """Normalise many hosts with at most one hostname_resolve query: {host: (result, error)}."""
        results, pending, now = {}, [], time.monotonic()
        for raw in hosts:
            host = raw.strip(_GO_SPACE)
            if not host:
                results[raw] = (None, "Will not resolve empty hostname")
            elif "," in host:
                results[raw] = (None, f"Will not resolve multi-hostname: {host}")
            elif host.startswith("//") or self.method == "none":
                results[raw] = (host, None)
            else:
                pending.append((raw, host))
        with self._lock:  # step 6: the in-process cache
            for raw, host in pending:
                entry = self._cache.get(host)
                if entry is not None and entry[1] >= now:
                    results[raw] = entry[0]
        pending = [(raw, host) for raw, host in pending if raw not in results]
        if pending:
            mapped = self._read_resolved(backend, sorted({host for _, host in pending}))
            for raw, host in pending:
                results[raw] = (mapped[host], None) if mapped.get(host) else self._resolve_by_method(host)
        return results

    def _remember(self, host, result, seconds):
        with self._lock:
            self._cache[host] = (result, time.monotonic() + seconds)
            self._cache.move_to_end(host)
            while len(self._cache) > self.MAX_CACHED:
                self._cache.popitem(last=False)

    def _read_resolved(self, backend, hosts):
        """hostname_resolve mappings whose hostname is byte-equal to a host; a failed query maps nothing."""
        placeholders = ", ".join("?" * len(hosts))
        try:
            rows = backend.query("SELECT hostname, resolved_hostname FROM hostname_resolve "
                                 f"WHERE hostname IN ({placeholders})", hosts)
        except BackendError:
            return {}
        return {row["hostname"]: row["resolved_hostname"] for row in rows if row["hostname"] in hosts}

    def _resolve_by_method(self, host):
        resolved, error = host, None
        try:
            if self.method == "cname":
                resolved = socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME)[0][3].rstrip(".") or host
            elif self.method == "ip":
                addresses = [info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]
                v4 = [address for address in addresses if ":" not in address]
                resolved = (v4 or addresses)[-1]
        except (OSError, UnicodeError, IndexError) as failure:
            resolved = host if self.method == "cname" else ""
            error = str(failure) or "cannot resolve " + host
        if self.reject_pattern is not None and self.reject_pattern.search(resolved):
            return host, None
        if error:
            self._remember(host, (host, None), 60)  # orchestrator caches a failed resolve for one minute
            return None, error
        self._remember(host, (resolved, None), self.expiry_seconds)
        return resolved, None


# The 87 fields of orchestrator's instance object, in its order, with their conversion and source column(s)
# (spec: instance.md section 4; conversions of 3.4).  "computed" fields are filled in by _instance_from_row.
_INSTANCE_FIELDS = (
    ("Key", "key", ("hostname", "port")),
    ("InstanceAlias", "text", "instance_alias"),
    ("Uptime", "uint", "uptime"),
    ("ServerID", "uint", "server_id"),
    ("ServerUUID", "text", "server_uuid"),
    ("Version", "text", "version"),
    ("VersionComment", "text", "version_comment"),
    ("FlavorName", "computed", None),
    ("ReadOnly", "bool", "read_only"),
    ("Binlog_format", "text", "binlog_format"),
    ("BinlogRowImage", "text", "binlog_row_image"),
    ("LogBinEnabled", "bool", "log_bin"),
    ("LogSlaveUpdatesEnabled", "computed", None),
    ("LogReplicationUpdatesEnabled", "bool", "log_slave_updates"),
    ("SelfBinlogCoordinates", "coordinates", ("binary_log_file", "binary_log_pos", 0)),
    ("MasterKey", "key", ("master_host", "master_port")),
    ("MasterUUID", "text", "master_uuid"),
    ("AncestryUUID", "text", "ancestry_uuid"),
    ("IsDetachedMaster", "computed", None),
    ("Slave_SQL_Running", "computed", None),
    ("ReplicationSQLThreadRuning", "bool", "slave_sql_running"),
    ("Slave_IO_Running", "computed", None),
    ("ReplicationIOThreadRuning", "bool", "slave_io_running"),
    ("ReplicationSQLThreadState", "int", "replication_sql_thread_state"),
    ("ReplicationIOThreadState", "int", "replication_io_thread_state"),
    ("HasReplicationFilters", "bool", "has_replication_filters"),
    ("GTIDMode", "text", "gtid_mode"),
    ("SupportsOracleGTID", "bool", "supports_oracle_gtid"),
    ("UsingOracleGTID", "bool", "oracle_gtid"),
    ("UsingMariaDBGTID", "bool", "mariadb_gtid"),
    ("UsingPseudoGTID", "bool", "pseudo_gtid"),
    ("ReadBinlogCoordinates", "coordinates", ("master_log_file", "read_master_log_pos", 0)),
    ("ExecBinlogCoordinates", "coordinates", ("relay_master_log_file", "exec_master_log_pos", 0)),
    ("IsDetached", "computed", None),
    ("RelaylogCoordinates", "coordinates", ("relay_log_file", "relay_log_pos", 1)),
    ("LastSQLError", "text", "last_sql_error"),
    ("LastIOError", "text", "last_io_error"),
    ("SecondsBehindMaster", "nullint", "seconds_behind_master"),
    ("SQLDelay", "uint", "sql_delay"),
    ("ExecutedGtidSet", "text", "executed_gtid_set"),
    ("GtidPurged", "text", "gtid_purged"),
    ("GtidErrant", "text", "gtid_errant"),
    ("SlaveLagSeconds", "computed", None),
    ("ReplicationLagSeconds", "nullint", "slave_lag_seconds"),
    ("SlaveHosts", "computed", None),
    ("Replicas", "keys", "slave_hosts"),
    ("ClusterName", "text", "cluster_name"),
    ("SuggestedClusterAlias", "text", "suggested_cluster_alias"),
    ("DataCenter", "text", "data_center"),
    ("Region", "text", "region"),
    ("PhysicalEnvironment", "text", "physical_environment"),
    ("ReplicationDepth", "uint", "replication_depth"),
    ("IsCoMaster", "bool", "is_co_master"),
    ("HasReplicationCredentials", "bool", "has_replication_credentials"),
    ("ReplicationCredentialsAvailable", "bool", "replication_credentials_available"),
    ("SemiSyncAvailable", "bool", "semi_sync_available"),
    ("SemiSyncPriority", "uint", "semi_sync_enforced"),  # the legacy column name
    ("SemiSyncMasterEnabled", "bool", "semi_sync_master_enabled"),
    ("SemiSyncReplicaEnabled", "bool", "semi_sync_replica_enabled"),
    ("SemiSyncMasterTimeout", "uint", "semi_sync_master_timeout"),
    ("SemiSyncMasterWaitForReplicaCount", "uint", "semi_sync_master_wait_for_slave_count"),
    ("SemiSyncMasterStatus", "bool", "semi_sync_master_status"),
    ("SemiSyncMasterClients", "uint", "semi_sync_master_clients"),
    ("SemiSyncReplicaStatus", "bool", "semi_sync_replica_status"),
    ("LastSeenTimestamp", "text", "last_seen"),
    ("IsLastCheckValid", "bool", "is_last_check_valid"),
    ("IsUpToDate", "computed", None),
    ("IsRecentlyChecked", "computed", None),
    ("SecondsSinceLastSeen", "nullint", "seconds_since_last_seen"),
    ("CountMySQLSnapshots", "computed", None),
    ("IsCandidate", "bool", "is_candidate"),
    ("PromotionRule", "text", "promotion_rule"),
    ("IsDowntimed", "bool", "is_downtimed"),
    ("DowntimeReason", "text", "downtime_reason"),
    ("DowntimeOwner", "text", "downtime_owner"),
    ("DowntimeEndTimestamp", "text", "downtime_end_timestamp"),
    ("ElapsedDowntime", "computed", None),  # elapsed_downtime_seconds in nanoseconds
    ("UnresolvedHostname", "text", "unresolved_hostname"),
    ("AllowTLS", "bool", "allow_tls"),
    ("Problems", "computed", None),
    ("LastDiscoveryLatency", "int", "last_discovery_latency"),
    ("ReplicationGroupName", "text", "replication_group_name"),
    ("ReplicationGroupIsSinglePrimary", "bool", "replication_group_is_single_primary_mode"),
    ("ReplicationGroupMemberState", "text", "replication_group_member_state"),
    ("ReplicationGroupMemberRole", "text", "replication_group_member_role"),
    ("ReplicationGroupMembers", "keys", "replication_group_members"),
    ("ReplicationGroupPrimaryInstanceKey", "key", ("replication_group_primary_host", "replication_group_primary_port")),
)


_INSTANCE_KEYS = tuple(name for name, _, _ in _INSTANCE_FIELDS)


def _instance_fields(conversion):
    return tuple((name, source) for name, kind, source in _INSTANCE_FIELDS if kind == conversion)


# The table split by conversion: building an object is then a few tight loops, not 87 function calls.
_TEXT_FIELDS, _INT_FIELDS, _UINT_FIELDS, _BOOL_FIELDS, _NULLINT_FIELDS, _KEY_FIELDS, _COORDINATE_FIELDS, \
    _KEY_LIST_FIELDS = map(_instance_fields, ("text", "int", "uint", "bool", "nullint", "key", "coordinates", "keys"))


def _is_replica(instance):
    """orchestrator's IsReplica: a master key, and coordinates or GTID to replicate with."""
    master = instance["MasterKey"]
    return (master["Hostname"] not in ("", "_") and master["Port"] != 0
            and (instance["ReadBinlogCoordinates"]["LogFile"] != ""
                 or instance["UsingOracleGTID"] or instance["UsingMariaDBGTID"]))


def _is_replica_running(instance):
    return (_is_replica(instance) and instance["ReplicationSQLThreadState"] == 1
            and instance["ReplicationIOThreadState"] == 1)


def _flavor(version, version_comment):
    if "MariaDB" in version:
        return "MariaDB"
    if "Percona" in version_comment:
        return "Percona"
    if "maxscale" in version:
        return "MaxScale"
    return "MySQL"


def _problems(instance, reasonable_lag):
    """orchestrator's Problems list, in its order (spec: instance.md 4.1)."""
    problems = []
    lag = instance["ReplicationLagSeconds"]
    if not instance["IsLastCheckValid"]:
        problems.append("last_check_invalid")
    elif not instance["IsRecentlyChecked"]:
        problems.append("not_recently_checked")
    elif (instance["ReplicationSQLThreadState"] != -1 and instance["ReplicationIOThreadState"] != -1
          and not _is_replica_running(instance)):
        problems.append("not_replicating")
    elif lag["Valid"] and _lag_beyond_delay(lag["Int64"], instance["SQLDelay"]) > reasonable_lag:
        problems.append("replication_lag")
    if instance["GtidErrant"]:
        problems.append("errant_gtid")
    if instance["ReplicationGroupName"] and instance["ReplicationGroupMemberState"] != "ONLINE":
        problems.append("group_replication_member_not_online")
    return problems


def _instance_from_row(row, config, snapshots=0):
    """The 87-field instance object of one instance-query row, in orchestrator's order."""
    instance = dict.fromkeys(_INSTANCE_KEYS)
    cell = row.get
    for name, column in _TEXT_FIELDS:
        instance[name] = cell(column) or ""
    for name, column in _BOOL_FIELDS:
        instance[name] = _bool(cell(column))
    for name, column in _INT_FIELDS:
        instance[name] = _int(cell(column))
    for name, column in _UINT_FIELDS:
        instance[name] = _uint(cell(column))
    for name, column in _NULLINT_FIELDS:
        instance[name] = _nullint(cell(column))
    for name, (host, port) in _KEY_FIELDS:
        instance[name] = {"Hostname": cell(host) or "", "Port": _int(cell(port))}
    for name, (log_file, position, kind) in _COORDINATE_FIELDS:
        instance[name] = {"LogFile": cell(log_file) or "", "LogPos": _int(cell(position)), "Type": kind}
    for name, column in _KEY_LIST_FIELDS:
        instance[name] = _decode_key_list(cell(column))
    poll_seconds = config["InstancePollSeconds"]
    seconds_since_checked = _uint(cell("seconds_since_last_checked"))
    instance["FlavorName"] = _flavor(instance["Version"], instance["VersionComment"])
    instance["LogSlaveUpdatesEnabled"] = instance["LogReplicationUpdatesEnabled"]
    instance["IsDetachedMaster"] = instance["MasterKey"]["Hostname"].startswith("//")
    instance["Slave_SQL_Running"] = instance["ReplicationSQLThreadRuning"]
    instance["Slave_IO_Running"] = instance["ReplicationIOThreadRuning"]
    instance["IsDetached"] = _DETACHED_COORDINATES.search(instance["ExecBinlogCoordinates"]["LogFile"]) is not None
    instance["SlaveLagSeconds"] = instance["ReplicationLagSeconds"]
    instance["SlaveHosts"] = instance["Replicas"]
    instance["IsUpToDate"] = seconds_since_checked <= poll_seconds
    instance["IsRecentlyChecked"] = seconds_since_checked <= (poll_seconds * 5) & UINT64_MAX
    instance["CountMySQLSnapshots"] = snapshots
    instance["ElapsedDowntime"] = _int64(_int(cell("elapsed_downtime_seconds")) * 10 ** 9)  # nanoseconds
    instance["Problems"] = _problems(instance, config["ReasonableReplicationLagSeconds"])
    return instance


def _read_snapshot_counts(backend, hostnames):
    """host_agent snapshot counts by exact hostname, read as orchestrator does (spec: instance.md 8)."""
    for hostname in hostnames:
        if "'" in hostname:
            # orchestrator writes the hostnames into the statement itself, and a quote breaks it.
            raise BackendError(f"{backend.describe()}: cannot read host_agent for hostname {hostname!r}: "
                               "a quote makes orchestrator's statement invalid")
    # orchestrator replaces each comma by '' inside its quoted literal, which reads back as a quote.
    values = sorted({hostname.replace(",", "'") for hostname in hostnames})
    rows = backend.query("SELECT hostname, count_mysql_snapshots FROM host_agent "
                         f"WHERE hostname IN ({', '.join('?' * len(values))}) ORDER BY hostname", values)
    return {row["hostname"]: _int(row["count_mysql_snapshots"]) for row in rows}


def _read_instances(backend, statement, params):
    """Instance objects for an instance-query condition, in the database's hostname, port order."""
    rows = backend.query(statement, params, timestamps=("last_seen",))
    counts = {}
    if backend.config["ServeAgentsHttp"] and rows:
        counts = _read_snapshot_counts(backend, [_text(row["hostname"]) for row in rows])
    instances = []
    for row in rows:
        snapshots = counts.get(_text(row["hostname"]), 0)
        instances.append(backend.records.get(("instance", tuple(row.values()), snapshots),
                                             lambda: _instance_from_row(row, backend.config, snapshots)))
    return instances


def read_instance(backend, host, port):
    """The instance object for a normalised key, after the fuzzy step; None when absent (instance.md 1.4-1.5)."""
    instances = _read_instances(backend, _INSTANCE_BY_KEY, (host, port))
    exact = instances[0] if instances else None
    if exact is not None and not host.endswith(" "):
        # An existing exact key matches its own fuzzy pattern, so the fuzzy step could only return it again.
        # Not so for a trailing space (kept by a //host), which MySQL's = ignores and LIKE does not.
        return exact
    if not host or _IPV4_SHAPED.fullmatch(host) or "\0" in host:
        # SQLite's LIKE would stop at a NUL (MySQL's does not); no stored hostname holds one
        return exact
    try:
        matches = backend.query(_FUZZY_INSTANCE, (_like_literal(host), port))
    except BackendError:
        return exact  # orchestrator ignores a failed fuzzy lookup and keeps the key
    if len(matches) != 1:
        return exact
    instances = _read_instances(backend, _INSTANCE_BY_KEY, (matches[0]["hostname"], _int(matches[0]["port"])))
    return instances[0] if instances else None


def _cluster_info(row, config):
    """One ClusterInfo object from a cluster-query row (spec: clusters-and-topology.md section 1)."""
    name, alias = _text(row["cluster_name"]), _text(row["alias"])
    if not alias or alias == name:
        for pattern, mapped_alias in config.alias_patterns:  # decision D4: file order, first match decides
            if pattern is not None and pattern.search(name):
                alias = mapped_alias or alias
                break
    return _cluster_object(name, alias, _text(row["domain_name"]), _uint(row["count_instances"]), config)


def _cluster_object(name, alias, domain, count, config):
    """orchestrator's ClusterInfo, with the two automated-recovery filters applied (clusters-and-topology.md 1)."""
    return {
        "ClusterName": name,
        "ClusterAlias": alias,
        "ClusterDomain": domain,
        "CountInstances": count,
        "HeuristicLag": 0,
        "HasAutomatedMasterRecovery": any(f.matches(name, alias) for f in config.master_filters),
        "HasAutomatedIntermediateMasterRecovery": any(f.matches(name, alias) for f in config.intermediate_filters),
    }


def read_clusters(backend):
    """Every cluster as ClusterInfo objects, in cluster_name order (spec: clusters-and-topology.md 3.1)."""
    return [backend.records.get(("cluster", tuple(row.values())), lambda row=row: _cluster_info(row, backend.config))
            for row in backend.query(_ALL_CLUSTERS)]


def _not_found_hint(hint):
    return ApiError(404, "NOT_FOUND", f"Cluster not found: Unable to determine cluster name. clusterHint={hint}")


def _read_hint_clusters(backend, hint):
    """Cluster-query rows that can answer hint steps 1 and 2, found by index, not by aggregating the fleet."""
    mapped = []
    patterns = [pattern for pattern, alias in backend.config.alias_patterns if pattern is not None and alias == hint]
    if patterns:  # only a hint that a ClusterNameToAlias entry maps to needs the cluster names
        names = [row["cluster_name"] for row in backend.query(_CLUSTER_NAMES)]
        mapped = [name for name in names if name is not None and any(p.search(name) for p in patterns)]
    statement = _HINT_CLUSTERS.replace("{mapped}", ", ?" * len(mapped))
    return backend.query(statement, [hint, hint, hint] + mapped)


def _cluster_of_instance(backend, hint):
    """Hint steps 3 and 4: the cluster of the exact, else the unique fuzzy, instance; None when neither."""
    parsed = _parse_instance_key(hint, backend.config["DefaultInstancePort"])
    if parsed is None:
        return None
    host, port = parsed
    if _IPV4_SHAPED.fullmatch(host) or "\0" in host:  # no fuzzy step: see read_instance
        rows = backend.query(_HINT_INSTANCE_EXACT, (host, port))
    else:
        rows = backend.query(_HINT_INSTANCE, (host, port, host, port, _like_literal(host), port))
    if not rows or (not _bool(rows[0]["is_exact"]) and len(rows) != 1):
        return None
    row = rows[0]
    if backend.config["ServeAgentsHttp"]:
        _read_snapshot_counts(backend, [row["hostname"]])  # part of orchestrator's instance read; may fail
    if not row["cluster_name"]:
        raise ApiError(404, "NOT_FOUND", "Cluster not found: Unable to determine cluster name for "
                                         f"{row['hostname']}:{row['port']}, empty cluster name. clusterHint={hint}")
    return row["cluster_name"]


def resolve_cluster_hint(backend, hint):
    """Resolve a cluster hint to (cluster name, its cluster-query row or None).

    Steps: exact name, exact alias, exact instance key, fuzzy instance key (spec:
    clusters-and-topology.md section 2).  Raises ApiError 404 when unresolvable, BackendError on failure.
    """
    if not _is_storable(hint):
        raise _not_found_hint(hint)
    rows = _read_hint_clusters(backend, hint)
    for row in rows:
        if _bool(row["is_hint_name"]):
            return row["cluster_name"], row
    for row in rows:
        if _cluster_info(row, backend.config)["ClusterAlias"] == hint:
            return row["cluster_name"], row
    name = _cluster_of_instance(backend, hint)
    if name is None:
        raise _not_found_hint(hint)
    return name, None


def read_cluster_info(backend, hint):
    """ClusterInfo of the cluster a hint resolves to (spec: clusters-and-topology.md 3.2)."""
    name, row = resolve_cluster_hint(backend, hint)
    if row is None:
        rows = backend.query(_CLUSTER_BY_NAME, (name,))
        if len(rows) != 1:
            raise BackendError(f"No cluster info found for {name}")
        row = rows[0]
    return _cluster_info(row, backend.config)


def read_cluster_instances(backend, hint):
    """(cluster name, its instance objects in hostname, port order) (spec: clusters-and-topology.md 3.3)."""
    name, _ = resolve_cluster_hint(backend, hint)
    if "'" in name:
        raise BackendError(f"Invalid cluster name: {name}")  # as orchestrator, which refuses quotes
    return name, _read_instances(backend, _INSTANCES_BY_CLUSTER, (name,))


_RECOVERY_KEY_LISTS = ("slave_hosts", "lost_slaves", "participating_instances")


@_memoized_for_short_text(2000, 1024)
def _parsed_key_list(cell, default_port):
    """(the (host, port) keys of a comma list up to its first unparseable token, the hosts among them to
    normalise) (spec: recoveries.md section 4)."""
    parsed = []
    for token in cell.split(",") if cell else ():
        key = _parse_instance_key(token, default_port)
        if key is None:
            break  # the first bad token ends the list, as orchestrator stops at its first error
        parsed.append(key)
    return tuple(parsed), tuple(host for host, port in parsed if _is_resolvable(host, port))


def _is_resolvable(host, port):
    """orchestrator normalises the host of a valid key only (not '_', not detached, a port)."""
    return host != "_" and not host.startswith("//") and port > 0


def _key_list(parsed, resolved):
    """Sorted, unique Keys of a parsed comma list with its hosts normalised; a normalisation error ends it."""
    keys = set()
    for host, port in parsed:
        if _is_resolvable(host, port):
            host, error = resolved[host]
            if error:
                break
        keys.add((host, port))
    return [_key(host, port) for host, port in sorted(keys)]


def _analysis_entry(row, replicas, config):
    """The AnalysisEntry of a recovery row: eight values from the row, the rest fixed (recoveries.md 3.2)."""
    name, alias = _text(row["cluster_name"]), _text(row["cluster_alias"])
    entry = dict(_ANALYSIS_ENTRY_TEMPLATE)
    entry["AnalyzedInstanceKey"] = _key(_text(row["hostname"]), _int(row["port"]))
    entry["ClusterDetails"] = _cluster_object(name, alias, "", 0, config)  # the stored alias (recoveries.md 5)
    entry["CountReplicas"] = _uint(row["count_affected_slaves"])
    entry["Replicas"] = replicas
    entry["SlaveHosts"] = replicas
    entry["Analysis"] = _text(row["analysis"])
    return entry


_ANALYSIS_ENTRY_TEMPLATE = dict(
    itertools.chain(
        [("AnalyzedInstanceKey", None), ("AnalyzedInstanceMasterKey", _key("", 0)), ("ClusterDetails", None),
         ("AnalyzedInstanceDataCenter", ""), ("AnalyzedInstanceRegion", ""),
         ("AnalyzedInstancePhysicalEnvironment", ""),
         ("AnalyzedInstanceBinlogCoordinates", {"LogFile": "", "LogPos": 0, "Type": 0})],
        ((name, False) for name in ("IsMaster", "IsReplicationGroupMember", "IsCoMaster", "LastCheckValid",
                                     "LastCheckPartialSuccess")),
        [("CountReplicas", 0)],
        ((name, 0) for name in ("CountValidReplicas", "CountValidReplicatingReplicas",
                                 "CountReplicasFailingToConnectToMaster", "CountDowntimedReplicas",
                                 "ReplicationDepth")),
        [("Replicas", None), ("SlaveHosts", None), ("IsFailingToConnectToMaster", False), ("Analysis", ""),
         ("Description", ""), ("StructureAnalysis", None), ("IsDowntimed", False), ("IsReplicasDowntimed", False),
         ("DowntimeEndTimestamp", ""), ("DowntimeRemainingSeconds", 0)],
        ((name, False) for name in ("IsBinlogServer", "PseudoGTIDImmediateTopology", "OracleGTIDImmediateTopology",
                                     "MariaDBGTIDImmediateTopology", "BinlogServerImmediateTopology",
                                     "SemiSyncMasterEnabled", "SemiSyncMasterStatus")),
        ((name, 0) for name in ("SemiSyncMasterWaitForReplicaCount", "SemiSyncMasterClients",
                                 "CountSemiSyncReplicasEnabled", "CountLoggingReplicas",
                                 "CountStatementBasedLoggingReplicas", "CountMixedBasedLoggingReplicas",
                                 "CountRowBasedLoggingReplicas", "CountDistinctMajorVersionsLoggingReplicas",
                                 "CountDelayedReplicas", "CountLaggingReplicas")),
        [("IsActionableRecovery", False), ("ProcessingNodeHostname", ""), ("ProcessingNodeToken", ""),
         ("CountAdditionalAgreeingNodes", 0), ("StartActivePeriod", ""), ("SkippableDueToDowntime", False)],
        ((name, "") for name in ("GTIDMode", "MinReplicaGTIDMode", "MaxReplicaGTIDMode", "MaxReplicaGTIDErrant",
                                  "CommandHint")),
        [("IsReadOnly", False)],
    ))


def _recovery_from_row(row, lists, config):
    """One recovery object, in orchestrator's field order (spec: recoveries.md 3.1); lists: its key lists."""
    return {
        "Id": _int(row["recovery_id"]),
        "UID": _text(row["uid"]),
        "AnalysisEntry": _analysis_entry(row, lists["slave_hosts"], config),
        "SuccessorKey": _key(_text(row["successor_hostname"]), _int(row["successor_port"])),
        "SuccessorAlias": _text(row["successor_alias"]),
        "SuccessorBinlogCoordinates": None,
        "IsActive": _bool(row["is_active"]),
        "IsSuccessful": _bool(row["is_successful"]),
        "LostReplicas": lists["lost_slaves"],
        "ParticipatingInstanceKeys": lists["participating_instances"],
        "AllErrors": _text(row["all_errors"]).split("\n"),
        "RecoveryStartTimestamp": _text(row["start_active_period"]),
        "RecoveryEndTimestamp": _text(row["end_recovery"]),
        "ProcessingNodeHostname": _text(row["processing_node_hostname"]),
        "ProcessingNodeToken": _text(row["processcing_node_token"]),
        "Acknowledged": _bool(row["acknowledged"]),
        "AcknowledgedAt": _text(row["acknowledged_at"]),
        "AcknowledgedBy": _text(row["acknowledged_by"]),
        "AcknowledgedComment": _text(row["acknowledge_comment"]),
        "LastDetectionId": _int(row["last_detection_id"]),
        "RelatedRecoveryId": 0,
        "Type": "",
        "RecoveryType": "NotMasterRecovery",
    }


def _recoveries_from_rows(backend, rows):
    """Recovery objects of query rows; the hosts of every comma list of the page are normalised at once."""
    default_port = backend.config["DefaultInstancePort"]
    parsed = [[_parsed_key_list(_text(row[column]), default_port) for column in _RECOVERY_KEY_LISTS] for row in rows]
    hosts = {host for lists in parsed for _, to_normalise in lists for host in to_normalise}
    resolved = backend.resolver.resolve_many(backend, sorted(hosts)) if hosts else {}
    recoveries = []
    for row, lists in zip(rows, parsed):
        # The row's cells and the normalisation of its hosts are everything the object is made of.
        normalised = tuple(resolved[host] for _, to_normalise in lists for host in to_normalise)
        recoveries.append(backend.records.get(
            ("recovery", tuple(row.values()), normalised),
            lambda row=row, lists=lists: _recovery_from_row(
                row, dict(zip(_RECOVERY_KEY_LISTS, (_key_list(keys, resolved) for keys, _ in lists))),
                backend.config)))
    return recoveries


def read_recoveries(backend, cluster="", alias="", page=0, unacknowledged=False):
    """A page of 20 recovery objects, newest first (spec: recoveries.md section 1)."""
    offset = page * RECOVERY_PAGE_SIZE
    filter_value = cluster or alias
    if offset > INT64_MAX or (filter_value and not _is_storable(filter_value)):
        return []  # decision D6 (no such page) and D1 (a filter no stored row can match): no query
    conditions, params = [], []
    if unacknowledged:
        conditions.append("acknowledged = 0")
    if cluster:
        conditions.append("cluster_name = ?")
        params.append(cluster)
    elif alias:
        conditions.append("cluster_alias = ?")
        params.append(alias)
    where = "WHERE " + " AND ".join(conditions) + "\n" if conditions else ""
    statement = f"{_RECOVERY_COLUMNS}{where}ORDER BY recovery_id DESC\nLIMIT {RECOVERY_PAGE_SIZE} OFFSET ?"
    rows = backend.query(statement, params + [offset], timestamps=_RECOVERY_TIMESTAMPS)
    return _recoveries_from_rows(backend, rows)


def read_active_recoveries(backend):
    """Recoveries of every cluster still in their active period and not ended, newest first (decision D9)."""
    rows = backend.query(_ACTIVE_RECOVERIES, timestamps=_RECOVERY_TIMESTAMPS)
    return _recoveries_from_rows(backend, rows)


def _node(row, app_version="", db_backend=""):
    """orchestrator's node object (spec: status.md 4.2)."""
    return {
        "Hostname": _text(row.get("hostname")),
        "Token": _text(row.get("token")),
        "AppVersion": app_version,
        "FirstSeenActive": _text(row.get("first_seen_active")),
        "LastSeenActive": _text(row.get("last_seen_active")),
        "ExtraInfo": "",
        "Command": "",
        "DBBackend": db_backend,
        "LastReported": ZERO_TIME,
    }


def read_status(backend, hostname, token):
    """orchestrator's health object as a read-only process sees it (spec: status.md, decision D8).

    Raises ApiError 500 UNHEALTHY with the reason when the backend fails or no orchestrator node is alive.
    """
    def unhealthy(reason):
        return ApiError(500, "UNHEALTHY", f"Application node is unhealthy: {reason}")

    raft = backend.config["RaftEnabled"]
    try:
        active_node = _node({})
        if not raft:
            rows = backend.query(_ACTIVE_NODE, timestamps=_NODE_TIMESTAMPS)
            if not rows or not rows[0]["hostname"] or not _bool(rows[0]["is_fresh"]):
                raise unhealthy("no active orchestrator node within the last 5 seconds")
            active_node = _node(rows[0])
        rows = backend.query(_AVAILABLE_NODES, timestamps=_NODE_TIMESTAMPS)
    except BackendError as error:
        raise unhealthy(f"backend query failed: {error}") from None
    if raft and not rows:
        raise unhealthy("no health report from the orchestrator node within the last 2 seconds")
    return {
        "Healthy": True,
        "Hostname": hostname,
        "Token": token,
        "IsActiveNode": False,
        "ActiveNode": active_node,
        "Error": None,
        "AvailableNodes": [_node(row, _text(row["app_version"]), _text(row["db_backend"])) for row in rows],
        "RaftLeader": "",
        "IsRaftLeader": False,
        "RaftLeaderURI": "",
        "RaftAdvertise": backend.config["RaftAdvertise"] if raft else "",
        "RaftHealthyMembers": [],
    }


_PROXYSQL_QUERY = ("SELECT hostgroup_id, hostname, port, status, weight, max_connections, comment "
                   "FROM runtime_mysql_servers ORDER BY hostgroup_id, hostname, port")
_PROXYSQL_FIELDS = (("hostgroup_id", int), ("hostname", str), ("port", int), ("status", str),
                    ("weight", int), ("max_connections", int), ("comment", str))


def _proxysql_entry(number, row):
    """One ProxySQL server object; a cell that does not convert fails the whole read, naming the row."""
    entry = {}
    for index, (name, kind) in enumerate(_PROXYSQL_FIELDS):
        cell = _cell_text(row[index]) if index < len(row) else None
        if kind is int:
            value = _signed_decimal(cell)
            if value is None or not INT64_MIN <= value <= INT64_MAX:
                shown = ", ".join(f"{field}={_cell_text(value)!r}" for (field, _), value in zip(_PROXYSQL_FIELDS, row))
                raise BackendError(f"row {number} ({shown}): {name} {cell!r} is not an integer")
            entry[name] = value
        else:
            if cell is None:
                raise BackendError(f"row {number}: {name} is NULL")
            entry[name] = cell
    return entry


def read_proxysql_servers(config):
    """Rows of ProxySQL's runtime_mysql_servers, typed and ordered (spec: proxysql.md).

    Opens one connection, sends the one SELECT and nothing else, closes.  Raises ApiError 503 when ProxySQL
    is not configured and BackendError on any failure.
    """
    address, port = config["ProxySQLAdminAddress"], config["ProxySQLAdminPort"]
    if not address or config["ProxySQLWriterHostgroup"] <= 0:
        raise ApiError(503, "PROXYSQL_NOT_CONFIGURED", "ProxySQL is not configured")
    where = f"ProxySQL Admin {address}:{port}"
    try:
        pymysql = _import_pymysql()
    except ConfigError as error:
        raise BackendError(f"{where}: {error}") from None
    if not 0 < port <= 65535:
        raise BackendError(f"{where}: ProxySQLAdminPort is not a TCP port")
    tls = {"ssl_disabled": True}
    if config["ProxySQLAdminUseTLS"]:
        tls = {"ssl": ssl.create_default_context()}  # verified against the system store, host name checked
    connection = _pymysql_connection_class(False)(
        host=address, port=port, user=config["ProxySQLAdminUser"], password=config["ProxySQLAdminPassword"],
        connect_timeout=PROXYSQL_TIMEOUT_SECONDS, read_timeout=PROXYSQL_TIMEOUT_SECONDS,
        write_timeout=PROXYSQL_TIMEOUT_SECONDS, autocommit=None, conv=_pymysql_text_conversions(),
        charset="utf8mb4", defer_connect=True, **tls)
    connection._orch_v2_require_tls = config["ProxySQLAdminUseTLS"]
    try:
        connection.connect()
        with connection.cursor() as cursor:
            cursor.execute(_PROXYSQL_QUERY)  # no parameters: sent as typed, text protocol only
            rows = cursor.fetchall()
    except (pymysql.err.Error, OSError) as error:
        raise BackendError(f"{where}: {_driver_error_text(error)}") from None
    finally:
        try:
            connection.close()
        except Exception:  # the connection may already be broken; nothing more to release
            pass
    entries = [_proxysql_entry(number, row) for number, row in enumerate(rows, 1)]
    # ProxySQL's own order can be textual; the contract is numeric hostgroup and port (proxysql.md 4).
    return sorted(entries, key=lambda entry: (entry["hostgroup_id"], entry["hostname"], entry["port"]))


# =========================================================================================== rendering

def _lag_token(instance, is_replica, is_running):
    if instance["IsDetached"]:
        return "detached"
    if not instance["IsLastCheckValid"] or not instance["IsRecentlyChecked"]:
        return "unknown"
    if is_replica and (not is_running or not instance["SecondsBehindMaster"]["Valid"]):
        return "null"
    return f"{instance['ReplicationLagSeconds']['Int64']}s"


def _status_token(instance, is_replica, is_running, reasonable_lag):
    if not instance["IsLastCheckValid"]:
        return "invalid"
    if not instance["IsRecentlyChecked"]:
        return "unchecked"
    if is_replica and not is_running:
        return "nonreplicating"
    if is_replica:
        behind = instance["SecondsBehindMaster"]["Int64"]
        delay = instance["SQLDelay"]
        excess = _lag_beyond_delay(behind, delay) if delay > 0 else behind
        if excess > reasonable_lag:
            return "lag"
    return "ok"


def _topology_description(instance, reasonable_lag):
    """The bracketed description of one topology line (spec: clusters-and-topology.md 4.4)."""
    is_replica = _is_replica(instance)
    is_running = is_replica and _is_replica_running(instance)
    using_gtid = instance["UsingOracleGTID"] or instance["UsingMariaDBGTID"]
    tokens = [
        _lag_token(instance, is_replica, is_running),
        _status_token(instance, is_replica, is_running, reasonable_lag),
        instance["Version"],
        "ro" if instance["ReadOnly"] else "rw",
        instance["Binlog_format"] if instance["LogBinEnabled"] else "nobinlog",
        ">>" if instance["LogBinEnabled"] and instance["LogReplicationUpdatesEnabled"] else "",
        ("GTID:errant" if instance["GtidErrant"] else "GTID") if using_gtid or instance["SupportsOracleGTID"] else "",
        "P-GTID" if instance["UsingPseudoGTID"] else "",
        "semi:master" if instance["SemiSyncMasterStatus"] else "",
        "semi:replica" if instance["SemiSyncReplicaStatus"] else "",
        "downtimed" if instance["IsDowntimed"] else "",
    ]
    return "[" + ",".join(token for token in tokens if token) + "]"


def _topology_key(key):
    return key["Hostname"], key["Port"]


def render_topology(instances, reasonable_maintenance_lag=20):
    """orchestrator's ASCII topology of a cluster's instances, in their row order.

    Tree, markers, descriptions and the alignment of the '[' column are orchestrator's; every parentless
    instance is drawn as a root (decision D7).  Spec: clusters-and-topology.md section 4.
    """
    by_key = {_topology_key(instance["Key"]): index for index, instance in enumerate(instances)}
    children = [[] for _ in instances]
    roots = []
    for index, instance in enumerate(instances):
        group_member = instance["ReplicationGroupName"] != ""
        group_primary = group_member and instance["ReplicationGroupPrimaryInstanceKey"] == instance["Key"]
        parent_key = instance["ReplicationGroupPrimaryInstanceKey"] if group_member and not group_primary \
            else instance["MasterKey"]
        parent = by_key.get(_topology_key(parent_key))
        if parent is None:
            roots.append((index, 0))
        elif not (group_primary and not _is_replica(instance)):
            children[parent].append(index)
    starts = roots or [(index, 1) for index, instance in enumerate(instances) if instance["IsCoMaster"]]
    lines = []
    stack = list(reversed(starts))  # depth-first, pre-order, siblings in row order
    while stack:
        index, depth = stack.pop()
        instance = instances[index]
        if instance["IsCoMaster"] and depth > 1:
            continue  # cuts co-master cycles
        lines.append(_topology_line(instance, depth, reasonable_maintenance_lag))
        stack.extend((child, depth + 1) for child in reversed(children[index]))
    return _align_descriptions(lines)


def _topology_line(instance, depth, reasonable_lag):
    prefix = ""
    if depth > 0:
        group_secondary = (instance["ReplicationGroupName"] != ""
                           and instance["ReplicationGroupPrimaryInstanceKey"] != instance["Key"])
        if group_secondary:
            marker = "\u2021"
        elif _is_replica_running(instance) and instance["IsLastCheckValid"] and instance["IsRecentlyChecked"]:
            marker = "+"
        else:
            marker = "-"
        prefix = "  " * (depth - 1) + marker + " "
    alias = f" ({instance['InstanceAlias']})" if instance["InstanceAlias"] else ""
    key = instance["Key"]
    return f"{prefix}{key['Hostname']}:{key['Port']}{alias} {_topology_description(instance, reasonable_lag)}"


def _align_descriptions(lines):
    """Pad every line before its first '[' to the widest such byte offset (orchestrator counts bytes)."""
    encoded = [line.encode("utf-8") for line in lines]
    offsets = [line.find(b"[") for line in encoded]
    widest = max(offsets, default=0)
    return "\n".join(
        (line[:offset] + b" " * (widest - offset) + line[offset:]).decode("utf-8") if offset >= 0 else text
        for line, offset, text in zip(encoded, offsets, lines))


# ========================================================================================== HTTP layer

class _Document:
    """A non-JSON answer (the OpenAPI file)."""

    def __init__(self, content_type, body):
        self.content_type = content_type
        self.body = body


def _envelope(data=None, error=None):
    """The JSON envelope of every API answer, as bytes (decision D15: standard JSON, ASCII-escaped)."""
    if error is None and isinstance(data, _Record):
        return b'{"status":"ok","data":' + _record_json(data) + b"}"
    if error is None and isinstance(data, list) and data and all(type(item) is _Record for item in data):
        return b'{"status":"ok","data":[' + b",".join(map(_record_json, data)) + b"]}"
    if error is None:
        body = {"status": "ok", "data": data}
    else:
        body = {"status": "error", "error": {"code": error.code, "message": error.message}}
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def handle_clusters(server, params, query):
    """GET /clusters: every ClusterInfo. 500 CLUSTER_LIST_ERROR."""
    return read_clusters(server.backend)


def handle_cluster(server, params, query):
    """GET /clusters/{name}: one ClusterInfo. 404 NOT_FOUND, 500 CLUSTER_INFO_ERROR."""
    return read_cluster_info(server.backend, params["name"])


def handle_cluster_instances(server, params, query):
    """GET /clusters/{name}/instances: the cluster's instance objects. 404, 500 CLUSTER_INSTANCES_ERROR."""
    return read_cluster_instances(server.backend, params["name"])[1]


def handle_cluster_topology(server, params, query):
    """GET /clusters/{name}/topology: {clusterName, topology}. 404 NOT_FOUND, 500 TOPOLOGY_ERROR."""
    name, instances = read_cluster_instances(server.backend, params["name"])
    lag = server.config["ReasonableMaintenanceReplicationLagSeconds"]
    return {"clusterName": name, "topology": render_topology(instances, lag)}


def handle_instance(server, params, query):
    """GET /instances/{host}/{port}: one instance object. 400 INVALID_INSTANCE, 404, 500 INSTANCE_READ_ERROR."""
    host, port_text = params["host"], params["port"]
    port = _signed_decimal(port_text)
    if port is None or not 1 <= port <= 65535:  # decision D6: ports outside 1..65535 are invalid input
        raise ApiError(400, "INVALID_INSTANCE", f"Invalid instance key: Invalid port: {port_text}")
    not_found = ApiError(404, "NOT_FOUND", f"Instance not found: {host}:{port_text}")
    if not _is_storable(host):
        raise not_found
    if host != "_" and not host.startswith("//"):
        host, error = server.backend.resolver.resolve(server.backend, host)
        if error:
            raise ApiError(400, "INVALID_INSTANCE", f"Invalid instance key: {error}")
    instance = read_instance(server.backend, host, port)
    if instance is None:
        raise not_found
    return instance


def handle_recoveries(server, params, query):
    """GET /recoveries?cluster=&alias=&page=&unacknowledged=: 20 recoveries. 400 INVALID_PARAMETER, 500."""
    page_text = query.get("page", "")
    if page_text and not (page_text.isascii() and page_text.isdigit()):  # decision D6
        raise ApiError(400, "INVALID_PARAMETER", f"Invalid parameter page: {page_text}")
    page = _decimal(page_text) if page_text else 0  # a page too large for any table reads nothing
    return read_recoveries(server.backend, query.get("cluster", ""), query.get("alias", ""), page,
                           query.get("unacknowledged") == "true")


def handle_active_recoveries(server, params, query):
    """GET /recoveries/active: recoveries still running (decision D9). 500 ACTIVE_RECOVERIES_ERROR."""
    return read_active_recoveries(server.backend)


def handle_status(server, params, query):
    """GET /status: the health object. 500 UNHEALTHY (decision D8)."""
    return read_status(server.backend, server.hostname, server.token)


def handle_proxysql_servers(server, params, query):
    """GET /proxysql/servers: ProxySQL's runtime servers. 503 PROXYSQL_NOT_CONFIGURED, 500 PROXYSQL_ERROR."""
    return read_proxysql_servers(server.config)


def handle_openapi(server, params, query):
    """GET /openapi.yaml: this API's OpenAPI document. 404 when it is not installed."""
    if server.openapi is None:
        raise ApiError(404, "NOT_FOUND", "Not found: openapi.yaml is not installed beside orch_v2.py")
    return _Document("application/yaml; charset=UTF-8", server.openapi)


_Route = collections.namedtuple("_Route", "pattern handler error_code error_prefix")

# Paths under {URLPrefix}/api/v2, matched against percent-decoded segments; a backend failure in a
# handler becomes a 500 with the route's code and message prefix (spec: README, endpoints).
ROUTES = tuple(_Route(re.compile(pattern), handler, code, prefix) for pattern, handler, code, prefix in (
    (r"/clusters", handle_clusters, "CLUSTER_LIST_ERROR", "Failed to read clusters"),
    (r"/clusters/(?P<name>[^/]+)", handle_cluster, "CLUSTER_INFO_ERROR", "Failed to read cluster info"),
    (r"/clusters/(?P<name>[^/]+)/instances", handle_cluster_instances, "CLUSTER_INSTANCES_ERROR",
     "Failed to read cluster instances"),
    (r"/clusters/(?P<name>[^/]+)/topology", handle_cluster_topology, "TOPOLOGY_ERROR",
     "Failed to generate topology"),
    (r"/instances/(?P<host>[^/]+)/(?P<port>[^/]+)", handle_instance, "INSTANCE_READ_ERROR",
     "Failed to read instance"),
    (r"/recoveries", handle_recoveries, "RECOVERIES_ERROR", "Failed to read recoveries"),
    (r"/recoveries/active", handle_active_recoveries, "ACTIVE_RECOVERIES_ERROR",
     "Failed to read active recoveries"),
    (r"/status", handle_status, "UNHEALTHY", "Application node is unhealthy: backend query failed"),
    (r"/proxysql/servers", handle_proxysql_servers, "PROXYSQL_ERROR", "Failed to query ProxySQL servers"),
    (r"/openapi\.yaml", handle_openapi, "INTERNAL_ERROR", "Cannot serve openapi.yaml"),
))

_PERCENT_ENCODED = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")


def _decode_segment(segment):
    """Percent-decode one path segment once, as UTF-8 ('+' stays '+'); 400 INVALID_REQUEST otherwise."""
    if "%" not in segment and segment.isascii():
        return segment
    if not _PERCENT_ENCODED.fullmatch(segment):
        raise ApiError(400, "INVALID_REQUEST", "Invalid request path: malformed percent-encoding")
    try:
        return urllib.parse.unquote_to_bytes(segment.encode("latin-1")).decode("utf-8")
    except UnicodeError:
        raise ApiError(400, "INVALID_REQUEST", "Invalid request path: not UTF-8") from None


def route_request(target, url_prefix):
    """Match a request target: (route, path parameters, query string), or ApiError 400 / 404.

    The path is split at '/' first and each segment decoded once, so '%2F' stays inside its segment; the
    prefix must appear exactly once and one trailing slash is tolerated (spec: README, HTTP rules).
    """
    if not target.startswith("/") and "://" in target:  # absolute-form request target
        parts = urllib.parse.urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    path, _, query = target.partition("?")
    segments = [_decode_segment(segment) for segment in path.split("/")]
    if len(segments) > 2 and segments[-1] == "":
        segments.pop()
    root = (url_prefix + API_ROOT).split("/")
    if segments[0] != "" or segments[:len(root)] != root:
        raise ApiError(404, "NOT_FOUND", f"Not found: {path}")
    # Re-escape '%' and '/' inside segments so that a pattern's [^/]+ never spans two segments.
    inner = "/" + "/".join(s.replace("%", "%25").replace("/", "%2F") for s in segments[len(root):])
    for route in ROUTES:
        match = route.pattern.fullmatch(inner)
        if match:
            params = {name: urllib.parse.unquote(value) for name, value in match.groupdict().items()}
            return route, params, query
    raise ApiError(404, "NOT_FOUND", f"Not found: {path}")


def _query_parameters(query):
    """Form-decoded query parameters; a repeated one counts with its first value (decision D6)."""
    parameters = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        parameters.setdefault(name, value)
    return parameters


def _is_authorized(config, header):
    """orchestrator's basic and multi authentication on read routes (spec: config.md 6.3)."""
    method, user, password = config.auth_method, config.auth_user, config.auth_password
    if method not in ("basic", "multi"):
        return True
    given = (header or "").encode("latin-1", "replace")
    if method == "basic":
        return hmac.compare_digest(given, b"Basic " + base64.b64encode(user + b":" + password))
    if not given.startswith(b"Basic "):
        return False
    try:
        decoded = base64.b64decode(given[len(b"Basic "):], validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, colon, given_password = decoded.partition(b":")
    if not colon:
        return False
    if given_user == b"readonly":  # multi: the read-only user with any password
        return True
    return hmac.compare_digest(given_user, user) & hmac.compare_digest(given_password, password)


_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def _answer_headers(content_type, body, request_id):
    """The headers of every answer (issue 7), whoever writes it."""
    return (("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"), ("X-Request-Id", request_id))


class _SocketWriter:
    """A wfile that always writes everything (socket.sendall)."""

    def __init__(self, sock):
        self._sock = sock

    def write(self, data):
        self._sock.sendall(data)
        return len(data)

    def flush(self):
        pass


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """Parses one request with http.server and answers it through the router and the envelope."""

    protocol_version = "HTTP/1.1"
    server_version = f"orch_v2/{__version__}"
    sys_version = ""
    # http.server's own error answers, as envelope codes
    PROTOCOL_ERROR_CODES = {400: "INVALID_REQUEST", 408: "REQUEST_TIMEOUT", 414: "URI_TOO_LONG",
                            431: "HEADERS_TOO_LARGE", 505: "HTTP_VERSION_NOT_SUPPORTED"}

    def __init__(self, server, connection, head):
        # Not BaseRequestHandler.__init__: the server hands over one complete request head at a time.
        self.server = server
        self.connection = self.request = connection.sock
        self.client_address = connection.address
        self.rfile = io.BytesIO(head)
        self.head_size = len(head)
        self.wfile = _SocketWriter(connection.sock)
        self.close_connection = True
        self.command, self.target, self.request_id = "", "", ""
        self.started = time.monotonic()

    def handle_one_request(self):
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414, "Request line too long")
            return
        if self.head_size > MAX_REQUEST_HEAD:  # also a head cut off at the limit, its end never seen
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(431, "Request header fields too large")
            return
        if not self.parse_request():
            return
        if self.request_version == "HTTP/0.9":  # a request line without version
            self.send_error(400, "HTTP/0.9 requests are not supported")
            return
        self.target = self.requestline.split()[1]
        if self.headers.defects:  # a header line without ':'; email's parser would silently drop the rest
            self.send_error(400, "Malformed header line")
            return
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # the body is not read, so the connection cannot be reused
        self._answer()

    def _answer(self):
        self.request_id = self._request_id()
        try:
            self._check_access()
            route, params, query = route_request(self.target, self.server.config.url_prefix)
            if self.command not in ("GET", "HEAD"):
                self.close_connection = True
                raise ApiError(405, "METHOD_NOT_ALLOWED", "Method not allowed", [("Allow", "GET, HEAD")])
            result = self._call(route, params, _query_parameters(query))
        except ApiError as error:
            result = error
        self._respond(result)

    def _call(self, route, params, query):
        try:
            with self.server.backend.request_scope():
                return route.handler(self.server, params, query)
        except ApiError as error:
            return error
        except BackendError as error:
            self.server.log(f"request {self.request_id}: {route.error_code}: {error}")
            return ApiError(500, route.error_code, f"{route.error_prefix}: {error}")
        except Exception:
            self.server.log(f"request {self.request_id}: unexpected error\n{traceback.format_exc().rstrip()}")
            return ApiError(500, "INTERNAL_ERROR", f"Internal error; see the orch_v2 log, request {self.request_id}")

    def _check_access(self):
        config = self.server.config
        if config["UseMutualTLS"] and not (config["StatusEndpoint"] in self.target and not config["StatusOUVerify"]):
            if not isinstance(self.connection, ssl.SSLSocket):
                raise ApiError(401, "UNAUTHORIZED", "No TLS")
            certificate = self.connection.getpeercert() or {}
            units = {value for rdn in certificate.get("subject", ()) for name, value in rdn
                     if name == "organizationalUnitName"}
            if not units & config.valid_ous:
                raise ApiError(401, "UNAUTHORIZED", "Invalid OU")
        if not _is_authorized(config, self.headers.get("Authorization")):
            # issue 7 names the realm orch_v2 (orchestrator's own challenge says "Authorization Required")
            raise ApiError(401, "UNAUTHORIZED", "Not Authorized",
                           [("WWW-Authenticate", 'Basic realm="orch_v2"')])

    def _request_id(self):
        headers = getattr(self, "headers", None)
        supplied = headers.get("X-Request-Id", "") if headers is not None else ""
        return supplied if _CLIENT_REQUEST_ID.fullmatch(supplied) else self.server.new_request_id()

    def _respond(self, result):
        """Encode the whole answer before sending anything, so that a failure can still become a 500."""
        content_type, headers = JSON_CONTENT_TYPE, ()
        if isinstance(result, ApiError):
            result.message = self.server.scrub(result.message)
            status, body, headers = result.status, _envelope(error=result), result.headers
        elif isinstance(result, _Document):
            status, body, content_type = 200, result.body, result.content_type
        else:
            try:
                status, body = 200, _envelope(result)
            except (TypeError, ValueError, RecursionError):
                self.server.log(f"request {self.request_id}: cannot encode\n{traceback.format_exc().rstrip()}")
                status, body = 500, _envelope(error=ApiError(500, "INTERNAL_ERROR", "Cannot encode the answer"))
        self.send_response(status)
        for name, value in (*_answer_headers(content_type, body, self.request_id), *headers):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()
        self.server.log_access(self, status, 0 if self.command == "HEAD" else len(body))

    def send_error(self, code, message=None, explain=None):
        """http.server's own protocol errors (400, 414, 431, 505), as envelopes; the connection closes."""
        if self.request_version in ("HTTP/0.9", None):
            self.request_version = "HTTP/1.0"  # so that the status line and headers are written
        self.close_connection = True
        self.request_id = self.request_id or self._request_id()
        text = message or self.responses.get(code, ("Error",))[0]
        self._respond(ApiError(code, self.PROTOCOL_ERROR_CODES.get(code, "INVALID_REQUEST"), text[:200]))

    def version_string(self):
        return self.server_version  # http.server appends " " + sys_version, a trailing space here

    def log_request(self, code="-", size="-"):
        pass  # ApiServer.log_access writes one line per answer, with its size and duration

    def log_message(self, format, *args):
        self.server.log(format % args)


class _Connection:
    """A client connection and the bytes received on it that no request has consumed yet."""

    __slots__ = ("sock", "address", "buffer", "deadline", "handshaking")

    def __init__(self, sock, address, deadline, handshaking):
        self.sock = sock
        self.address = address
        self.buffer = b""
        self.deadline = deadline
        self.handshaking = handshaking


_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _request_head_ready(buffer):
    """True when the buffer holds a whole request head, or enough to answer it with an error."""
    line_end = buffer.find(b"\n")
    if line_end < 0:
        return len(buffer) > MAX_REQUEST_LINE
    if line_end > MAX_REQUEST_LINE or len(buffer[:line_end].split()) < 3:
        return True  # too long, or not a request line with a version (HTTP/0.9, garbage)
    return _HEAD_END.search(buffer) is not None or len(buffer) > MAX_REQUEST_HEAD


def _split_head(buffer):
    match = _HEAD_END.search(buffer)
    return (buffer[:match.end()], buffer[match.end():]) if match else (buffer, b"")


class ApiServer:
    """The HTTP(S) server: one I/O thread waits on idle connections, a fixed pool of workers answers.

    Keeping idle keep-alive connections out of the worker threads bounds the threads (and with them the
    backend connections) however many clients connect, and lets a slow or silent client cost nothing
    but a socket until its request timeout closes it.
    """

    def __init__(self, config, backend, threads=DEFAULT_THREADS, request_timeout=DEFAULT_REQUEST_TIMEOUT,
                 access_log=True, log_stream=None):
        self.config = config
        self.backend = backend
        self.hostname = socket.gethostname()
        self.token = hashlib.sha256(secrets.token_bytes(64)).hexdigest()  # as orchestrator makes its token
        self.request_timeout = request_timeout
        self.access_log = access_log
        self.openapi = _read_openapi_document()
        self.threads = max(1, threads)
        self._log_stream = log_stream or sys.stderr
        self._log_lock = threading.Lock()
        self._secrets = config.secrets()
        self._tls = _server_tls_context(config)
        self._listener, self.address = _listen(config)
        self.max_connections = _max_open_connections()
        self.parent_pid = None  # set in a forked serving process: it stops when its parent is gone
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._wake_sender = None

    def _open_loop(self):
        """The I/O loop's own state, made in the process that serves (after any fork: an epoll set must
        not be shared between processes)."""
        self._selector = selectors.DefaultSelector()
        self._wake_receiver, self._wake_sender = socket.socketpair()
        self._wake_receiver.setblocking(False)
        self._wake_sender.setblocking(False)
        self._handed_back = collections.deque()
        self._tasks = queue.SimpleQueue()
        self._quick_tasks = queue.SimpleQueue()
        self._parked = {}
        self._busy = 0
        self._busy_changed = threading.Condition()
        self._request_ids = itertools.count(1)
        self._request_id_prefix = secrets.token_hex(4)  # distinguishes this process's ids from another's
        if self._stopping.is_set():
            self._wake()

    @property
    def url(self):
        """The base URL of the API, for people."""
        if self.config["ListenSocket"]:
            return f"http+unix://{self.address}{self.config.url_prefix}{API_ROOT}"
        host, port = self.address[0], self.address[1]
        host = {"": "0.0.0.0", "::": "[::]", "0.0.0.0": "0.0.0.0"}.get(host, f"[{host}]" if ":" in host else host)
        return f"{'https' if self._tls else 'http'}://{host}:{port}{self.config.url_prefix}{API_ROOT}"

    def log(self, line):
        """Write one line to the log, with every configured password masked."""
        with self._log_lock:
            try:
                self._log_stream.write(self.scrub(line) + "\n")
                self._log_stream.flush()
            except (OSError, ValueError):
                pass  # a closed log must not break serving

    def new_request_id(self):
        return f"{self._request_id_prefix}-{next(self._request_ids):x}"

    def scrub(self, text):
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    def log_access(self, handler, status, size):
        """One access line: time, client, method, path, status, bytes sent, milliseconds, request id."""
        if not self.access_log:
            return
        client = handler.client_address[0] if isinstance(handler.client_address, tuple) else "unix"
        if handler.target:
            request = f"{handler.command} {handler.target[:2000]}"
        else:  # not a request line http.server could split: show it whole
            request = f"- {(handler.requestline or '-')[:2000]}"
        request = request.translate(http.server.BaseHTTPRequestHandler._control_char_table)
        milliseconds = (time.monotonic() - handler.started) * 1000
        self.log(f"{_log_time()} {client} {request} {status} {size} {milliseconds:.1f}ms id={handler.request_id or '-'}")

    def serve_forever(self):
        """Serve until shutdown(); then finish requests in flight (up to 10 s) and close everything."""
        self._open_loop()
        workers = [(tasks, threading.Thread(target=self._work, args=(tasks,), name=f"orch_v2-{kind}-{number}",
                                            daemon=True))
                   for tasks, kind, count in ((self._tasks, "worker", self.threads),
                                              (self._quick_tasks, "quick", QUICK_WORKERS))
                   for number in range(count)]
        for _, worker in workers:
            worker.start()
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_receiver, selectors.EVENT_READ, "wake")
        next_sweep = time.monotonic()
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(timeout=0.5):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._take_back()
                    else:
                        self._receive(key.data)
                if time.monotonic() >= next_sweep:
                    self._close_expired()
                    next_sweep = time.monotonic() + 0.25
                    if self.parent_pid is not None and os.getppid() != self.parent_pid:
                        self._stopping.set()  # the process that started this one is gone
        finally:
            self._finish(workers)

    def shutdown(self):
        """Stop accepting; serve_forever returns once requests in flight are answered."""
        self._stopping.set()
        self._wake()

    def wait_stopped(self, timeout=None):
        return self._stopped.wait(timeout)

    def _wake(self):
        try:
            if self._wake_sender is not None:
                self._wake_sender.send(b"\0")
        except OSError:
            pass  # the wake-up socket is full or closed: the loop is awake or gone

    def _accept(self):
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. out of file descriptors: leave the rest in the backlog
                self.log(f"cannot accept a connection: {error}")
                return
            if len(self._parked) >= self.max_connections:
                self._close(min(self._parked.values(), key=lambda parked: parked.deadline))
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ssl.SSLError):
                    sock.close()
                    continue
            address = address if isinstance(address, tuple) and address else ("unix", 0)
            self._park(_Connection(sock, address, time.monotonic() + self.request_timeout,
                                   self._tls is not None))

    def _park(self, connection):
        self._parked[connection.sock] = connection
        self._selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _unpark(self, connection):
        self._parked.pop(connection.sock, None)
        try:
            self._selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass

    def _close(self, connection):
        self._unpark(connection)
        try:
            connection.sock.close()
        except OSError:
            pass

    def _close_expired(self):
        now = time.monotonic()
        for connection in [parked for parked in self._parked.values() if parked.deadline < now]:
            if connection.buffer and not connection.handshaking:  # part of a request came, too slowly
                self._send_timeout(connection)
            self._close(connection)  # silent or too slow: the request timeout has passed

    def _send_timeout(self, connection):
        """A best-effort 408 envelope (the socket is non-blocking: what does not fit is dropped)."""
        body = _envelope(error=ApiError(408, "REQUEST_TIMEOUT", "No complete request within the request timeout"))
        request_id = self.new_request_id()
        headers = (*_answer_headers(JSON_CONTENT_TYPE, body, request_id), ("Connection", "close"))
        head = "HTTP/1.1 408 Request Timeout\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        try:
            connection.sock.send(head.encode("ascii") + body)
        except (OSError, ssl.SSLError):
            pass
        if self.access_log:
            self.log(f"{_log_time()} {connection.address[0]} - (incomplete request) 408 {len(body)} - id={request_id}")

    def _receive(self, connection):
        sock = connection.sock
        try:
            if connection.handshaking:
                sock.do_handshake()
                connection.handshaking = False
            data = sock.recv(65536)
            while data and isinstance(sock, ssl.SSLSocket) and sock.pending():
                data += sock.recv(sock.pending())
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ssl.SSLError):
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        connection.buffer += data
        if _request_head_ready(connection.buffer):
            self._unpark(connection)
            (self._quick_tasks if self._needs_no_backend(connection.buffer) else self._tasks).put(connection)

    def _needs_no_backend(self, head):
        """True for requests answered without the backend: errors, other methods, openapi.yaml."""
        words = head.split(b"\n", 1)[0].split()
        if len(words) != 3 or words[0] not in (b"GET", b"HEAD"):
            return True
        try:
            return route_request(words[1].decode("latin-1"), self.config.url_prefix)[0].handler is handle_openapi
        except ApiError:
            return True

    def _take_back(self):
        try:
            while self._wake_receiver.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._handed_back:
            self._park(self._handed_back.popleft())

    def _work(self, tasks):
        while True:
            connection = tasks.get()
            if connection is None:
                return
            with self._busy_changed:
                self._busy += 1
            try:
                self._serve(connection, tasks)
            except Exception:
                self.log(f"connection from {connection.address[0]} failed\n{traceback.format_exc().rstrip()}")
                self._close_socket(connection.sock)
            finally:
                with self._busy_changed:
                    self._busy -= 1
                    self._busy_changed.notify_all()

    def _serve(self, connection, tasks):
        """Answer the requests on a connection, then hand it back to the I/O thread or close it."""
        sock = connection.sock
        sock.settimeout(self.request_timeout)
        try:
            while True:
                if tasks is self._quick_tasks and not self._needs_no_backend(connection.buffer):
                    self._tasks.put(connection)  # a quick worker never waits on the backend
                    return
                head, connection.buffer = _split_head(connection.buffer)
                handler = RequestHandler(self, connection, head)
                handler.handle_one_request()
                if handler.close_connection or self._stopping.is_set():
                    self._close_socket(sock)
                    return
                if not _request_head_ready(connection.buffer) and not self._next_request(connection, tasks):
                    break
        except (OSError, ssl.SSLError):  # the client went away or stopped reading
            self._close_socket(sock)
            return
        sock.setblocking(False)
        connection.deadline = time.monotonic() + self.request_timeout
        self._handed_back.append(connection)
        self._wake()

    @staticmethod
    def _next_request(connection, tasks):
        """Wait a moment for the client's next request when no other connection waits for a worker.

        A busy keep-alive client sends it within a millisecond or so; answering it here saves the round trip
        through the I/O thread.  True when a whole request head has arrived.
        """
        sock = connection.sock
        if not tasks.empty():
            return False
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            readable, _, _ = select.select([sock], [], [], KEEP_ALIVE_LINGER_SECONDS)
            if not readable:
                return False
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed by the client")
        connection.buffer += data
        return _request_head_ready(connection.buffer)

    @staticmethod
    def _close_socket(sock):
        try:
            sock.close()
        except OSError:
            pass

    def _finish(self, workers):
        self._selector.unregister(self._listener)
        self._listener.close()
        if self.config["ListenSocket"]:
            try:
                os.unlink(self.address)
            except OSError:
                pass
        for connection in list(self._parked.values()):
            self._close(connection)
        with self._busy_changed:
            self._busy_changed.wait_for(lambda: self._busy == 0 and self._tasks.empty() and self._quick_tasks.empty(),
                                        timeout=SHUTDOWN_GRACE_SECONDS)
        for tasks, _ in workers:
            tasks.put(None)  # one stop mark per worker, on its own queue
        for connection in list(self._handed_back):
            self._close_socket(connection.sock)
        self.backend.close()
        self._selector.close()
        self._wake_receiver.close()
        self._wake_sender.close()
        self._stopped.set()


def _log_time():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _read_openapi_document():
    """openapi.yaml beside this module, or where setup.py installs it; None when absent."""
    for directory in (os.path.dirname(os.path.abspath(__file__)), os.path.join(sys.prefix, "share", "orch_v2")):
        try:
            with open(os.path.join(directory, "openapi.yaml"), "rb") as stream:
                return stream.read()
        except OSError:
            continue
    return None


def _max_open_connections():
    """How many client connections to keep open: as many as file descriptors allow, within reason."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        limit = 65536 if soft == resource.RLIM_INFINITY else soft
    except (ImportError, ValueError, OSError):
        limit = 1024
    return max(16, min(10000, limit - 128))


def _server_tls_context(config):
    """The HTTPS context for UseSSL, with client certificates for UseMutualTLS (spec: config.md 6)."""
    if config["ListenSocket"] or not config["UseSSL"]:
        return None
    certificate, key = config["SSLCertFile"], config["SSLPrivateKeyFile"]
    if not certificate or not key:
        raise ConfigError("UseSSL needs SSLCertFile and SSLPrivateKeyFile")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load SSLCertFile {certificate} with SSLPrivateKeyFile {key}: {error}") from None
    if config["UseMutualTLS"]:
        context.verify_mode = ssl.CERT_OPTIONAL  # requested, verified when given; the OU check decides
        try:
            if config["SSLCAFile"]:
                context.load_verify_locations(cafile=config["SSLCAFile"])
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"cannot load SSLCAFile {config['SSLCAFile']}: {error}") from None
    return context


def _listen(config):
    """The listening socket (ListenSocket, else ListenAddress) and its address; ConfigError if not bound."""
    path = config["ListenSocket"]
    try:
        if path:
            if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a socket left by a previous run
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(1024)
            return listener, path
        host, port = config.listen
        if host == "" and socket.has_dualstack_ipv6():
            listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.create_server((host, port), family=family, backlog=1024)
        return listener, listener.getsockname()
    except (OSError, UnicodeError) as error:
        where = path or config["ListenAddress"]
        raise ConfigError(f"cannot listen on {where}: {getattr(error, 'strerror', None) or error}") from None


# ================================================================================================ demo

# The tables orch_v2 reads, as orchestrator creates them in its SQLite backend (orchestrator 3.2.6).
DEMO_SCHEMA = """
CREATE TABLE database_instance (
  hostname varchar(128) NOT NULL, port smallint NOT NULL, last_checked timestamp not null default (''),
  last_seen timestamp NULL DEFAULT NULL, server_id int NOT NULL, version varchar(128) NOT NULL,
  binlog_format varchar(16) NOT NULL, log_bin tinyint NOT NULL, log_slave_updates tinyint NOT NULL,
  binary_log_file varchar(128) NOT NULL, binary_log_pos bigint NOT NULL, master_host varchar(128) NOT NULL,
  master_port smallint NOT NULL, slave_sql_running tinyint NOT NULL, slave_io_running tinyint NOT NULL,
  master_log_file varchar(128) NOT NULL, read_master_log_pos bigint NOT NULL,
  relay_master_log_file varchar(128) NOT NULL, exec_master_log_pos bigint NOT NULL,
  seconds_behind_master bigint DEFAULT NULL, slave_lag_seconds bigint DEFAULT NULL, num_slave_hosts int NOT NULL,
  slave_hosts text NOT NULL, cluster_name varchar(128) NOT NULL, read_only TINYint not null default 0,
  last_sql_error TEXT not null default '', last_io_error TEXT not null default '',
  oracle_gtid TINYint not null default 0, mariadb_gtid TINYint not null default 0,
  relay_log_file varchar(128) not null default '', relay_log_pos bigint not null default 0,
  pseudo_gtid TINYint not null default 0, replication_depth TINYint not null default 0,
  has_replication_filters TINYint not null default 0, data_center varchar(32) not null default '',
  physical_environment varchar(32) not null default '', uptime int not null default 0,
  is_co_master TINYint not null default 0, sql_delay int not null default 0, binlog_server TINYint not null default 0,
  supports_oracle_gtid TINYint not null default 0, executed_gtid_set text not null default '',
  server_uuid varchar(64) not null default '', suggested_cluster_alias varchar(128) not null default '',
  last_attempted_check TIMESTAMP NOT NULL DEFAULT '1971-01-01 00:00:00', gtid_purged text not null default '',
  replication_credentials_available TINYint not null default 0,
  has_replication_credentials TINYint not null default 0, allow_tls TINYint not null default 0,
  semi_sync_enforced TINYint not null default 0, instance_alias varchar(128) not null default '',
  version_comment varchar(128) NOT NULL DEFAULT '', major_version varchar(16) not null default '',
  binlog_row_image varchar(16) not null default '', last_discovery_latency bigint not null default 0,
  semi_sync_master_enabled TINYint not null default 0, semi_sync_replica_enabled TINYint not null default 0,
  gtid_mode varchar(32) not null default '', last_check_partial_success tinyint not null default 0,
  master_uuid varchar(64) not null default '', gtid_errant text not null default '',
  ancestry_uuid text not null default '', replication_sql_thread_state tinyint signed not null default 0,
  replication_io_thread_state tinyint signed not null default 0, region varchar(32) not null default '',
  semi_sync_master_timeout int NOT NULL DEFAULT 0, semi_sync_master_wait_for_slave_count int NOT NULL DEFAULT 0,
  semi_sync_master_status TINYint NOT NULL DEFAULT 0, semi_sync_replica_status TINYint NOT NULL DEFAULT 0,
  semi_sync_master_clients int NOT NULL DEFAULT 0, semi_sync_available TINYint NOT NULL DEFAULT 0,
  replication_group_name VARCHAR(64) NOT NULL DEFAULT '',
  replication_group_is_single_primary_mode TINYint NOT NULL DEFAULT 1,
  replication_group_member_state VARCHAR(16) NOT NULL DEFAULT '',
  replication_group_member_role VARCHAR(16) NOT NULL DEFAULT '',
  replication_group_members text not null default '', replication_group_primary_host varchar(128) NOT NULL DEFAULT '',
  replication_group_primary_port smallint NOT NULL DEFAULT 0,
  PRIMARY KEY (hostname, port));
CREATE INDEX cluster_name_idx_database_instance ON database_instance(cluster_name);
CREATE TABLE candidate_database_instance (
  hostname varchar(128) NOT NULL, port smallint NOT NULL, last_suggested timestamp not null default (''),
  priority TINYINT SIGNED NOT NULL DEFAULT 1,
  promotion_rule text check(promotion_rule in ('must', 'prefer', 'neutral', 'prefer_not', 'must_not'))
    NOT NULL DEFAULT 'neutral',
  PRIMARY KEY (hostname, port));
CREATE TABLE hostname_unresolve (
  hostname varchar(128) NOT NULL, unresolved_hostname varchar(128) NOT NULL,
  last_registered timestamp not null default (''), PRIMARY KEY (hostname));
CREATE TABLE database_instance_downtime (
  hostname varchar(128) NOT NULL, port smallint NOT NULL, downtime_active tinyint(4) DEFAULT NULL,
  begin_timestamp timestamp default (''), end_timestamp timestamp NULL DEFAULT NULL, owner varchar(128) NOT NULL,
  reason text NOT NULL, PRIMARY KEY (hostname, port));
CREATE TABLE cluster_alias (
  cluster_name varchar(128) NOT NULL, alias varchar(128) NOT NULL, last_registered timestamp not null default (''),
  PRIMARY KEY (cluster_name));
CREATE UNIQUE INDEX alias_uidx_cluster_alias on cluster_alias (alias);
CREATE TABLE cluster_domain_name (
  cluster_name varchar(128) NOT NULL, domain_name varchar(128) NOT NULL,
  last_registered timestamp not null default (''), PRIMARY KEY (cluster_name));
CREATE TABLE topology_recovery (
  recovery_id integer, hostname varchar(128) NOT NULL, port smallint NOT NULL,
  in_active_period tinyint NOT NULL DEFAULT 0, start_active_period timestamp not null default (''),
  end_active_period_unixtime int, end_recovery timestamp NULL DEFAULT NULL,
  processing_node_hostname varchar(128) NOT NULL, processcing_node_token varchar(128) NOT NULL,
  successor_hostname varchar(128) DEFAULT NULL, successor_port smallint DEFAULT NULL,
  analysis varchar(128) not null default '', cluster_name varchar(128) not null default '',
  cluster_alias varchar(128) not null default '', count_affected_slaves int not null default 0,
  slave_hosts text not null default '', is_successful TINYint NOT NULL DEFAULT 0,
  acknowledged TINYint NOT NULL DEFAULT 0, acknowledged_by varchar(128) not null default '',
  acknowledge_comment text not null default '', participating_instances text not null default '',
  lost_slaves text not null default '', all_errors text not null default '', acknowledged_at TIMESTAMP NULL,
  last_detection_id bigint not null default 0, successor_alias varchar(128) DEFAULT NULL,
  uid varchar(128) not null default '', PRIMARY KEY (recovery_id));
CREATE TABLE active_node (
  anchor tinyint NOT NULL, hostname varchar(128) NOT NULL, token varchar(128) NOT NULL,
  last_seen_active timestamp not null default (''),
  first_seen_active timestamp NOT NULL DEFAULT '1971-01-01 00:00:00', PRIMARY KEY (anchor));
CREATE TABLE node_health (
  hostname varchar(128) NOT NULL, token varchar(128) NOT NULL, last_seen_active timestamp not null default (''),
  extra_info varchar(128) not null default '', command varchar(128) not null default '',
  app_version varchar(64) NOT NULL DEFAULT "", first_seen_active timestamp NOT NULL DEFAULT '1971-01-01 00:00:00',
  db_backend varchar(255) NOT NULL DEFAULT "", incrementing_indicator bigint not null default 0,
  PRIMARY KEY (hostname, token));
CREATE TABLE hostname_resolve (
  hostname varchar(128) NOT NULL, resolved_hostname varchar(128) NOT NULL,
  resolved_timestamp timestamp not null default (''), PRIMARY KEY (hostname));
CREATE TABLE host_agent (
  hostname varchar(128) NOT NULL, port smallint NOT NULL, token varchar(128) NOT NULL,
  last_submitted timestamp not null default (''), last_checked timestamp NULL DEFAULT NULL,
  last_seen timestamp NULL DEFAULT NULL, mysql_port smallint DEFAULT NULL, count_mysql_snapshots smallint NOT NULL,
  PRIMARY KEY (hostname));
"""

DEMO_NODE = "orc-demo"
DEMO_PATHS = ("/clusters", "/clusters/orders", "/clusters/orders/instances", "/clusters/orders/topology",
              "/clusters/ledger/topology", "/instances/db-orders-2/3306", "/recoveries", "/recoveries/active",
              "/status", "/proxysql/servers")
DEMO_DEAD_HOST = "db-billing-1"  # the failed old master: no longer seen, so its checks stay invalid
DEMO_CONFIG = {
    "BackendDB": "sqlite",
    "ListenAddress": "127.0.0.1:3000",
    "RecoverMasterClusterFilters": ["orders", "billing"],
    "RecoverIntermediateMasterClusterFilters": ["*"],
    "ClusterNameToAlias": {"^db-ledger": "ledger"},
}


def _demo_time(seconds_from_now=0):
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _demo_instance(host, cluster, master=None, depth=0, **columns):
    """A database_instance row of a healthy MySQL 8.0 server, a replica of master when given."""
    server_id = 100 + sum(map(ord, host))
    row = dict(
        hostname=host, port=3306, last_checked=_demo_time(), last_seen=_demo_time(), server_id=server_id,
        version="8.0.36", version_comment="MySQL Community Server - GPL", binlog_format="ROW", log_bin=1,
        log_slave_updates=1, binary_log_file="mysql-bin.000042", binary_log_pos=1_048_576 + server_id,
        master_host="", master_port=0, slave_sql_running=0, slave_io_running=0, master_log_file="",
        read_master_log_pos=0, relay_master_log_file="", exec_master_log_pos=0, seconds_behind_master=None,
        slave_lag_seconds=None, num_slave_hosts=0, slave_hosts="[]", cluster_name=cluster, read_only=0,
        supports_oracle_gtid=1, gtid_mode="ON", executed_gtid_set=f"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-{server_id}",
        server_uuid=f"3e11fa47-71ca-11e1-9e33-{server_id:012d}", data_center="dc1", region="eu-west",
        physical_environment="prod", uptime=864000 + server_id, binlog_row_image="FULL", allow_tls=1,
        last_discovery_latency=2_500_000 + server_id, replication_depth=depth,
        replication_sql_thread_state=-1, replication_io_thread_state=-1, semi_sync_master_timeout=10000,
        semi_sync_master_wait_for_slave_count=1, has_replication_credentials=0)
    if master:
        row.update(master_host=master, master_port=3306, slave_sql_running=1, slave_io_running=1,
                   master_log_file="mysql-bin.000042", read_master_log_pos=1_048_576,
                   relay_master_log_file="mysql-bin.000042", exec_master_log_pos=1_048_576,
                   seconds_behind_master=0, slave_lag_seconds=0, read_only=1, oracle_gtid=1,
                   relay_log_file="relay-bin.000007", relay_log_pos=4096, replication_sql_thread_state=1,
                   replication_io_thread_state=1, has_replication_credentials=1, master_uuid="")
    row.update(columns)
    return row


def _demo_instances():
    orders, billing, ledger = "db-orders-1:3306", "db-billing-2:3306", "db-ledger-a:3306"
    rows = [
        # orders: a 3-level chain and a delayed replica
        _demo_instance("db-orders-1", orders),
        _demo_instance("db-orders-2", orders, "db-orders-1", 1),
        _demo_instance("db-orders-3", orders, "db-orders-2", 2, log_slave_updates=0),
        _demo_instance("db-orders-4", orders, "db-orders-1", 1, sql_delay=3600, seconds_behind_master=3602,
                       slave_lag_seconds=3602, instance_alias="delayed"),
        # billing, after the failover from db-billing-1 (left behind as its own cluster, downtimed)
        _demo_instance("db-billing-2", billing),
        _demo_instance("db-billing-3", billing, "db-billing-2", 1),
        _demo_instance(DEMO_DEAD_HOST, "db-billing-1:3306", last_seen=_demo_time(-2400),
                       last_io_error="error reconnecting to master"),
        # ledger: a co-master pair with a replica under each
        _demo_instance("db-ledger-a", ledger, "db-ledger-b", 1, read_only=0, is_co_master=1),
        _demo_instance("db-ledger-b", ledger, "db-ledger-a", 1, is_co_master=1),
        _demo_instance("db-ledger-r1", ledger, "db-ledger-a", 2),
        _demo_instance("db-ledger-r2", ledger, "db-ledger-b", 2, seconds_behind_master=45, slave_lag_seconds=45),
    ]
    for row in rows:
        replicas = [{"Hostname": other["hostname"], "Port": 3306} for other in rows
                    if other["master_host"] == row["hostname"]]
        row["slave_hosts"] = json.dumps(replicas, separators=(",", ":"))
        row["num_slave_hosts"] = len(replicas)
    return rows


def create_demo_database(path):
    """Write orchestrator's schema and a realistic state (three clusters, recoveries, a node) to path."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")  # as orchestrator runs its file
        connection.executescript(DEMO_SCHEMA)
        connection.execute("BEGIN")
        for row in _demo_instances():
            connection.execute(f"INSERT INTO database_instance ({', '.join(row)}) "
                               f"VALUES ({', '.join('?' * len(row))})", list(row.values()))
        now, token = _demo_time(), hashlib.sha256(b"orch_v2 demo node").hexdigest()
        statements = [
            ("INSERT INTO cluster_alias VALUES (?, ?, ?)", [("db-orders-1:3306", "orders", now),
                                                              ("db-billing-2:3306", "billing", now)]),
            ("INSERT INTO cluster_domain_name VALUES (?, ?, ?)", [("db-orders-1:3306", "orders.db.example.com", now),
                                                                    ("db-billing-2:3306", "billing.db.example.com", now)]),
            ("INSERT INTO candidate_database_instance VALUES (?, 3306, ?, 1, ?)",
             [("db-orders-2", now, "prefer"), ("db-orders-4", now, "must_not")]),
            ("INSERT INTO database_instance_downtime VALUES (?, 3306, 1, ?, ?, ?, ?)",
             [(DEMO_DEAD_HOST, _demo_time(-2390), _demo_time(86000), "orchestrator", "lost-in-recovery")]),
            ("INSERT INTO active_node VALUES (1, ?, ?, ?, ?)", [(DEMO_NODE, token, now, _demo_time(-7200))]),
            ("INSERT INTO node_health VALUES (?, ?, ?, 'HttpMode', '', '3.2.6', ?, ?, 1)",
             [(DEMO_NODE, token, now, _demo_time(-7205), path)]),
        ]
        for statement, rows in statements:
            connection.executemany(statement, rows)
        recovery = ("INSERT INTO topology_recovery (recovery_id, uid, hostname, port, in_active_period, "
                    "start_active_period, end_active_period_unixtime, end_recovery, processing_node_hostname, "
                    "processcing_node_token, successor_hostname, successor_port, successor_alias, analysis, "
                    "cluster_name, cluster_alias, count_affected_slaves, slave_hosts, is_successful, "
                    "participating_instances, lost_slaves, all_errors, acknowledged, acknowledged_at, "
                    "acknowledged_by, acknowledge_comment, last_detection_id) "
                    "VALUES (" + ", ".join("?" * 27) + ")")
        connection.executemany(recovery, [
            (1, f"{int(time.time()) - 2400}000000000:{token[:16]}", DEMO_DEAD_HOST, 3306, 0, _demo_time(-2395),
             int(time.time()) - 2300, _demo_time(-2391), DEMO_NODE, token, "db-billing-2", 3306, "", "DeadMaster",
             "db-billing-1:3306", "billing", 2, "db-billing-2:3306,db-billing-3:3306", 1,
             "db-billing-2:3306,db-billing-3:3306", "", "", 1, _demo_time(-1800), "alice",
             "disk replaced; old master kept out of rotation", 11),
            (2, f"{int(time.time()) - 20}000000000:{token[16:32]}", "db-ledger-b", 3306, 1, _demo_time(-20), 0,
             None, DEMO_NODE, token, None, None, None, "DeadCoMaster", "db-ledger-a:3306", "ledger", 1,
             "db-ledger-r2:3306", 0, "", "", "", 0, None, "", "", 12),
        ])
        connection.execute("COMMIT")
    finally:
        connection.close()


class _DemoHeartbeat(threading.Thread):
    """Keeps the demo orchestrator node alive and its instances checked, in the demo file only."""

    def __init__(self, path):
        super().__init__(name="orch_v2-demo-heartbeat", daemon=True)
        self.path = path
        self.stopped = threading.Event()

    def run(self):
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=5)
        try:
            while not self.stopped.wait(0.5):  # well inside the 2 s window of /status's available nodes
                connection.execute("UPDATE active_node SET last_seen_active = datetime('now')")
                connection.execute("UPDATE node_health SET last_seen_active = datetime('now')")
                connection.execute("UPDATE database_instance SET last_checked = datetime('now'), "
                                   "last_seen = CASE WHEN hostname = ? THEN last_seen ELSE datetime('now') END",
                                   (DEMO_DEAD_HOST,))
        except sqlite3.Error as error:
            sys.stderr.write(f"orch_v2: demo heartbeat stopped: {error}\n")
        finally:
            connection.close()


def _demo_config(path, listen=None):
    """The demo's configuration: orchestrator's defaults, DEMO_CONFIG and the demo's SQLite file."""
    values = _default_values()
    values.update(DEMO_CONFIG, SQLite3DataFile=path)
    _adjust_config(values)
    _apply_listen_option(values, listen)
    return Config(values)


# ======================================================================================== command line

def _argument_parser():
    parser = argparse.ArgumentParser(
        prog="orch_v2",
        description="Serve orchestrator's API v2 (read-only) from orchestrator's own backend database.",
        epilog="Without --config, orchestrator's own files are read, each on top of the previous: "
               + ", ".join(DEFAULT_CONFIG_FILES) + ". Stop with SIGTERM or Ctrl-C.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="orchestrator.conf.json to read (only this file)")
    source.add_argument("--demo", action="store_true",
                        help="serve a demo orchestrator state from a temporary SQLite file (nothing to install)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="address to listen on, instead of ListenAddress (and of ListenSocket)")
    parser.add_argument("--processes", type=int, default=1, metavar="P",
                        help="serving processes sharing the listening socket, each with its own threads and "
                             "backend connections: Python runs one thread at a time, so P processes use P cores "
                             "(default 1)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                        help=f"worker threads per process, each with at most one backend connection (default "
                             f"{DEFAULT_THREADS}; MySQLOrchestratorMaxPoolConnections caps it)")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT, metavar="SECONDS",
                        help="close a connection that has not sent a whole request (or stays idle) this long "
                             f"(default {DEFAULT_REQUEST_TIMEOUT:g})")
    parser.add_argument("--quiet", action="store_true", help="no access log lines")
    parser.add_argument("--version", action="version", version=f"orch_v2 {__version__}")
    return parser


def main(argv=None):
    """Command line: python -m orch_v2 [--config FILE | --demo] [--listen HOST:PORT]; returns the exit status."""
    arguments = _argument_parser().parse_args(argv)
    for option, value in (("--threads", arguments.threads), ("--processes", arguments.processes),
                          ("--request-timeout", arguments.request_timeout)):
        if not value > 0:
            sys.stderr.write(f"orch_v2: error: {option} must be positive, not {value:g}\n")
            return 2
    demo_directory = heartbeat = None
    try:
        if arguments.demo:
            demo_directory = tempfile.mkdtemp(prefix="orch_v2-demo-")
            demo_path = os.path.join(demo_directory, "orchestrator.db")
            create_demo_database(demo_path)
            config = _demo_config(demo_path, arguments.listen)
        else:
            config = load_config(arguments.config, arguments.listen)
        backend = open_backend(config)
        threads = arguments.threads
        if backend.kind == "MySQL" and config["MySQLOrchestratorMaxPoolConnections"] > 0:
            threads = min(threads, config["MySQLOrchestratorMaxPoolConnections"])  # one connection per thread
        server = ApiServer(config, backend, threads=threads, request_timeout=arguments.request_timeout,
                           access_log=not arguments.quiet)
    except ConfigError as error:
        sys.stderr.write(f"orch_v2: error: {error}\n")
        _remove_demo(demo_directory)
        return 2
    _announce(server, arguments)
    children = _fork_servers(server, arguments.processes - 1)
    if children is None:  # a forked serving process: it has served and stopped
        os._exit(0)

    def stop(number, frame):
        server.shutdown()
        for child in children:
            _signal_process(child, signal.SIGTERM)

    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, stop)
    if arguments.demo:
        heartbeat = _DemoHeartbeat(demo_path)
        heartbeat.start()
    try:
        server.serve_forever()
    finally:
        _wait_for_processes(children, SHUTDOWN_GRACE_SECONDS + 5)
        if heartbeat is not None:
            heartbeat.stopped.set()
            heartbeat.join(5)
        _remove_demo(demo_directory)
    server.log("orch_v2 stopped")
    return 0


def _announce(server, arguments):
    """The start-up lines: warnings, what is served where (never a password), and the demo's URLs."""
    config = server.config
    for warning in config.warnings:
        server.log(f"warning: {warning}")
    files = "demo" if arguments.demo else ", ".join(config.files) or "none found, orchestrator's defaults"
    server.log(f"orch_v2 {__version__} serving {server.url} (backend: {server.backend.describe()}; "
               f"prefix: {config.url_prefix or 'none'}; configuration: {files}; "
               f"{arguments.processes} x {server.threads} threads)")
    if arguments.demo:
        paths = DEMO_PATHS + (("/openapi.yaml",) if server.openapi else ())
        server.log("try:\n" + "\n".join(f"  curl -s {server.url}{path}" for path in paths))


def _fork_servers(server, count):
    """Fork count more processes serving on the same listening socket, before any thread starts.

    Returns their pids in this process, None in a forked process once it has served.
    """
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            server.parent_pid = os.getppid()
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signal_number, lambda number, frame: server.shutdown())
            try:
                server.serve_forever()
            except BaseException:
                server.log(f"serving process {os.getpid()} failed\n{traceback.format_exc().rstrip()}")
            return None
        children.append(pid)
    return children


def _signal_process(pid, signal_number):
    try:
        os.kill(pid, signal_number)
    except ProcessLookupError:
        pass


def _wait_for_processes(pids, timeout):
    """Reap the forked serving processes; kill any still running after timeout seconds."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    _signal_process(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
        except ChildProcessError:
            pass  # already reaped


def _remove_demo(directory):
    if directory:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


if __name__ == "__main__":
    sys.exit(main())
