"""Runs INSIDE the sandbox as a systemd unit (stderr is journald): loads the API token
and the remote API key the way the gateway does, then logs an exception, a stack and
fields that hold both. The system test reads what reached journald.

    python redact_probe.py TOKEN_FILE REMOTE_KEY_FILE
"""

from __future__ import annotations

import logging
import sys

from vx11d import journal
from vx11d.credentials import read_legacy
from vx11d.gateway.chain import Upstreams


def main() -> int:
    log = journal.setup("gateway")
    assert journal.under_journald(), "run me as a systemd unit"
    token = read_legacy("token", sys.argv[1])
    assert token is not None
    journal.register_secret(token)  # as GatewayService.start does
    key = Upstreams().remote_key(sys.argv[2])  # the gateway's remote-key reader
    try:
        raise RuntimeError(f"a bug with token {token} and key {key}")
    except RuntimeError:
        log.exception("probe: request with %s failed", token,
                      extra={"VX11_EVENT": "redact_probe", "VX11_DETAIL": key,
                             "UPSTREAM_AUTHORIZATION": f"Bearer {key}"})
    log.warning("probe: stack", stack_info=True, extra={"VX11_EVENT": "redact_probe",
                                                        "VX11_TOKEN_SEEN": token})
    journal.event(log, "redact_probe", "probe done", level=logging.INFO, key=key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
