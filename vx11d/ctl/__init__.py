"""vx11ctl: the one operator command."""

import logging

# The shared core logs for the daemons' journal (e.g. vx11.db's "database degraded");
# in vx11ctl the error that ends the command is the one line a person reads, so those
# records go nowhere (no handler: Python would print them to stderr as a second line).
logging.getLogger("vx11").addHandler(logging.NullHandler())
