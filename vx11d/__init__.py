"""vx11d: systemd-integrated daemons that keep an AI host clean, bounded and observable."""

__version__ = "0.2.0"
