"""``vx11ctl route``: Switch in-process, refusals, and the chain through a gateway."""

from __future__ import annotations

import json

from vx11d.ctl.main import main


def _cfg(tmp_path, extra: str = "") -> str:
    p = tmp_path / "vx11.yml"
    token = tmp_path / "token"
    token.write_text("route-cli-token-0123456789\n")
    token.chmod(0o600)
    p.write_text(f"db: {{path: {tmp_path}/vx11.db}}\ngateway: {{token_file: {token}}}\n"
                 + extra)
    return str(p)


def test_route_in_process(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    assert main(["--config", cfg, "route", "2+2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["route"], out["answer"], out["rule"]) == ("switch", "4", "arith")
    assert main(["--config", cfg, "route", "9**9**9"]) == 1
    assert "refused" in capsys.readouterr().out
    assert main(["--config", cfg, "route", "tell me a story"]) == 1
    assert "--via-gateway" in capsys.readouterr().out


def test_route_via_gateway(tmp_path, capsys):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = {}

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            seen["token"] = self.headers["X-VX11-Token"]
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps({"route": "hermes", "answer": "hi", "latency_ms": 3.2}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = _cfg(tmp_path)
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert main(["--config", cfg, "route", "--via-gateway", "--url", url, "story"]) == 0
        assert "route hermes" in capsys.readouterr().out
        assert seen == {"token": "route-cli-token-0123456789", "body": {"query": "story"}}
    finally:
        srv.shutdown()
