"""TEST DOUBLES of proprietary Segura parts that cannot run here (and only of those)."""

import http.server
import threading
from contextlib import contextmanager


class SeguraHealthDouble(http.server.BaseHTTPRequestHandler):
    """Segura's /flow/orbit/mntr health endpoint: answers the status code that ends the path, so
    GET /flow/orbit/mntr/203 says "active, not the primary" (SEGURA.md lists the codes)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(int(self.path.rsplit("/", 1)[-1]))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def serve_segura_health(wrap_socket=None):
    """A SeguraHealthDouble on 127.0.0.1 (a free port) for the duration of the block; yields the server.
    ``wrap_socket`` (e.g. an SSLContext's, with server_side) serves it over TLS."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SeguraHealthDouble)
    if wrap_socket is not None:
        server.socket = wrap_socket(server.socket)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()  # returns at once if a test already stopped it
        server.server_close()
        thread.join(timeout=10)
