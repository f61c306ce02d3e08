"""An S3 server for tests: moto's server mode on 127.0.0.1, and a fault-injecting proxy.

    with S3Server() as s3:                      # a fresh bucket, s3.bucket
        s3.env                                  # AWS_* variables for boto3 (fake credentials)
        s3.settings                             # the same as pipeline.storage settings
        with FaultyProxy(s3.endpoint, slowdown=0.2, reset=0.1) as proxy:
            proxy.settings(s3)                  # settings that go through the proxy
            proxy.counts                        # requests seen, by method

moto checks a conditional write's precondition and then writes, without a lock between the
two; real S3 does both atomically. The server here runs moto's application one request at a
time so that it gives S3's guarantee (and a lease test cannot pass by luck or fail by moto).
"""

import collections
import http.client
import random
import socket
import struct
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


class _OneAtATime:
    """WSGI middleware: one request inside the application at a time."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                getattr(result, "close", lambda: None)()


class _SerialMotoServer(ThreadedMotoServer):
    def _server_entry(self):
        app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


class S3Server:
    """moto on 127.0.0.1 (a free port, chosen by the OS) with one new bucket."""

    region = "us-east-1"

    def __init__(self):
        self._server = _SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.bucket = "test-" + uuid.uuid4().hex[:12]

    def start(self):
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self):
        self._server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def env(self):
        """Environment for a process that talks to this server through boto3's own variables."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": self.region, "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}

    @property
    def settings(self):
        return self.settings_for(self.endpoint)

    def settings_for(self, endpoint):
        return {"endpoint_url": endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                "region_name": self.region}

    def url(self, key=""):
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def client(self):
        """A plain boto3 client (no retries needed: this one does not go through the proxy)."""
        import boto3

        return boto3.session.Session().client("s3", **self.settings)


_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of `upstream` that, for each request, with these
    probabilities: answers 503 SlowDown (S3's XML body) without forwarding (`slowdown`); resets
    the connection without forwarding (`reset`); forwards it and then resets instead of
    answering, so the request took effect but its answer is lost (`reset_after`); forwards it and
    cuts the answer's body off halfway with a reset (`truncate`, for bodies of 2+ bytes).
    `seed` makes the draws repeatable; `counts` counts requests by method (and "faults")."""

    def __init__(self, upstream, slowdown=0.0, reset=0.0, reset_after=0.0, truncate=0.0, seed=0):
        self.upstream = upstream.split("://", 1)[1]
        self.rates = (slowdown, reset, reset_after, truncate)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def settings(self, s3):
        """Storage settings for `s3` (an S3Server) through this proxy."""
        return s3.settings_for(self.endpoint)

    def _draw(self):
        with self.lock:
            x = self.random.random()
        for fault, rate in zip(("slowdown", "reset", "reset_after", "truncate"), self.rates):
            if x < rate:
                return fault
            x -= rate
        return None

    @staticmethod
    def _read_body(handler):
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(handler.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += handler.rfile.read(size)
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    @staticmethod
    def _reset(handler):
        """Close the connection with a TCP RST (SO_LINGER 0) rather than a clean FIN."""
        try:
            handler.wfile.flush()
        except OSError:
            pass
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        handler.connection.close()

    def _handle(self, handler):
        body = self._read_body(handler)
        fault = self._draw()
        with self.lock:
            self.counts[handler.command] += 1
            if fault:
                self.counts["faults"] += 1
                self.counts[fault] += 1
        if fault == "slowdown":
            handler.send_response(503, "Slow Down")
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(_SLOWDOWN)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(_SLOWDOWN)
            return
        if fault == "reset":
            return self._reset(handler)
        headers = {name: value for name, value in handler.headers.items() if name.lower() not in _HOP_BY_HOP}
        if body or handler.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            status, reason, answer_headers = response.status, response.reason, response.getheaders()
        finally:
            connection.close()
        if fault == "reset_after":
            return self._reset(handler)
        handler.send_response(status, reason)
        has_length = False
        for name, value in answer_headers:
            if name.lower() in _HOP_BY_HOP:
                continue
            has_length |= name.lower() == "content-length"
            handler.send_header(name, value)
        if not has_length and handler.command != "HEAD":
            handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if fault == "truncate" and len(answer) >= 2:
            handler.wfile.write(answer[: len(answer) // 2])
            return self._reset(handler)
        handler.wfile.write(answer)
