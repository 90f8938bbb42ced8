"""Test infrastructure: fresh Debian hosts (containers) for the host, vm and bench tiers,
and the cleanup of sandboxes a killed run left. Not part of the product package."""
