#!/usr/bin/env python3
"""A fake Hugging Face Hub for the download tests (python3 standard library only).

Serves the files of one local model folder as repository REPO, on 127.0.0.1 and
a free port, with the endpoints and headers the download uses:

  GET  /api/models/REPO/revision/REV        {"sha": COMMIT, "siblings": [{"rfilename": ...}]}
  HEAD/GET /REPO/resolve/REV/FILE            small files: 200, ETag = git blob sha1
                                             *.safetensors (LFS): 302 to /cdn/SHA256 with
                                             X-Linked-Etag = sha256, X-Linked-Size
  GET  /cdn/SHA256                           the bytes, with Range support, on a second
                                             port (another origin, as the Hub's CDN)

REV is "main" or the commit. Every request is appended to --log as one JSON line
(method, path, range, authorization) so that tests can count and inspect them.
The port is written to --port-file once listening. The server exits by itself
after --lifetime seconds, or as soon as the process that started it is gone.

Faults for tests: --token T (401 without "Authorization: Bearer T"; with --gated
the listing stays public and file requests answer X-Error-Code: GatedRepo),
--drop-first FILE (the first download of FILE is cut off half-way;
--drop-always FILE: every one), --corrupt FILE (FILE's bytes are served with
one byte changed), --no-api (the listing answers 404, as a mirror without the
API would).
"""

import argparse
import hashlib
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

COMMIT = hashlib.sha1(b"cur4llm fake hub commit").hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--token")
    ap.add_argument("--gated", action="store_true")
    ap.add_argument("--drop-first")
    ap.add_argument("--drop-always")
    ap.add_argument("--corrupt")
    ap.add_argument("--no-api", action="store_true")
    ap.add_argument("--lifetime", type=float, default=120.0)
    args = ap.parse_args()

    files = {}
    for name in sorted(os.listdir(args.model)):
        path = os.path.join(args.model, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            lfs = name.endswith(".safetensors")
            files[name] = {
                "data": data,
                "lfs": lfs,
                "sha256": hashlib.sha256(data).hexdigest(),
                "git_sha1": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
            }
    by_sha = {f["sha256"]: name for name, f in files.items() if f["lfs"]}
    dropped = set()
    log_lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def record(self):
            entry = {
                "method": self.command,
                "path": self.path,
                "range": self.headers.get("Range"),
                "authorization": self.headers.get("Authorization"),
            }
            with log_lock, open(args.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

        def reply(self, status, headers=None, body=b""):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, status, code=None):
            headers = {"X-Error-Code": code, "X-Error-Message": code} if code else {}
            self.reply(status, headers, b'{"error": "fake hub"}')

        def authorized(self):
            if not args.token or self.headers.get("Authorization") == "Bearer " + args.token:
                return True
            self.error(401, "GatedRepo" if args.gated else None)
            return False

        def do_HEAD(self):
            self.handle_any()

        def do_GET(self):
            self.handle_any()

        def handle_any(self):
            self.record()
            path = urllib.parse.unquote(self.path.split("?")[0])
            api = "/api/models/"
            if path.startswith(api):
                rest = path[len(api):]
                repo, sep, rev = rest.partition("/revision/")
                if args.no_api or not sep:
                    return self.error(404)
                if repo != args.repo:
                    return self.error(404, "RepoNotFound")
                if not args.gated and not self.authorized():  # a gated model's listing is public
                    return
                if rev not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound")
                body = json.dumps({"id": repo, "sha": COMMIT,
                                   "siblings": [{"rfilename": n} for n in files]}).encode()
                return self.reply(200, {"Content-Type": "application/json"}, body)
            if path.startswith("/cdn/"):
                return self.serve_blob(path[len("/cdn/"):])
            marker = "/resolve/"
            if marker in path:
                repo, _, rest = path[1:].partition(marker)
                rev, _, name = rest.partition("/")
                if repo != args.repo:
                    return self.error(404, "RepoNotFound")
                if not self.authorized():
                    return
                if rev not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound")
                f = files.get(name)
                if f is None:
                    return self.error(404, "EntryNotFound")
                if f["lfs"]:
                    port = cdn.server_address[1]
                    return self.reply(302, {
                        "Location": "http://127.0.0.1:%d/cdn/%s" % (port, f["sha256"]),
                        "X-Repo-Commit": COMMIT,
                        "X-Linked-Etag": '"%s"' % f["sha256"],
                        "X-Linked-Size": str(len(f["data"])),
                        "ETag": '"%s"' % f["git_sha1"],
                    })
                return self.reply(200, {"X-Repo-Commit": COMMIT, "ETag": '"%s"' % f["git_sha1"]}, f["data"])
            return self.error(404)

        def serve_blob(self, sha):
            name = by_sha.get(sha)
            if name is None:
                return self.error(404)
            data = files[name]["data"]
            if name == args.corrupt:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes="):-1])
                if start >= len(data):
                    return self.reply(416, {"Content-Range": "bytes */%d" % len(data)})
            body = data[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if name == args.drop_always or (name == args.drop_first and name not in dropped):
                dropped.add(name)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # The LFS bytes come from another port, as the Hub's come from a CDN.
    cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    cdn.daemon_threads = True
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)

    parent = os.getppid()
    deadline = time.monotonic() + args.lifetime

    def watchdog():
        while time.monotonic() < deadline and os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
