"""vx11ctl: the one operator command."""
