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
version=${VX11_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")}
maintainer="vx11d maintainers <vx11d@example.org>"
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
prefix=/opt/vx11d

# 1. The virtualenv, built in the staging root and then pointed at its final path.
/usr/bin/python3 -m venv "$stage$prefix"
"$stage$prefix/bin/pip" install -q --no-cache-dir --upgrade pip
"$stage$prefix/bin/pip" install -q "$repo$extras"
grep -rlI --null "$stage$prefix" "$stage$prefix/bin" "$stage$prefix/pyvenv.cfg" | xargs -0 -r sed -i "s|$stage$prefix|$prefix|g"
"$stage$prefix/bin/python3" -m pip uninstall -q -y pip setuptools
find "$stage$prefix" -name '__pycache__' -prune -exec rm -rf {} +
rm -f "$stage$prefix/bin/pip"* "$stage$prefix/bin/activate"* "$stage$prefix/lib64"
# Debug symbols of the compiled extensions are of no use on a host (dh_strip does this).
find "$stage$prefix" -name '*.so' -exec strip --strip-unneeded {} +
chmod 0755 "$stage"

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

# 3. Package metadata, maintainer scripts (packaging/deb/*inst, *rm), lintian overrides.
install -d "$stage/usr/share/lintian/overrides"
install -m 0644 "$repo/packaging/deb/lintian-overrides" "$stage/usr/share/lintian/overrides/vx11d"
install -m 0644 "$repo/packaging/deb/copyright" "$stage/usr/share/doc/vx11d/copyright"
printf 'vx11d (%s) unstable; urgency=medium\n\n  * Release %s (changes: git log).\n\n -- %s  %s\n' \
  "$version" "$version" "$maintainer" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")" \
  | gzip -9n > "$stage/usr/share/doc/vx11d/changelog.gz"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
# Shared libraries the compiled extensions link (libc6, libsystemd0, ...), as
# dpkg-shlibdeps computes them for any Debian package.
shl=$(mktemp -d)
mkdir "$shl/debian"
printf 'Source: vx11d\n\nPackage: vx11d\nArchitecture: any\n' > "$shl/debian/control"
shlibs=$(cd "$shl" && find "$stage$prefix" -name '*.so' -print0 | xargs -0 dpkg-shlibdeps -O \
  --ignore-missing-info 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
rm -rf "$shl"
# procps: the units' ExecReload= runs /bin/kill (minbase has no procps).
depends="python3 (>= 3.11), python3 (<< 3.12), systemd (>= 252), dbus, procps${shlibs:+, $shlibs}"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: vx11d
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Recommends: prometheus-node-exporter
Section: admin
Priority: optional
Homepage: https://example.org/vx11d
Description: keeps an AI services host clean, bounded and observable
 systemd-integrated daemons: a token-protected gateway on :8000, madre
 (short-lived workers with mandatory TTLs as transient units), a zombie and
 orphan reaper, an audit rotator on a timer and a local LLM worker under
 MemoryMax, sharing one SQLite database and exposing Prometheus metrics.
CONTROL
echo "/etc/vx11/vx11.yml" > "$stage/DEBIAN/conffiles"
install -m 0755 "$repo/packaging/deb/postinst" "$repo/packaging/deb/prerm" \
  "$repo/packaging/deb/postrm" "$stage/DEBIAN/"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)
mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out/vx11d_${version}_${arch}.deb" >/dev/null
echo "$out/vx11d_${version}_${arch}.deb"
