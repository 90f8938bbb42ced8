#!/usr/bin/env bash
# Build vx11d_<version>_<arch>.deb: a self-contained virtualenv at /opt/vx11d, the units,
# sysusers/tmpfiles, the sample config (a conffile), Prometheus rules, dashboard, docs.
#   packaging/deb/build.sh [OUTDIR] [--with-hermes]
# Needs: python3-venv, dpkg-dev, libsystemd-dev, pkg-config, a compiler (pystemd and
# systemd-python build from source). Run from anywhere; writes OUTDIR (default: dist/).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/dist}
extras=""
[ "${2:-}" = "--with-hermes" ] && extras="[hermes]"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
prefix=/opt/vx11d

# 1. The virtualenv, built in the staging root and then pointed at its final path.
/usr/bin/python3 -m venv "$stage$prefix"
"$stage$prefix/bin/pip" install -q --no-cache-dir --upgrade pip
"$stage$prefix/bin/pip" install -q "$repo$extras"
grep -rlI --null "$stage$prefix" "$stage$prefix/bin" "$stage$prefix/pyvenv.cfg" | xargs -0 -r sed -i "s|$stage$prefix|$prefix|g"
find "$stage$prefix" -name '__pycache__' -prune -exec rm -rf {} +
rm -f "$stage$prefix/bin/pip"* "$stage$prefix/bin/activate"*

# 2. systemd units, users, dirs, config, monitoring, docs.
install -d "$stage/lib/systemd/system" "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d" \
  "$stage/etc/vx11" "$stage/usr/share/vx11d" "$stage/usr/share/doc/vx11d" "$stage/usr/bin" \
  "$stage/usr/sbin" "$stage/DEBIAN"
install -m 0644 "$repo"/units/* "$stage/lib/systemd/system/"
install -m 0644 "$repo/packaging/sysusers.d/vx11.conf" "$stage/usr/lib/sysusers.d/vx11.conf"
install -m 0644 "$repo/packaging/tmpfiles.d/vx11.conf" "$stage/usr/lib/tmpfiles.d/vx11.conf"
install -m 0640 "$repo/packaging/vx11.yml" "$stage/etc/vx11/vx11.yml"
[ -d "$repo/packaging/prometheus" ] && cp -r "$repo/packaging/prometheus" "$stage/usr/share/vx11d/"
[ -d "$repo/packaging/grafana" ] && cp -r "$repo/packaging/grafana" "$stage/usr/share/vx11d/"
cp "$repo/README.md" "$repo"/docs/*.md "$stage/usr/share/doc/vx11d/"
ln -s "$prefix/bin/vx11ctl" "$stage/usr/bin/vx11ctl"
ln -s "$prefix/bin/vx11d" "$stage/usr/sbin/vx11d"

# 3. Package metadata and maintainer scripts.
size=$(du -sk "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: vx11d
Version: $version
Architecture: $arch
Maintainer: vx11d maintainers <vx11d@localhost>
Installed-Size: $size
Depends: python3 (>= 3.11), python3 (<< 3.12), systemd (>= 252), libsystemd0, dbus, curl
Recommends: prometheus-node-exporter
Section: admin
Priority: optional
Description: keeps an AI services host clean, bounded and observable
 systemd-integrated daemons: a token-protected gateway on :8000, madre (short-lived
 workers with mandatory TTLs as transient units), a zombie and orphan reaper, an
 audit rotator on a timer and a local LLM worker under MemoryMax, sharing one
 SQLite database and exposing Prometheus metrics.
CONTROL
echo "/etc/vx11/vx11.yml" > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  systemd-sysusers vx11.conf
  systemd-tmpfiles --create vx11.conf
  chgrp vx11 /etc/vx11/vx11.yml
  if [ ! -e /etc/vx11/token ]; then
    umask 077
    head -c 32 /dev/urandom | base64 | tr -d '=+/\n' > /etc/vx11/token
    echo >> /etc/vx11/token
  fi
  /opt/vx11d/bin/vx11ctl db migrate >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable vx11.target vx11-gateway.socket vx11-rotate.timer >/dev/null 2>&1 || true
  fi
fi
POSTINST
cat > "$stage/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop vx11.target 'vx11-*' >/dev/null 2>&1 || true
  systemctl disable vx11.target vx11-gateway.socket vx11-rotate.timer >/dev/null 2>&1 || true
fi
PRERM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm"
mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out/vx11d_${version}_${arch}.deb" >/dev/null
echo "$out/vx11d_${version}_${arch}.deb"
