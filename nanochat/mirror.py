"""A local stand-in for the download hosts: serves a data folder over HTTP on 127.0.0.1.

The course downloads from Hugging Face (HF_ENDPOINT), the eval-bundle host and the
tiktoken host. Offline (or in tests and CI) this server answers the same URL paths from a
local folder laid out like the course's data pack:

    pretrain/shard_00000.parquet ...      (the last shard is validation)
    eval_bundle/{core.yaml, eval_meta_data.csv, eval_data/...}
    tiktoken_cache/INDEX.tsv + files named by sha1(url)
    tasks/..., chat/...                   (served as they are under /files/)

The chat tasks' data is served in the file layout of the real Hugging Face dataset repos
(DATASET_FILES): the pack's JSONL becomes parquet once, in memory, on first request. Where
the pack has only a stand-in, the stand-in is served under the real name and schema:
HuggingFaceTB/smol-smoltalk from the pack's GPTeacher conversations (SmolTalk is not in the
pack), cais/mmlu's auxiliary_train from the pack's ARC/OBQA substitute. Numbers that
depend on them must say "stand-in".

    python -m nanochat.mirror --data ../shared/data          # prints the exports to use
"""
import argparse
import gzip
import http.server
import io
import json
import os
import re
import sys
import threading
import zipfile
from urllib.parse import urlparse

from nanochat import hub

def jsonl_rows(path: str) -> list[dict]:
    """One JSON object per line (gzipped if the name ends in .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def smoltalk_part(split: str, part: int, parts: int):
    """The stand-in for smol-smoltalk: every 20th conversation is test, the rest train, cut into parts."""
    def rows(path):
        everything = jsonl_rows(path)
        if split == "test":
            return everything[::20]
        train = [row for i, row in enumerate(everything) if i % 20]
        return train[part::parts]
    return rows


def auxiliary_train(path: str) -> list[dict]:
    """cais/mmlu's auxiliary_train nests each row in a `train` column."""
    return [{"train": row} for row in jsonl_rows(path)]


# (repo, file in the repo) -> (file in the data pack, rows from it). The paths are the real repos'.
DATASET_FILES = {
    **{("allenai/ai2_arc", f"{subset}/{split}-00000-of-00001.parquet"): (f"tasks/arc/{subset}/{split}.jsonl", jsonl_rows)
       for subset in ("ARC-Easy", "ARC-Challenge") for split in ("train", "validation", "test")},
    **{("cais/mmlu", f"all/{split}-00000-of-00001.parquet"): (f"tasks/mmlu/{split}.jsonl", jsonl_rows)
       for split in ("dev", "validation", "test")},
    ("cais/mmlu", "auxiliary_train/train-00000-of-00001.parquet"):
        ("tasks/mmlu/auxiliary_train_substitute.jsonl", auxiliary_train),
    **{("openai/gsm8k", f"main/{split}-00000-of-00001.parquet"): (f"tasks/gsm8k/{split}.jsonl", jsonl_rows)
       for split in ("train", "test")},
    ("openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet"):
        ("tasks/humaneval/HumanEval.jsonl.gz", jsonl_rows),
    **{("HuggingFaceTB/smol-smoltalk", f"data/train-{i:05d}-of-00004.parquet"):
       ("chat/gpteacher_codegen_roleplay.jsonl", smoltalk_part("train", i, 4)) for i in range(4)},
    ("HuggingFaceTB/smol-smoltalk", "data/test-00000-of-00001.parquet"):
        ("chat/gpteacher_codegen_roleplay.jsonl", smoltalk_part("test", 0, 1)),
}
DATASET_PATH = re.compile(r"^/datasets/([^/]+/[^/]+)/resolve/main/(.+)$")


def parquet_bytes(rows: list[dict]) -> bytes:
    """Rows as a parquet file, the format the hub serves datasets in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


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
    converted: dict = {}  # (repo, file) -> parquet bytes, made once
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output quiet
        pass

    def resolve(self, path: str):
        """Return bytes or a file path for a URL path, or None."""
        if m := SHARD_PATH.match(path):
            return os.path.join(self.data_dir, "pretrain", m.group(1))
        if path == "/" + hub.EVAL_BUNDLE_NAME:
            with self.lock:
                if type(self).eval_zip is None:
                    type(self).eval_zip = zip_folder(os.path.join(self.data_dir, "eval_bundle"))
            return type(self).eval_zip
        if (m := DATASET_PATH.match(path)) and (key := (m.group(1), m.group(2))) in DATASET_FILES:
            with self.lock:
                if key not in self.converted:
                    source, rows = DATASET_FILES[key]
                    self.converted[key] = parquet_bytes(rows(os.path.join(self.data_dir, source)))
            return self.converted[key]
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
    handler = type("Handler", (MirrorHandler,), {"data_dir": data_dir, "routes": tiktoken_routes(data_dir),
                                                 "eval_zip": None, "converted": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env = {
        "HF_ENDPOINT": base,
        "NANOCHAT_EVAL_BUNDLE_URL": f"{base}/{hub.EVAL_BUNDLE_NAME}",
        "NANOCHAT_TIKTOKEN_BASE_URL": base,
        "NANOCHAT_FILES_URL": f"{base}/files",
        "NANOCHAT_WORDS_URL": f"{base}/files/tasks/words/words_alpha.txt",
        "NANOCHAT_IDENTITY_URL": f"{base}/files/chat/identity_conversations.jsonl",
    }
    return server, env


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the data folder to serve")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    try:
        server, env = start_mirror(args.data, args.port)
    except (FileNotFoundError, OSError) as e:  # not a data pack, or the port is taken
        sys.exit(f"nanochat.mirror: error: {e} (pass --data DIR of the course data pack, --port N for another port)")
    print("Serving", os.path.abspath(args.data), "- in another shell:")
    for k, v in env.items():
        print(f"export {k}={v}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
