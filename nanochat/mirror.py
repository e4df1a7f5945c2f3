"""A local stand-in for the download hosts: serves a data folder over HTTP on 127.0.0.1.

The course downloads from Hugging Face (HF_ENDPOINT), the eval-bundle host and the
tiktoken host. Offline (or in tests and CI) this server answers the same URL paths from a
local folder laid out like the course's data pack:

    pretrain/shard_00000.parquet ...      (the last shard is validation)
    eval_bundle/{core.yaml, eval_meta_data.csv, eval_data/...}
    tiktoken_cache/INDEX.tsv + files named by sha1(url)
    tasks/..., chat/...                   (served as they are under /files/)

    python -m nanochat.mirror --data ../shared/data          # prints the exports to use
"""
import argparse
import http.server
import io
import os
import re
import threading
import zipfile
from urllib.parse import urlparse

from nanochat import hub

SHARD_PATH = re.compile(r"^/datasets/" + re.escape(hub.PRETRAIN_REPO) + r"/resolve/main/(shard_\d{5}\.parquet)$")


def tiktoken_routes(data_dir: str) -> dict[str, str]:
    """Map each tiktoken URL path (e.g. /encodings/cl100k_base.tiktoken) to its cached file."""
    index = os.path.join(data_dir, "tiktoken_cache", "INDEX.tsv")
    routes = {}
    if os.path.exists(index):
        for line in open(index).read().splitlines()[1:]:
            key, url = line.split("\t")[:2]
            routes[urlparse(url).path] = os.path.join(data_dir, "tiktoken_cache", key)
    return routes


def zip_folder(folder: str) -> bytes:
    """The eval bundle is published as a zip of one folder named eval_bundle/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                path = os.path.join(root, name)
                zf.write(path, os.path.join("eval_bundle", os.path.relpath(path, folder)))
    return buf.getvalue()


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """GET (with Range) and HEAD for the course's URL layout; 404 for anything else."""
    data_dir: str = "."
    routes: dict = {}
    eval_zip: bytes | None = None
    eval_zip_lock = threading.Lock()

    def log_message(self, *args):  # keep test output quiet
        pass

    def resolve(self, path: str):
        """Return bytes or a file path for a URL path, or None."""
        if m := SHARD_PATH.match(path):
            return os.path.join(self.data_dir, "pretrain", m.group(1))
        if path == "/" + hub.EVAL_BUNDLE_NAME:
            with self.eval_zip_lock:
                if MirrorHandler.eval_zip is None:
                    MirrorHandler.eval_zip = zip_folder(os.path.join(self.data_dir, "eval_bundle"))
            return MirrorHandler.eval_zip
        if path in self.routes:
            return self.routes[path]
        if path.startswith("/files/"):
            rel = os.path.normpath(path[len("/files/"):])
            if not rel.startswith(".."):
                return os.path.join(self.data_dir, rel)
        return None

    def send_payload(self, head_only: bool):
        target = self.resolve(urlparse(self.path).path)
        if isinstance(target, str):
            target = open(target, "rb").read() if os.path.isfile(target) else None
        if target is None:
            self.send_error(404, "not in the mirror")
            return
        start, status = 0, 200
        if m := re.match(r"bytes=(\d+)-$", self.headers.get("Range", "")):
            start, status = min(int(m.group(1)), len(target)), 206
        body = target[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(target) - 1}/{len(target)}")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self):
        self.send_payload(head_only=False)

    def do_HEAD(self):
        self.send_payload(head_only=True)


def start_mirror(data_dir: str, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, dict[str, str]]:
    """Serve data_dir on 127.0.0.1 in a daemon thread; return the server and the env to set."""
    data_dir = os.path.abspath(data_dir)
    if not os.path.isdir(os.path.join(data_dir, "pretrain")):
        raise FileNotFoundError(f"{data_dir} does not look like the course data pack (no pretrain/ inside)")
    handler = type("Handler", (MirrorHandler,), {"data_dir": data_dir, "routes": tiktoken_routes(data_dir), "eval_zip": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env = {
        "HF_ENDPOINT": base,
        "NANOCHAT_EVAL_BUNDLE_URL": f"{base}/{hub.EVAL_BUNDLE_NAME}",
        "NANOCHAT_TIKTOKEN_BASE_URL": base,
        "NANOCHAT_FILES_URL": f"{base}/files",
    }
    return server, env


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the data folder to serve")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server, env = start_mirror(args.data, args.port)
    print("Serving", os.path.abspath(args.data), "- in another shell:")
    for k, v in env.items():
        print(f"export {k}={v}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
