"""The one place that downloads: URLs from documented variables, retries, resume, atomic files.

Every file the course fetches comes through `download()`. The hosts are configurable so
the same code runs against the public internet, a local mirror (`python -m
nanochat.mirror`) or a test server:

    HF_ENDPOINT                  Hugging Face hub (pretraining shards)  default https://huggingface.co
    NANOCHAT_EVAL_BUNDLE_URL     the DCLM/CORE eval bundle zip          default DEFAULT_EVAL_BUNDLE_URL
    NANOCHAT_TIKTOKEN_BASE_URL   the GPT-2/GPT-4 tokenizer files        default https://openaipublic.blob.core.windows.net
    NANOCHAT_FILES_URL           task and chat data files               (mirror only, e.g. http://127.0.0.1:8765/files)
    NANOCHAT_WORDS_URL           the English word list (SpellingBee)    default DEFAULT_WORDS_URL
    NANOCHAT_IDENTITY_URL        nanochat's identity conversations      default DEFAULT_IDENTITY_URL

Chat task data comes from Hugging Face dataset repos (HF_ENDPOINT), file by file in the
repos' own layout (download_dataset_file), cached under base_dir/task_data/<repo>/.
"""
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import Callable

from filelock import FileLock

from nanochat import common

PRETRAIN_REPO = "karpathy/fineweb-edu-100b-shuffle"
EVAL_BUNDLE_NAME = "eval_bundle.zip"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/" + EVAL_BUNDLE_NAME
DEFAULT_TIKTOKEN_BASE_URL = "https://openaipublic.blob.core.windows.net"
DEFAULT_WORDS_URL = "https://raw.githubusercontent.com/dwyl/english-words/refs/heads/master/words_alpha.txt"
DEFAULT_IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that could not be completed, with what, from where and how to fix it."""


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT).rstrip("/")


def hf_dataset_url(repo: str, filename: str, revision: str = "main") -> str:
    """The hub's URL for a file of a dataset repo (the layout huggingface_hub uses)."""
    return f"{hf_endpoint()}/datasets/{repo}/resolve/{revision}/{filename}"


def eval_bundle_url() -> str:
    return os.environ.get("NANOCHAT_EVAL_BUNDLE_URL", DEFAULT_EVAL_BUNDLE_URL)


def tiktoken_url(path: str) -> str:
    """Where a tiktoken file (e.g. 'encodings/cl100k_base.tiktoken') is fetched from."""
    base = os.environ.get("NANOCHAT_TIKTOKEN_BASE_URL", DEFAULT_TIKTOKEN_BASE_URL).rstrip("/")
    return f"{base}/{path.lstrip('/')}"


def words_url() -> str:
    return os.environ.get("NANOCHAT_WORDS_URL", DEFAULT_WORDS_URL)


def identity_url() -> str:
    return os.environ.get("NANOCHAT_IDENTITY_URL", DEFAULT_IDENTITY_URL)


def _which_variable(url: str) -> str:
    """Name the environment variable that moves this URL's host, for the error message."""
    if url.startswith(hf_endpoint()):
        return "HF_ENDPOINT"
    if url == eval_bundle_url():
        return "NANOCHAT_EVAL_BUNDLE_URL"
    if url == words_url():
        return "NANOCHAT_WORDS_URL"
    if url == identity_url():
        return "NANOCHAT_IDENTITY_URL"
    return "NANOCHAT_TIKTOKEN_BASE_URL" if "tiktoken" in url or "encodings" in url else "the base URL"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _fetch_to_part(url: str, part: str, desc: str, timeout: float) -> None:
    """Stream url into part, resuming from part's current size when the server allows it."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if have and response.status != 206:  # the server ignored Range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, common.tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=desc, leave=False, mininterval=1.0
        ) as bar:
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
        got = os.path.getsize(part)
        if total is not None and got != total:  # connection closed early: keep the part, resume
            raise ConnectionError(f"received {got} of {total} bytes")


def download(
    url: str,
    path: str,
    sha256: str | None = None,
    validate: Callable[[str], None] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    desc: str | None = None,
) -> str:
    """Download url to path once, safely; return path.

    - a file lock: when N ranks ask at once, one downloads and the others wait;
    - the bytes go to `path.part` and are renamed only when complete and checked
      (sha256 if known, `validate(path)` if given), so a crash never leaves a file
      that looks whole; an interrupted `.part` is resumed with an HTTP Range request;
    - retries with exponential backoff; in the end one clear error.
    """
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    desc = desc or os.path.basename(path)
    with FileLock(path + ".lock"):
        if os.path.exists(path):  # another rank finished it while we waited
            return path
        last_error = None
        for attempt in range(retries):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _fetch_to_part(url, part, desc, timeout)
                if sha256 is not None and (got := sha256_of(part)) != sha256:
                    raise ValueError(f"checksum mismatch: expected sha256 {sha256}, got {got}")
                if validate is not None:
                    validate(part)
                common.publish(part, path)
                return path
            except urllib.error.HTTPError as e:
                last_error = e
                if e.code == 404 or e.code == 416:  # not there / stale part: no point resuming
                    if os.path.exists(part):
                        os.remove(part)
                    if e.code == 404:
                        break
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, a dropped connection
                last_error = e
                if _is_local(url) and _refused(e):  # no server on this machine's port: waiting will not start one
                    break
            except Exception as e:  # a corrupt file: throw the bytes away and fetch again
                last_error = e
                if os.path.exists(part):
                    os.remove(part)
    if _is_local(url) and _refused(last_error):  # pointed at a mirror that is not up
        advice = (f"  Nothing answers at {urllib.parse.urlsplit(url).netloc}, where {_which_variable(url)} points: "
                  f"is the mirror running? Start it with\n")
    else:
        advice = f"  No network? Point {_which_variable(url)} at a mirror, e.g. run\n"
    raise DownloadError(
        f"Could not download {url}\n  to {path}\n  because: {last_error}\n" + advice +
        f"    python -m nanochat.mirror --data /path/to/course/data\n"
        f"  and export the variables it prints; or place the file at {path} yourself."
    )


def _is_local(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _refused(error) -> bool:
    """True if the error is a refused connection (no server on that port)."""
    reason = getattr(error, "reason", error)
    return isinstance(reason, ConnectionRefusedError)


def download_dataset_file(repo: str, filename: str) -> str:
    """One file of a Hugging Face dataset repo, cached at base_dir/task_data/<repo>/<filename>; returns the path."""
    validate = _check_parquet if filename.endswith(".parquet") else None
    return download(hf_dataset_url(repo, filename), common.task_data_dir(repo, filename), validate=validate,
                    desc=f"{repo}/{filename}")


def _check_parquet(path: str) -> None:
    import pyarrow.parquet as pq

    pq.ParquetFile(path)  # reads the footer: a truncated file has none


def download_eval_bundle() -> str:
    """Fetch and unzip the CORE eval bundle into base_dir/eval_bundle (atomically); return it."""
    target = common.eval_bundle_dir()
    if os.path.isfile(os.path.join(target, "core.yaml")):
        return target
    zip_path = download(eval_bundle_url(), common.base_path(EVAL_BUNDLE_NAME), validate=_check_zip)
    with FileLock(target + ".lock"):
        if not os.path.isfile(os.path.join(target, "core.yaml")):
            tmp = target + ".tmp"
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
            os.replace(os.path.join(tmp, "eval_bundle"), target)  # a folder: renamed whole, like a file
            os.rmdir(tmp)
    return target


def _check_zip(path: str) -> None:
    with zipfile.ZipFile(path) as zf:
        if (bad := zf.testzip()) is not None:
            raise ValueError(f"corrupt member {bad} in zip")
