"""The downloader: resume after a dropped connection, reject corrupt bytes, fail clearly."""
import hashlib
import http.server
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from nanochat import dataset, hub

PAYLOAD = os.urandom(3 * hub.CHUNK + 12345)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FaultyServer:
    """Serves PAYLOAD at /file with scripted faults: 'drop' (half, then close), 'corrupt', 'ok'."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                mode = outer.script.pop(0) if outer.script else "ok"
                if self.path != "/file":
                    self.send_error(404)
                    return
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
                body = PAYLOAD[start:]
                if mode == "corrupt":
                    body = bytes(len(body))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "drop" else body)
                if mode == "drop":
                    self.wfile.flush()
                    self.connection.close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def faulty(request):
    servers = []

    def make(*script):
        servers.append(FaultyServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_dropped_connection_resumes_with_range(faulty, tmp_path):
    server = faulty("drop", "ok")
    path = hub.download(server.url + "/file", str(tmp_path / "f.bin"), sha256=SHA, backoff=0)
    assert open(path, "rb").read() == PAYLOAD
    assert server.requests[0] is None and server.requests[1].startswith("bytes=")  # resumed, not restarted
    assert not os.path.exists(path + ".part")


def test_corrupt_bytes_are_refetched(faulty, tmp_path):
    server = faulty("corrupt", "ok")
    path = hub.download(server.url + "/file", str(tmp_path / "f.bin"), sha256=SHA, backoff=0)
    assert open(path, "rb").read() == PAYLOAD
    assert len(server.requests) == 2


def test_always_corrupt_fails_and_leaves_nothing_that_looks_complete(faulty, tmp_path):
    server = faulty(*["corrupt"] * 5)
    target = tmp_path / "f.bin"
    with pytest.raises(hub.DownloadError, match="checksum mismatch"):
        hub.download(server.url + "/file", str(target), sha256=SHA, retries=3, backoff=0)
    assert not target.exists()


def test_validate_rejects_a_bad_parquet(faulty, tmp_path):
    server = faulty()  # serves random bytes: not parquet
    target = tmp_path / "shard_00000.parquet"
    with pytest.raises(hub.DownloadError, match="Could not download"):
        hub.download(server.url + "/file", str(target), validate=dataset.check_parquet, retries=2, backoff=0)
    assert not target.exists()


def test_missing_file_and_no_server_say_what_to_do(faulty, tmp_path, monkeypatch):
    server = faulty()
    with pytest.raises(hub.DownloadError, match="404"):
        hub.download(server.url + "/nope", str(tmp_path / "a"), backoff=0)
    assert len(server.requests) == 1  # a 404 is final: no retries
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(hub.DownloadError) as err:
        hub.download(dataset.shard_url(0), str(tmp_path / "b"), retries=2, backoff=0)
    message = str(err.value)
    assert "HF_ENDPOINT" in message and "nanochat.mirror" in message and "127.0.0.1:9" in message
    assert "is the mirror running?" in message  # a local endpoint that refuses: the mirror is not up
    monkeypatch.setenv("HF_ENDPOINT", "http://nanochat-test.invalid")  # a host that does not resolve
    with pytest.raises(hub.DownloadError) as err:
        hub.download(dataset.shard_url(0), str(tmp_path / "c"), retries=1, backoff=0)
    assert "No network? Point HF_ENDPOINT at a mirror" in str(err.value)


def test_concurrent_callers_download_once(faulty, tmp_path):
    server = faulty()
    target = str(tmp_path / "f.bin")
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: hub.download(server.url + "/file", target, sha256=SHA), range(4)))
    assert paths == [target] * 4 and len(server.requests) == 1


def test_shards_through_the_mirror(base_dir, data_pack):
    paths = dataset.download_shards(3)
    assert [os.path.basename(p) for p in paths] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert dataset.split_files("val") == paths[-1:] and dataset.split_files("train") == paths[:-1]
    for p in paths:
        assert open(p, "rb").read() == open(os.path.join(data_pack, "pretrain", os.path.basename(p)), "rb").read()


def test_a_truncated_shard_on_disk_is_fetched_again(base_dir, data_pack, capsys):
    paths = dataset.download_shards(2)
    whole = open(paths[1], "rb").read()
    with open(paths[1], "r+b") as f:
        f.truncate(len(whole) // 2)  # an interrupted copy, or a disk that filled up
    assert dataset.download_shards(2) == paths
    assert open(paths[1], "rb").read() == whole
    assert "shard_00001.parquet is broken" in capsys.readouterr().out


def test_eval_bundle_through_the_mirror(base_dir, data_pack):
    bundle = hub.download_eval_bundle()
    assert os.path.isfile(os.path.join(bundle, "core.yaml"))
    assert os.path.isfile(os.path.join(bundle, "eval_data", "world_knowledge", "arc_easy.jsonl"))
