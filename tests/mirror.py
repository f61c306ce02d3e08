"""A misbehaving HTTP mirror on 127.0.0.1 for download tests.

Each Mirror serves one directory in one mode and counts requests:
  ok        the files as they are
  404       every path answers 404
  corrupt   the right length of wrong bytes (a valid gzip start, then garbage)
  html      an HTML error page with status 200 (as some old mirrors do)
  500       every request answers 500 (transient: retried, then the next mirror)
  hang      accepts, then says nothing (the client's timeout must fire)
  truncate  announces the full length, sends half, closes
  redirect  302 to the same path on another mirror (`target`)
  chunked   the files with no Content-Length (chunked encoding), the first chunk a single byte
  short-length  announces fewer bytes than the file has (the client reads a cut gzip)
  endless   a gzip start, then zeros without end and with no Content-Length
  huge-length   announces a terabyte, then sends zeros like endless
  drip      announces the file's length, then sends it a byte a second (no read ever times out)
  ftp-redirect  302 to the same path on ftp://127.0.0.1 (this mirror's port)
  file-redirect 302 to file:///etc/passwd
"""

import http.server
import threading
import time
from pathlib import Path


SERVES_FILES = ("ok", "corrupt", "truncate", "chunked", "short-length", "drip")  # modes that 404 a missing file
DRIP_INTERVAL = 1.0  # seconds between the bytes of the drip mode


class Mirror:
    def __init__(self, directory, mode="ok", target=None):
        self.directory, self.mode, self.target = Path(directory), mode, target
        self.requests = []
        self.sent = 0  # bytes of endless bodies sent
        self._stop = threading.Event()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                mirror.respond(self)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def respond(self, handler):
        name = handler.path.lstrip("/")
        path = self.directory / name
        if self.mode == "404" or (self.mode in SERVES_FILES and not path.is_file()):
            return self._send(handler, 404, b"not found", "text/plain")
        if self.mode == "500":
            return self._send(handler, 500, b"server error", "text/plain")
        if self.mode == "html":
            return self._send(handler, 200, b"<!DOCTYPE html><html><body>Forbidden</body></html>", "text/html")
        if self.mode in ("redirect", "ftp-redirect", "file-redirect"):
            location = {"redirect": lambda: self.target.url + name,
                        "ftp-redirect": lambda: self.url.replace("http://", "ftp://") + name,
                        "file-redirect": lambda: "file:///etc/passwd"}[self.mode]()
            handler.send_response(302)
            handler.send_header("Location", location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        if self.mode in ("endless", "huge-length"):
            return self._send_endless(handler, announce=10 ** 12 if self.mode == "huge-length" else None)
        if self.mode == "hang":
            self._stop.wait(30)
            return None
        data = path.read_bytes()
        if self.mode == "corrupt":
            data = data[:10] + bytes((b * 7 + 3) % 256 for b in data[10:])
        if self.mode == "truncate":
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[:len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return None
        if self.mode == "chunked":
            handler.protocol_version = "HTTP/1.1"  # chunked encoding is HTTP/1.1
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for piece in (data[:1], data[1:]):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
            handler.close_connection = True
            return None
        if self.mode == "drip":
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            try:
                for byte in data:
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    if self._stop.wait(DRIP_INTERVAL):
                        break
            except OSError:  # the client gave up
                pass
            return None
        if self.mode == "short-length":
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data) // 2))
            handler.end_headers()
            handler.wfile.write(data)
            handler.close_connection = True
            return None
        return self._send(handler, 200, data, "application/gzip")

    def _send_endless(self, handler, announce):
        """The gzip magic, then zeros until the client hangs up or the mirror closes."""
        handler.send_response(200)
        if announce:
            handler.send_header("Content-Length", str(announce))
        handler.end_headers()
        handler.close_connection = True
        zeros = bytes(1 << 16)
        try:
            handler.wfile.write(b"\x1f\x8b\x08\x00" + zeros)
            while not self._stop.is_set():
                handler.wfile.write(zeros)
                self.sent += len(zeros)
        except OSError:  # the client cut it off
            pass

    @staticmethod
    def _send(handler, status, body, content_type):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
