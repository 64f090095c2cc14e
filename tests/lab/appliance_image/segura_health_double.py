# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TEST DOUBLE of Segura's health endpoint /flow/orbit/mntr, for the segura.backup lab containers.

Not Segura software. Answers GET /flow/orbit/mntr with the HTTP status written in
/etc/segura-lab/health_status (200 = active primary, 203 = active not primary, 403, 451, 503; see
SEGURA.md), on plain HTTP port 8080, so the cluster role can be asked the way Segura is asked.
"""
import http.server

STATUS_FILE = "/etc/segura-lab/health_status"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != "/flow/orbit/mntr":
            self.send_error(404)
            return
        with open(STATUS_FILE, encoding="ascii") as handle:
            status = int(handle.read().strip() or "200")
        body = b"segura.backup lab health test double\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # journald would fill up with polls
        pass


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
