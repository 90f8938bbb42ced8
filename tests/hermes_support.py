"""Helpers for the Hermes and route-chain tests: models, a real worker, a gateway thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from aiohttp import web

from tests.support import poll_for, stop
from vx11d.hermes.testmodel import Shape, write_model

MEDIUM_SHAPE = Shape(layers=4, embd=512, heads=8, ff=1024, ctx=512)
TOKEN = "t0ken-for-hermes-tests-0123456789"
_MODELS: dict[str, str] = {}


def model(kind: str, directory: str) -> str:
    """A generated model ('tiny' or 'medium'), written once per test session."""
    if kind not in _MODELS or not os.path.exists(_MODELS[kind]):
        path = os.path.join(directory, f"{kind}.gguf")
        write_model(path, MEDIUM_SHAPE if kind == "medium" else Shape())
        _MODELS[kind] = path
    return _MODELS[kind]


def config_text(tmp: str, model_path: str, **hermes) -> str:
    h = {"socket": os.path.join(tmp, "run", "hermes.sock"), "model_path": model_path,
         "model_sha256": "", "metrics_port": 0, "n_ctx": 256, "max_tokens": 24,
         "n_threads": 1, **hermes}
    return json.dumps({"db": {"path": os.path.join(tmp, "vx11.db")}, "hermes": h})


class WorkerProc:
    """``vx11d hermes`` as a real child process serving a real UNIX socket."""

    def __init__(self, tmp: str, model_path: str, **hermes):
        self.tmp = tmp
        self.model_path = model_path
        os.makedirs(os.path.join(tmp, "run"), exist_ok=True)
        self.cfg_path = os.path.join(tmp, "hermes.yml")
        self.write_config(model_path, **hermes)
        self.socket = os.path.join(tmp, "run", "hermes.sock")
        self.log = open(os.path.join(tmp, "worker.log"), "wb")  # noqa: SIM115
        env = {**os.environ, "VX11_CONFIG": self.cfg_path}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "vx11d", "hermes"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        poll_for(lambda: self.health() is not None or self.proc.poll() is not None, 30,
                 what="hermes socket answers")
        assert self.proc.poll() is None, self.output()

    def write_config(self, model_path: str, **hermes) -> None:
        with open(self.cfg_path + ".tmp", "w") as f:
            f.write(config_text(self.tmp, model_path, **hermes))
        os.replace(self.cfg_path + ".tmp", self.cfg_path)

    def output(self) -> str:
        with open(os.path.join(self.tmp, "worker.log"), errors="replace") as f:
            return f.read()

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        return unix_request(self.socket, "GET", path, timeout=timeout)

    def health(self) -> dict | None:
        try:
            status, body = self.get("/health", timeout=2)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def chat(self, content: str = "hello", timeout: float = 60, **extra) -> tuple[int, dict]:
        body = {"messages": [{"role": "user", "content": content}], **extra}
        status, data = unix_request(self.socket, "POST", "/v1/chat/completions",
                                    json.dumps(body).encode(), timeout=timeout)
        return status, json.loads(data) if data.startswith(b"{") else {"raw": data}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def unix_request(path: str, method: str, url: str, body: bytes | None = None,
                 timeout: float = 30) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 request over a UNIX socket (status, body)."""
    import http.client

    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)

    c = Conn("hermes", timeout=timeout)
    try:
        c.request(method, url, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class AppThread:
    """An aiohttp app served on loopback by a loop in a background thread."""

    def __init__(self, make_app):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(make_app,), daemon=True)
        self.thread.start()
        assert self.ready.wait(15)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, make_app):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.app = make_app()
            self.runner = web.AppRunner(self.app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        self.ready.set()
        self.loop.run_forever()

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        with contextlib.suppress(Exception):
            self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def http(method: str, url: str, body: dict | None = None, token: str | None = TOKEN,
         timeout: float = 60) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a loopback HTTP request."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-VX11-Token"] = token
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, hdrs = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, dict(e.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, {"raw": raw}, hdrs


def err_code(body: dict) -> str:
    """The error code of a vx11 error body or of OpenAI's error object."""
    e = body["error"]
    return e["code"] if isinstance(e, dict) else e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    def up():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    poll_for(up, timeout, what=f"port {port}")


def now() -> float:
    return time.time()


@contextlib.contextmanager
def llama_server(model_path: str, d, key: str, alias: str, *args: str, wait: float = 60,
                 timeout: float = 30):
    """``python -m llama_cpp.server`` on loopback serving ``model_path`` as ``alias``
    with API key ``key`` (``args``: more server flags); yields (the gateway's
    ``remote:`` config for it, the server process)."""
    port = free_port()
    log = open(d / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model",
                             model_path, "--host", "127.0.0.1", "--port", str(port),
                             "--api_key", key, "--model_alias", alias, "--verbose", "False",
                             *args], stdout=log, stderr=subprocess.STDOUT)
    keyfile = d / "key"
    keyfile.write_text(key + "\n")
    keyfile.chmod(0o600)
    try:
        wait_port(port, wait)
        yield {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_file": str(keyfile),
               "model": alias, "timeout": timeout}, proc
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def remote_llama(model_path: str, d, key: str):
    """:func:`llama_server` for a generated model (chatml, 1024 tokens); yields its
    ``remote:`` config."""
    with llama_server(model_path, d, key, "remote-tiny", "--n_ctx", "1024",
                      "--chat_format", "chatml") as (remote, _proc):
        yield remote


@contextlib.contextmanager
def running_worker(d: str, model_path: str, **kw):
    """A :class:`WorkerProc` for a test module; it must end cleanly (exit 0)."""
    w = WorkerProc(d, model_path, **kw)
    try:
        yield w
    finally:
        assert w.stop() == 0, w.output()


def chain_gateway(dbpath: str, worker: WorkerProc, remote: dict | None = None,
                  **hermes) -> tuple[AppThread, object]:
    """The gateway app with the route chain, in a thread, in front of ``worker``;
    returns (the thread, its GatewayContext)."""
    from prometheus_client import CollectorRegistry

    from vx11d import config
    from vx11d.db import Database
    from vx11d.gateway.app import build_app
    from vx11d.gateway.context import GatewayContext

    cfg = config.parse(json.dumps({
        "db": {"path": dbpath},
        "hermes": {"socket": worker.socket, "model_path": worker.model_path, **hermes},
        "remote": remote or {}}), "gw.yml")
    ctx = GatewayContext(cfg=cfg, db=Database(dbpath), registry=CollectorRegistry())
    return AppThread(lambda: build_app(ctx, TOKEN, modules=["vx11d.gateway.chain"])), ctx
