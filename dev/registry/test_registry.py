#!/usr/bin/env python3
"""Self-test of dev/registry/registry.py: python3 dev/registry/test_registry.py [-v]

Starts the registry in a subprocess on a free port (--port 0, the port read from its log)
and checks registration, id reuse, lookup, GET by id, the error bodies, persistence across a
restart, basic auth and HTTPS (openssl, installed by dev/install.sh, makes the certificate). Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY = Path(__file__).resolve().parent / "registry.py"
CT = "application/vnd.schemaregistry.v1+json"

RECORD_V1 = json.dumps({"type": "record", "name": "Value", "namespace": "t.public.a",
                        "fields": [{"name": "id", "type": "int"}]})
# The same schema as RECORD_V1, keys in another order and with whitespace.
RECORD_V1_REORDERED = '{ "fields": [{"type": "int", "name": "id"}], "namespace": "t.public.a",\n "name": "Value", "type": "record" }'
RECORD_V2 = json.dumps({"type": "record", "name": "Value", "namespace": "t.public.a",
                        "fields": [{"name": "id", "type": "int"},
                                   {"name": "extra", "type": ["null", "string"], "default": None}]})


class Registry:
    """One registry process; stop() sends SIGTERM and expects a clean exit."""

    def __init__(self, *args: str, scheme: str = "http"):
        self.proc = subprocess.Popen([sys.executable, str(REGISTRY), "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"no 'listening on' line: {line!r}")
        self.url = m.group(1)
        assert self.url.startswith(scheme + "://"), self.url
        # Drain the log while it runs (a full pipe would block the server).
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        self.proc.stderr.close()
        return rc


def call(url: str, method: str = "GET", body=None, auth: str | None = None,
         context: ssl.SSLContext | None = None):
    """(status, content type, parsed JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", CT)
    if data is not None:
        req.add_header("Content-Type", CT)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.headers.get("Content-Type"), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), json.loads(e.read())


class RegistryTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="registry-test-")
        self.state = os.path.join(self.dir, "state.json")
        self.running: list[Registry] = []

    def tearDown(self):
        for r in self.running:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
            r.reader.join(timeout=5)
            r.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, *args: str, **kw) -> Registry:
        r = Registry(*args, **kw)
        self.running.append(r)
        return r

    def test_register_reuse_lookup_get(self):
        r = self.start("--state", self.state)
        u = r.url
        self.assertEqual(call(u + "/"), (200, CT, {}))
        self.assertEqual(call(u + "/subjects"), (200, CT, []))
        # Registration: ids start at 1; the same schema (any key order) keeps its id under
        # every subject; a new schema gets the next id.
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions?normalize=false", "POST",
                              {"schema": RECORD_V1}), (200, CT, {"id": 1}))
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions", "POST",
                              {"schema": RECORD_V1_REORDERED}), (200, CT, {"id": 1}))
        self.assertEqual(call(u + "/subjects/other-value/versions", "POST",
                              {"schema": RECORD_V1, "references": []}), (200, CT, {"id": 1}))
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions", "POST",
                              {"schema": RECORD_V2}), (200, CT, {"id": 2}))
        self.assertEqual(call(u + "/subjects/t.public.a-key/versions", "POST",
                              {"schema": '"int"'}), (200, CT, {"id": 3}))
        # Lookup.
        self.assertEqual(call(u + "/subjects/t.public.a-value?normalize=false", "POST",
                              {"schema": RECORD_V1_REORDERED}),
                         (200, CT, {"subject": "t.public.a-value", "version": 1, "id": 1,
                                    "schema": RECORD_V1}))
        self.assertEqual(call(u + "/subjects/t.public.a-key", "POST", {"schema": RECORD_V1}),
                         (404, CT, {"error_code": 40403, "message": "Schema not found"}))
        self.assertEqual(call(u + "/subjects/nope", "POST", {"schema": RECORD_V1}),
                         (404, CT, {"error_code": 40401, "message": "Subject 'nope' not found."}))
        # By id.
        self.assertEqual(call(u + "/schemas/ids/2?fetchMaxId=false&subject=t.public.a-value"),
                         (200, CT, {"schema": RECORD_V2}))
        self.assertEqual(call(u + "/schemas/ids/2?fetchMaxId=true"),
                         (200, CT, {"schema": RECORD_V2, "maxId": 3}))
        self.assertEqual(call(u + "/schemas/ids/99"),
                         (404, CT, {"error_code": 40403, "message": "Schema 99 not found"}))
        self.assertEqual(call(u + "/schemas/ids/1/versions"),
                         (200, CT, [{"subject": "other-value", "version": 1},
                                    {"subject": "t.public.a-value", "version": 1}]))
        # Subjects and versions.
        self.assertEqual(call(u + "/subjects"),
                         (200, CT, ["other-value", "t.public.a-key", "t.public.a-value"]))
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions"), (200, CT, [1, 2]))
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions/latest"),
                         (200, CT, {"subject": "t.public.a-value", "version": 2, "id": 2,
                                    "schema": RECORD_V2}))
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions/1")[2]["id"], 1)
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions/3")[:2], (404, CT))
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions/3")[2]["error_code"], 40402)
        self.assertEqual(call(u + "/subjects/t.public.a-value/versions/x")[2]["error_code"], 42202)
        self.assertEqual(call(u + "/subjects/nope/versions")[2]["error_code"], 40401)
        # A non-Avro schema carries its type.
        self.assertEqual(call(u + "/subjects/j-value/versions", "POST",
                              {"schema": '{"type":"object"}', "schemaType": "JSON"}),
                         (200, CT, {"id": 4}))
        self.assertEqual(call(u + "/schemas/ids/4"),
                         (200, CT, {"schemaType": "JSON", "schema": '{"type":"object"}'}))
        # Invalid schema, unknown paths.
        self.assertEqual(call(u + "/subjects/bad/versions", "POST", {"schema": "{not json"})[2]
                         ["error_code"], 42201)
        self.assertEqual(call(u + "/nope"),
                         (404, CT, {"error_code": 404, "message": "HTTP 404 Not Found"}))
        self.assertEqual(call(u + "/schemas/ids/1", "DELETE")[2]["error_code"], 404)
        # Config: stored, not enforced.
        self.assertEqual(call(u + "/config"), (200, CT, {"compatibilityLevel": "BACKWARD"}))
        self.assertEqual(call(u + "/config/t.public.a-value")[2]["error_code"], 40408)
        self.assertEqual(call(u + "/config/t.public.a-value?defaultToGlobal=true"),
                         (200, CT, {"compatibilityLevel": "BACKWARD"}))
        self.assertEqual(call(u + "/config/t.public.a-value", "PUT", {"compatibility": "none"}),
                         (200, CT, {"compatibility": "NONE"}))
        self.assertEqual(call(u + "/config/t.public.a-value"),
                         (200, CT, {"compatibilityLevel": "NONE"}))
        self.assertEqual(call(u + "/config", "PUT", {"compatibility": "bogus"})[2]["error_code"],
                         42203)
        self.assertEqual(r.stop(), 0)
        self.assertTrue(any(re.search(r"POST /subjects/t.public.a-value/versions\S* 200$", l)
                            for l in r.log), r.log)
        self.assertTrue(any(l.endswith("GET /schemas/ids/99 404") for l in r.log), r.log)

    def test_state_survives_a_restart(self):
        r = self.start("--state", self.state)
        self.assertEqual(call(r.url + "/subjects/s-value/versions", "POST",
                              {"schema": RECORD_V1})[2], {"id": 1})
        self.assertEqual(call(r.url + "/subjects/s-value/versions", "POST",
                              {"schema": RECORD_V2})[2], {"id": 2})
        self.assertEqual(r.stop(), 0)
        self.assertTrue(os.path.exists(self.state))
        self.assertEqual([f for f in os.listdir(self.dir) if f != "state.json"], [],
                         "no temporary file left")
        r = self.start("--state", self.state)
        self.assertEqual(call(r.url + "/schemas/ids/2")[2], {"schema": RECORD_V2})
        self.assertEqual(call(r.url + "/subjects/s-value/versions")[2], [1, 2])
        # Known schema keeps its id, the next new one continues the sequence.
        self.assertEqual(call(r.url + "/subjects/s-value/versions", "POST",
                              {"schema": RECORD_V1_REORDERED})[2], {"id": 1})
        self.assertEqual(call(r.url + "/subjects/s-value/versions", "POST",
                              {"schema": '"string"'})[2], {"id": 3})
        self.assertEqual(r.stop(), 0)

    def test_basic_auth(self):
        r = self.start("--basic-auth", "floe:s3cret")
        unauthorised = (401, CT, {"error_code": 401, "message": "Unauthorized"})
        self.assertEqual(call(r.url + "/"), unauthorised)
        self.assertEqual(call(r.url + "/schemas/ids/1", auth="floe:wrong"), unauthorised)
        self.assertEqual(call(r.url + "/subjects/s/versions", "POST", {"schema": RECORD_V1}),
                         unauthorised)
        self.assertEqual(call(r.url + "/subjects/s/versions", "POST", {"schema": RECORD_V1},
                              auth="floe:s3cret"), (200, CT, {"id": 1}))
        self.assertEqual(call(r.url + "/schemas/ids/1", auth="floe:s3cret")[0], 200)
        self.assertEqual(r.stop(), 0)

    def test_tls(self):
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:FALSE",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        r = self.start("--tls-cert", cert, "--tls-key", key, scheme="https")
        ctx = ssl.create_default_context(cafile=cert)
        self.assertEqual(call(r.url + "/subjects/s/versions", "POST", {"schema": RECORD_V1},
                              context=ctx), (200, CT, {"id": 1}))
        self.assertEqual(call(r.url + "/schemas/ids/1", context=ctx)[2], {"schema": RECORD_V1})
        self.assertEqual(r.stop(), 0)


if __name__ == "__main__":
    unittest.main()
