#!/usr/bin/env python3
"""floe dev stack: a Confluent-compatible Schema Registry stand-in (standard library only).

A TEST STAND-IN, NOT A REGISTRY FOR PRODUCTION: no compatibility checks (the level is
stored, never enforced), no deletes, no contexts, no clustering, one JSON state file.

It answers the REST calls that Confluent's 7.0.16 Java client makes for
io.confluent.connect.avro.AvroConverter (auto.register.schemas=true) and for a consumer,
with Confluent's JSON shapes, content type application/vnd.schemaregistry.v1+json and
Confluent's error bodies ({"error_code": 40403, "message": "Schema 7 not found"}):

  GET  /                                   {}
  POST /subjects/{s}/versions              register: {"id": N}; the same schema (canonical
                                           JSON: keys sorted, no whitespace) gets the same
                                           global id under every subject; ids start at 1
  POST /subjects/{s}                       lookup: {"subject","version","id","schema"} or
                                           40401 (no subject) / 40403 (schema not under it)
  GET  /schemas/ids/{id}                   {"schema": "..."} ("schemaType" only when not
                                           AVRO, "maxId" with ?fetchMaxId=true); 40403
  GET  /schemas/ids/{id}/versions          [{"subject": s, "version": v}, ...]
  GET  /schemas/ids/{id}/subjects          [s, ...]
  GET  /schemas/types                      ["JSON", "PROTOBUF", "AVRO"]
  GET  /subjects                           [s, ...]
  GET  /subjects/{s}/versions              [1, 2, ...]; 40401
  GET  /subjects/{s}/versions/{v|latest}   {"subject","version","id","schema"}; 40401/40402/42202
  GET  /subjects/{s}/versions/{v}/schema   the schema itself
  GET  /config                             {"compatibilityLevel": "BACKWARD"}
  PUT  /config                             {"compatibility": "FULL"} -> the same
  GET  /config/{s}                         the subject's level; 40408 when it has none,
                                           unless ?defaultToGlobal=true (as Confluent)
  PUT  /config/{s}                         {"compatibility": "..."} -> the same
  GET  /mode, GET /mode/{s}                {"mode": "READWRITE"}
  anything else                            404 {"error_code": 404, "message": "HTTP 404 Not Found"}

Query parameters the client adds (?normalize=, ?fetchMaxId=, ?subject=, ?deleted=) are
accepted and, except the ones named above, ignored.

Options: --host (127.0.0.1), --port (0: any free port), --state FILE (every schema, subject
version and config is written there atomically on every change and loaded at start, so a
stopped and restarted registry still knows every id, as a real one does from its _schemas
topic), --basic-auth USER:PASSWORD (every request without that Authorization: Basic header
gets 401 {"error_code": 401, "message": "Unauthorized"}), --tls-cert/--tls-key (HTTPS).

Logs "listening on URL" once, then one line per request (method, path, status) to stderr.
SIGTERM and SIGINT stop it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
          "FULL", "FULL_TRANSITIVE")
SCHEMA_TYPES = ("AVRO", "JSON", "PROTOBUF")
DEFAULT_LEVEL = "BACKWARD"


def log(msg: str) -> None:
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    sys.stderr.write(f"{stamp} registry: {msg}\n")
    sys.stderr.flush()


class ApiError(Exception):
    """A Confluent error response: HTTP status, error_code, message."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def not_found() -> ApiError:
    return ApiError(404, 404, "HTTP 404 Not Found")


def subject_not_found(subject: str) -> ApiError:
    return ApiError(404, 40401, f"Subject '{subject}' not found.")


def canonical(schema_type: str, schema: str, references: list) -> str:
    """The identity of a schema: its canonical JSON (Avro, JSON) or its text (Protobuf),
    with its type and references."""
    if schema_type in ("AVRO", "JSON"):
        try:
            text = json.dumps(json.loads(schema), sort_keys=True, separators=(",", ":"))
        except ValueError as e:
            raise ApiError(422, 42201, f"Invalid schema: {e}") from None
    else:
        text = schema
    refs = json.dumps(references or [], sort_keys=True, separators=(",", ":"))
    return f"{schema_type}\n{refs}\n{text}"


class Registry:
    """Schemas (global ids), subjects (versions -> ids) and compatibility levels, in memory
    and in the state file. Every method holds the lock."""

    def __init__(self, state_path: str | None):
        self.lock = threading.Lock()
        self.state_path = state_path
        self.schemas: dict[int, dict] = {}  # id -> {"schema", "schemaType", "references"}
        self.by_canonical: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}  # subject -> ids; version = index + 1
        self.config: dict[str, str] = {}  # "" = global
        if state_path and os.path.exists(state_path):
            self._load()

    # ------------------------------------------------------------ state file

    def _load(self) -> None:
        with open(self.state_path, encoding="utf-8") as f:
            state = json.load(f)
        for s in state.get("schemas", []):
            entry = {"schema": s["schema"], "schemaType": s.get("schemaType", "AVRO"),
                     "references": s.get("references", [])}
            self.schemas[int(s["id"])] = entry
            self.by_canonical[canonical(entry["schemaType"], entry["schema"],
                                        entry["references"])] = int(s["id"])
        self.subjects = {k: [int(i) for i in v] for k, v in state.get("subjects", {}).items()}
        self.config = dict(state.get("config", {}))

    def _save(self) -> None:
        if not self.state_path:
            return
        state = {
            "schemas": [{"id": i, **e} for i, e in sorted(self.schemas.items())],
            "subjects": self.subjects,
            "config": self.config,
        }
        directory = os.path.dirname(os.path.abspath(self.state_path))
        fd, tmp = tempfile.mkstemp(prefix=".registry-state.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # ------------------------------------------------------------ operations

    def register(self, subject: str, schema: str, schema_type: str, references: list) -> int:
        key = canonical(schema_type, schema, references)
        with self.lock:
            sid = self.by_canonical.get(key)
            changed = False
            if sid is None:
                sid = max(self.schemas, default=0) + 1
                self.schemas[sid] = {"schema": schema, "schemaType": schema_type,
                                     "references": references or []}
                self.by_canonical[key] = sid
                changed = True
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
                changed = True
            if changed:
                self._save()
            return sid

    def lookup(self, subject: str, schema: str, schema_type: str, references: list) -> dict:
        key = canonical(schema_type, schema, references)
        with self.lock:
            if subject not in self.subjects:
                raise subject_not_found(subject)
            sid = self.by_canonical.get(key)
            versions = self.subjects[subject]
            if sid is None or sid not in versions:
                raise ApiError(404, 40403, "Schema not found")
            return self._version_body(subject, versions.index(sid) + 1, sid)

    def schema_by_id(self, sid: int) -> dict:
        with self.lock:
            if sid not in self.schemas:
                raise ApiError(404, 40403, f"Schema {sid} not found")
            return dict(self.schemas[sid])

    def max_id(self) -> int:
        with self.lock:
            return max(self.schemas, default=0)

    def id_versions(self, sid: int) -> list[dict]:
        with self.lock:
            if sid not in self.schemas:
                raise ApiError(404, 40403, f"Schema {sid} not found")
            return [{"subject": s, "version": v.index(sid) + 1}
                    for s, v in sorted(self.subjects.items()) if sid in v]

    def subject_names(self) -> list[str]:
        with self.lock:
            return sorted(self.subjects)

    def versions(self, subject: str) -> list[int]:
        with self.lock:
            if subject not in self.subjects:
                raise subject_not_found(subject)
            return list(range(1, len(self.subjects[subject]) + 1))

    def version(self, subject: str, version: str) -> dict:
        with self.lock:
            if subject not in self.subjects:
                raise subject_not_found(subject)
            ids = self.subjects[subject]
            if version in ("latest", "-1"):
                n = len(ids)
            else:
                try:
                    n = int(version)
                except ValueError:
                    n = 0
                if not 1 <= n <= 2**31 - 1:
                    raise ApiError(422, 42202,
                                   f"The specified version '{version}' is not a valid version id. "
                                   "Allowed values are between [1, 2^31-1] and the string \"latest\"")
            if n > len(ids) or n < 1:
                raise ApiError(404, 40402, f"Version {version} not found.")
            return self._version_body(subject, n, ids[n - 1])

    def _version_body(self, subject: str, version: int, sid: int) -> dict:
        return {"subject": subject, "version": version, "id": sid,
                **schema_body(self.schemas[sid])}

    def get_config(self, subject: str | None, default_to_global: bool) -> str:
        with self.lock:
            if subject is None:
                return self.config.get("", DEFAULT_LEVEL)
            if subject in self.config:
                return self.config[subject]
            if default_to_global:
                return self.config.get("", DEFAULT_LEVEL)
            raise ApiError(404, 40408, f"Subject '{subject}' does not have subject-level "
                                       "compatibility configured")

    def set_config(self, subject: str | None, level: str) -> None:
        with self.lock:
            self.config["" if subject is None else subject] = level
            self._save()


def schema_body(entry: dict) -> dict:
    body = {}
    if entry["schemaType"] != "AVRO":
        body["schemaType"] = entry["schemaType"]
    if entry["references"]:
        body["references"] = entry["references"]
    body["schema"] = entry["schema"]
    return body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Java client expects
    server_version = "floe-dev-registry"
    sys_version = ""
    registry: Registry
    auth: str | None  # the expected "user:password", or None

    # ------------------------------------------------------------ plumbing

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's name)
        log(format % args)

    def log_request(self, code="-", size="-"):
        path = getattr(self, "path", "?")
        log(f"{self.command} {path} {int(code) if str(code).isdigit() else code}")

    def send(self, status: int, body, raw: bool = False) -> None:
        data = (body if raw else json.dumps(body)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="SchemaRegistry"')
        self.end_headers()
        self.wfile.write(data)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def json_body(self) -> dict:
        raw = self.read_body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise ApiError(400, 400, f"Unexpected JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(422, 422, "Unrecognized request body: expected a JSON object")
        return body

    def authorised(self) -> bool:
        if self.auth is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8") == self.auth
        except (binascii.Error, UnicodeDecodeError):
            return False

    def handle_any(self) -> None:
        try:
            if not self.authorised():
                self.read_body()
                self.send(401, {"error_code": 401, "message": "Unauthorized"})
                return
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            status, body, raw = self.route(self.command, parts, query)
            self.send(status, body, raw)
        except ApiError as e:
            self.send(e.status, {"error_code": e.code, "message": e.message})
        except (ConnectionError, ssl.SSLError):
            raise
        except Exception as e:  # noqa: BLE001 (a stand-in answers 500 like Confluent and goes on)
            log(f"internal error: {type(e).__name__}: {e}")
            self.send(500, {"error_code": 50001, "message": f"Error in the backend data store: {e}"})

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

    # ------------------------------------------------------------ routes

    def schema_request(self) -> tuple[str, str, list]:
        body = self.json_body()
        schema = body.get("schema")
        if not isinstance(schema, str) or not schema:
            raise ApiError(422, 42201, "Invalid schema: empty or missing \"schema\"")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type not in SCHEMA_TYPES:
            raise ApiError(422, 42201, f"Invalid schema type {schema_type}")
        references = body.get("references") or []
        return schema, schema_type, references

    def route(self, method: str, p: list[str], q: dict) -> tuple[int, object, bool]:
        reg = self.registry
        if method == "GET" and not p:
            return 200, {}, False
        if p and p[0] == "subjects":
            if method == "GET" and len(p) == 1:
                return 200, reg.subject_names(), False
            if len(p) == 2 and method == "POST":
                schema, schema_type, refs = self.schema_request()
                return 200, reg.lookup(p[1], schema, schema_type, refs), False
            if len(p) == 3 and p[2] == "versions":
                if method == "POST":
                    schema, schema_type, refs = self.schema_request()
                    return 200, {"id": reg.register(p[1], schema, schema_type, refs)}, False
                if method == "GET":
                    return 200, reg.versions(p[1]), False
            if len(p) == 4 and p[2] == "versions" and method == "GET":
                return 200, reg.version(p[1], p[3]), False
            if len(p) == 5 and p[2] == "versions" and p[4] == "schema" and method == "GET":
                return 200, reg.version(p[1], p[3])["schema"], True
        if p and p[0] == "schemas" and method == "GET":
            if p[1:] == ["types"]:
                return 200, ["JSON", "PROTOBUF", "AVRO"], False
            if len(p) >= 3 and p[1] == "ids":
                try:
                    sid = int(p[2])
                except ValueError:
                    raise not_found() from None
                if len(p) == 3:
                    body = schema_body(reg.schema_by_id(sid))
                    if q.get("fetchMaxId", "false").lower() == "true":
                        body["maxId"] = reg.max_id()
                    return 200, body, False
                if p[3:] == ["versions"]:
                    return 200, reg.id_versions(sid), False
                if p[3:] == ["subjects"]:
                    return 200, [v["subject"] for v in reg.id_versions(sid)], False
                if p[3:] == ["schema"]:
                    return 200, reg.schema_by_id(sid)["schema"], True
        if p and p[0] == "config" and len(p) <= 2:
            subject = p[1] if len(p) == 2 else None
            if method == "GET":
                default = q.get("defaultToGlobal", "false").lower() == "true"
                return 200, {"compatibilityLevel": reg.get_config(subject, default)}, False
            if method == "PUT":
                level = str(self.json_body().get("compatibility", "")).upper()
                if level not in LEVELS:
                    raise ApiError(422, 42203, "Invalid compatibility level. Valid values are none, "
                                   "backward, forward, full, backward_transitive, "
                                   "forward_transitive, and full_transitive")
                reg.set_config(subject, level)
                return 200, {"compatibility": level}, False
        if p and p[0] == "mode" and len(p) <= 2 and method == "GET":
            return 200, {"mode": "READWRITE"}, False
        raise not_found()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the request's own thread, not in the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log(f"TLS handshake with {client_address[0]} failed: {e}")
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, ssl.SSLError, TimeoutError)):
            log(f"connection from {client_address[0]}:{client_address[1]} lost: {error}")
        else:
            super().handle_error(request, client_address)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Confluent-compatible Schema Registry stand-in "
                                             "for tests (not for production)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081, help="0: any free port (see the log)")
    ap.add_argument("--state", help="JSON file holding every schema, kept across restarts")
    ap.add_argument("--basic-auth", metavar="USER:PASSWORD",
                    help="require HTTP basic auth with these credentials")
    ap.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = ap.parse_args(argv)
    if args.basic_auth is not None and ":" not in args.basic_auth:
        ap.error("--basic-auth must be USER:PASSWORD")
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    registry = Registry(args.state)
    handler = type("BoundHandler", (Handler,), {"registry": registry, "auth": args.basic_auth})
    server = Server((args.host, args.port), handler)
    scheme = "http"
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.tls = ctx
        scheme = "https"

    def stop(signum, _frame):
        log(f"{signal.Signals(signum).name}: stopping")
        # shutdown() waits for serve_forever() to return: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log(f"listening on {scheme}://{host}:{port} ({len(registry.schemas)} schemas, "
        f"{len(registry.subjects)} subjects, state {args.state or 'in memory'}"
        f"{', basic auth' if args.basic_auth else ''})")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
