"""The audit rotator: archive old timestamped audit dirs, verified, before any delete."""
