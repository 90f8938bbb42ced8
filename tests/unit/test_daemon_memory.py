"""What a daemon imports at start (issue 25): the D-Bus binding without lxml, no asyncio
in the sync reaper, no CLI-only modules. Each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys


def fresh(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_lean_pystemd_gives_the_binding_and_signatures_without_lxml():
    out = fresh(
        "import sys\n"
        "from vx11d import units\n"
        "units.lean_pystemd()\n"
        "from pystemd.dbuslib import DBus, apply_signature, path_encode, path_decode\n"
        "from pystemd.dbusexc import DBusBaseError, DBusNoSuchUnitError\n"
        "from vx11d.madre.systemd import signature_of\n"
        "assert signature_of('MemoryMax') == b't'\n"
        "assert path_encode(b'/org/freedesktop/systemd1/unit', b'a-b.service')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lxml'))\n")
    assert out == "[]"


def test_daemons_do_not_import_what_they_do_not_run():
    for daemon, absent in [("reaper", ["asyncio", "lxml", "aiohttp"]),
                           ("madre", ["lxml", "aiohttp", "argparse"]),
                           ("gateway", ["lxml"])]:
        out = fresh("import sys\n"
                    "import vx11d.__main__\n"
                    f"import vx11d.{daemon}.main\n"
                    f"print([m for m in {absent!r} if m in sys.modules])\n")
        assert out == "[]", (daemon, out)
