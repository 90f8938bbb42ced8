"""``vx11ctl token add|list|revoke``: the gateway's named credentials (see docs/security.md).

``add`` prints the new secret once, on stdout, and keeps only its digest; ``revoke``
removes the credential's file (the legacy token file is emptied instead). The gateway
notices either within about a second, without a restart.
"""

from __future__ import annotations

import argparse

from .. import config, credentials, textfmt
from .main import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="add, list or revoke the gateway's named credentials")
    s = p.add_subparsers(dest="token_command", metavar="ACTION")
    a = s.add_parser("add", help="make a credential; prints its secret once")
    a.add_argument("name", help="its name (a-z 0-9 - _), as the journal and the DB record it")
    a.add_argument("--scope", action="append", required=True, metavar="SCOPE",
                   help=f"one of {', '.join(credentials.SCOPES)}; repeat or comma-separate "
                   "for several")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=add)
    ls = s.add_parser("list", help="every credential: name, scopes, age, file mode")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=listing)
    r = s.add_parser("revoke", help="remove a credential (refused within about a second)")
    r.add_argument("name")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=revoke)


def add(args: argparse.Namespace) -> int:
    g = config.load(args.config).gateway
    scopes = credentials.parse_scopes(args.scope)
    secret = credentials.add(g.credentials_dir, args.name, scopes, g.token_file)
    emit(args, {"name": args.name, "scopes": sorted(scopes), "secret": secret},
         secret)
    return 0


def listing(args: argparse.Namespace) -> int:
    g = config.load(args.config).gateway
    rows = credentials.listing(g.credentials_dir, g.token_credential, g.token_file)
    data = [{"name": c.name, "scopes": c.scopes, "created": c.created or None,
             "path": c.path, "mode": c.mode, **({"error": c.error} if c.error else {})}
            for c in rows]
    lines = [f"{'NAME':<20} {'SCOPES':<24} {'CREATED':<32} {'MODE':<5} FILE"]
    for c in rows:
        ts = credentials.created_ts(c.created)
        created = textfmt.when(ts) if ts is not None else "-"
        scopes = ",".join(c.scopes) if not c.error else f"refused: {c.error}"
        lines.append(f"{c.name:<20} {scopes:<24} {created:<32} {c.mode:<5} {c.path}")
    if not rows:
        lines = [f"no credential in {g.credentials_dir} and no {g.token_file}: the gateway "
                 "refuses to start; add one: vx11ctl token add NAME --scope admin"]
    emit(args, {"credentials": data, "count": len(data)}, "\n".join(lines))
    return 0


def revoke(args: argparse.Namespace) -> int:
    g = config.load(args.config).gateway
    done = credentials.revoke(g.credentials_dir, args.name, g.token_file)
    emit(args, {"name": args.name, "revoked": True, "detail": done},
         f"revoked {args.name}: {done}; the gateway refuses it within about a second")
    return 0
