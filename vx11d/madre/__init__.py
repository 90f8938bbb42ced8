"""madre: the hija TTL supervisor (transient systemd units) and activation windows."""
