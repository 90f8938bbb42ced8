#!/usr/bin/env bash
# Build the vx11d package for one Debian release: a self-contained virtualenv at
# /opt/vx11d, the units, sysusers/tmpfiles, the sample config (a conffile), Prometheus
# rules, dashboard, docs.
#   packaging/deb/build.sh [OUTDIR] [--release bookworm|trixie] [--with-hermes]
#   packaging/deb/build.sh --lintian DEB [--release R]   (that release's lintian on DEB)
# OUTDIR defaults to dist/; the release to the build machine's own (bookworm elsewhere).
# Prints the path of vx11d_<version>~deb<N>u<R>_<arch>.deb, e.g. 0.2.0~deb13u1 for
# Debian 13: one file per release, ordered as Debian orders its backports
# (0.2.0~deb12u1 < 0.2.0~deb13u1 < 0.2.0). VX11_DEB_VERSION sets the whole version and
# VX11_DEB_REVISION the <R> (default 1).
#
# The package is built inside a root of the target release (mmdebstrap, cached under
# $VX11_BUILD_CACHE, default /var/cache/vx11-build), run with systemd-nspawn, so its
# virtualenv and compiled extensions match that release's Python and libraries, and its
# Depends name that Python. It refuses to write a package whose declared Python is not
# the one inside. VX11_WHEELS names a directory of prebuilt wheels to prefer (the
# Makefile's llama-cpp-python wheel for --with-hermes; compiled from source otherwise).
# Needs on the build machine: bash, mmdebstrap, systemd-container (systemd-nspawn),
# root, and network to the Debian mirror and PyPI. Everything else is installed in the
# build root: python3, python3-venv, python3-dev, build-essential, pkg-config,
# libsystemd-dev, dpkg-dev, binutils, cmake, ca-certificates (and lintian, for --lintian).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out="" release="" extras="" lint=""
while [ $# -gt 0 ]; do
  case "$1" in
    --with-hermes) extras="[hermes]" ;;
    --lintian) lint=$(realpath "${2:?--lintian needs a .deb}"); shift ;;
    --release) release=${2:?--release needs bookworm or trixie}; shift ;;
    --release=*) release=${1#--release=} ;;
    -*) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
out=$(realpath -m "${out:-$repo/dist}")
host_release=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
case "${release:=${host_release:-bookworm}}" in
  bookworm) debian=12 ;;
  trixie) debian=13 ;;
  *) echo "build.sh: release '$release' is not supported (bookworm or trixie)" >&2; exit 2 ;;
esac
base=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
version=${VX11_DEB_VERSION:-$base~deb${debian}u${VX11_DEB_REVISION:-1}}

# --- outside: the build root of the release, then this script again inside it --------
if [ "${VX11_BUILD_INSIDE:-}" != 1 ]; then
  prereqs="python3,python3-venv,python3-dev,build-essential,pkg-config,libsystemd-dev,dpkg-dev,binutils,cmake,ca-certificates,lintian"
  recipe=1
  cache=${VX11_BUILD_CACHE:-/var/cache/vx11-build}
  key=$(printf '%s\n%s\n%s\n' "$release" "$prereqs" "$recipe" | sha256sum | cut -c1-12)
  root="$cache/root-$release-$key"
  mkdir -p "$cache" "$out" "$cache/pip-$release"
  command -v systemd-nspawn >/dev/null || { echo "build.sh: systemd-nspawn not found: apt-get install systemd-container" >&2; exit 1; }
  exec 9>"$cache/.lock-$release"
  flock 9
  if [ ! -e "$root.done" ]; then
    command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap not found: apt-get install mmdebstrap" >&2; exit 1; }
    rm -rf "$root" "$root.tmp"
    if ! mmdebstrap --variant=minbase --quiet --include="$prereqs" "$release" "$root.tmp" \
        >"$cache/root-$release.log" 2>&1; then
      echo "build.sh: mmdebstrap $release failed; see $cache/root-$release.log" >&2
      tail -20 "$cache/root-$release.log" >&2
      rm -rf "$root.tmp"
      exit 1
    fi
    mv "$root.tmp" "$root"
    touch "$root.done"
    for old in "$cache"/root-"$release"-*; do   # earlier recipes of this release
      case "$old" in "$root"|"$root.done") ;; *) rm -rf "$old" ;; esac
    done
  fi
  flock -u 9
  if [ -n "$lint" ]; then
    systemd-nspawn --quiet --register=no --keep-unit --volatile=overlay --console=pipe \
      -D "$root" --bind-ro="$lint:/pkg/$(basename "$lint")" --chdir=/ \
      /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
      lintian --fail-on error,warning --no-tag-display-limit "/pkg/$(basename "$lint")" \
      </dev/null
    exit $?
  fi
  binds=(--bind-ro="$repo:/src" --bind="$out:/out" --bind="$cache/pip-$release:/pipcache")
  envs=(VX11_BUILD_INSIDE=1 "VX11_DEB_VERSION=$version" PIP_CACHE_DIR=/pipcache
        PIP_DISABLE_PIP_VERSION_CHECK=1 "CMAKE_ARGS=${CMAKE_ARGS:-}"
        "CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)" "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")
  # The build machine's CA bundle (it may hold a site's TLS proxy CA) for pip inside.
  cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  if [ -f "$cert" ]; then
    binds+=(--bind-ro="$(realpath "$cert"):/etc/ssl/certs/build-host-ca.crt")
    envs+=(PIP_CERT=/etc/ssl/certs/build-host-ca.crt)
  fi
  for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy PIP_INDEX_URL; do
    [ -n "${!var:-}" ] && envs+=("$var=${!var}")
  done
  if [ -n "${VX11_WHEELS:-}" ] && [ -d "$VX11_WHEELS" ]; then
    binds+=(--bind-ro="$(realpath "$VX11_WHEELS"):/wheels")
    envs+=(PIP_FIND_LINKS=/wheels)
  fi
  flags=(--release "$release")
  [ -n "$extras" ] && flags+=(--with-hermes)
  # --volatile=overlay: the cached root stays pristine, every build starts from it.
  inner=$(systemd-nspawn --quiet --register=no --keep-unit --volatile=overlay \
    --console=pipe -D "$root" "${binds[@]}" --chdir=/ \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "${envs[@]}" \
    bash /src/packaging/deb/build.sh /out "${flags[@]}" </dev/null) || exit $?
  echo "$out/$(basename "$(printf '%s\n' "$inner" | tail -1)")"
  exit 0
fi

# --- inside the release's root -------------------------------------------------------
if [ "$host_release" != "$release" ]; then
  echo "build.sh: asked to build for $release inside a $host_release root" >&2
  exit 1
fi
maintainer="vx11d maintainers <vx11d@example.org>"
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
src=$(mktemp -d)
trap 'rm -rf "$stage" "$src"' EXIT
prefix=/opt/vx11d
# pip builds in the source tree: build from a copy, never write into the checkout.
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/vx11d" "$src/"
find "$src" -name '__pycache__' -prune -exec rm -rf {} +

# 1. The virtualenv, built in the staging root and then pointed at its final path.
/usr/bin/python3 -m venv "$stage$prefix"
"$stage$prefix/bin/pip" install -q --upgrade pip
"$stage$prefix/bin/pip" install -q "$src$extras"
grep -rlI --null "$stage$prefix" "$stage$prefix/bin" "$stage$prefix/pyvenv.cfg" | xargs -0 -r sed -i "s|$stage$prefix|$prefix|g"
"$stage$prefix/bin/python3" -m pip uninstall -q -y pip setuptools
find "$stage$prefix" -name '__pycache__' -prune -exec rm -rf {} +
rm -f "$stage$prefix/bin/pip"* "$stage$prefix/bin/activate"* "$stage$prefix/lib64"
# Debug symbols of the compiled extensions are of no use on a host (dh_strip does this).
# Not the libraries wheels vendor in <pkg>.libs/: auditwheel rewrote them with patchelf,
# and strip breaks such files ("ELF load command address/offset not page-aligned").
find "$stage$prefix" -name '*.so' ! -path '*.libs/*' -exec strip --strip-unneeded {} +
# Nothing under site-packages is run as a program, and libraries need no x bit; the
# venv's own .gitignore (Python >= 3.13 writes one) is not for a package.
find "$stage$prefix/lib" -type f -perm /111 -exec chmod a-x {} +
rm -f "$stage$prefix/.gitignore"
chmod 0755 "$stage"

# The Python the package declares is the one it was built with, and nothing inside was
# built for another: refuse the package otherwise.
py=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
next=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
venv_py=$(sed -n 's/^version\(_info\)\? *= *\([0-9]*\.[0-9]*\).*/\2/p' "$stage$prefix/pyvenv.cfg" | head -1)
if [ "$venv_py" != "$py" ] || [ ! -d "$stage$prefix/lib/python$py/site-packages" ]; then
  echo "build.sh: the virtualenv is for Python ${venv_py:-?}, this root has $py: not packaging it" >&2
  exit 1
fi
foreign=$(find "$stage$prefix/lib" -name '*.cpython-*.so' ! -name "*.cpython-${py/./}-*" | head -3)
if [ -n "$foreign" ]; then
  echo "build.sh: extensions built for another Python than $py: $foreign" >&2
  exit 1
fi

# 2. systemd units, users, dirs, config, monitoring, docs.
units=/usr/lib/systemd/system
install -d "$stage$units" "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d" \
  "$stage/etc/vx11" "$stage/usr/share/vx11d" "$stage/usr/share/doc/vx11d" "$stage/usr/bin" \
  "$stage/usr/sbin" "$stage/DEBIAN"
install -m 0644 "$repo"/units/* "$stage$units/"
install -m 0644 "$repo/packaging/sysusers.d/vx11.conf" "$stage/usr/lib/sysusers.d/vx11.conf"
install -m 0644 "$repo/packaging/tmpfiles.d/vx11.conf" "$stage/usr/lib/tmpfiles.d/vx11.conf"
install -m 0640 "$repo/packaging/vx11.yml" "$stage/etc/vx11/vx11.yml"
[ -d "$repo/packaging/prometheus" ] && cp -r "$repo/packaging/prometheus" "$stage/usr/share/vx11d/"
# the dashboard, and Grafana's provisioning file pointing at it (a conffile)
install -d "$stage/usr/share/vx11d/grafana" "$stage/etc/grafana/provisioning/dashboards"
install -m 0644 "$repo/packaging/grafana/vx11.json" "$stage/usr/share/vx11d/grafana/vx11.json"
install -m 0644 "$repo/packaging/grafana/provisioning/vx11d.yaml" \
  "$stage/etc/grafana/provisioning/dashboards/vx11d.yaml"
# drop-ins (fleet metrics, gateway TLS and network) and journal forwarding configs that
# docs/fleet.md and docs/security.md install from here
for d in fleet journal systemd; do
  [ -d "$repo/packaging/$d" ] && cp -r "$repo/packaging/$d" "$stage/usr/share/vx11d/"
done
cp "$repo/README.md" "$repo"/docs/*.md "$stage/usr/share/doc/vx11d/"
ln -s "$prefix/bin/vx11ctl" "$stage/usr/bin/vx11ctl"
ln -s "$prefix/bin/vx11d" "$stage/usr/sbin/vx11d"

# 3. Package metadata, maintainer scripts (packaging/deb/*inst, *rm), lintian overrides.
install -d "$stage/usr/share/lintian/overrides"
install -m 0644 "$repo/packaging/deb/lintian-overrides" "$stage/usr/share/lintian/overrides/vx11d"
install -m 0644 "$repo/packaging/deb/copyright" "$stage/usr/share/doc/vx11d/copyright"
printf 'vx11d (%s) %s; urgency=medium\n\n  * Release %s for Debian %s (changes: git log).\n\n -- %s  %s\n' \
  "$version" "$release" "$version" "$debian" "$maintainer" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(date +%s)}")" \
  | gzip -9n > "$stage/usr/share/doc/vx11d/changelog.gz"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
# Shared libraries the compiled extensions link (libc6, libsystemd0, ...), as
# dpkg-shlibdeps computes them for any Debian package.
shl=$(mktemp -d)
mkdir "$shl/debian"
printf 'Source: vx11d\n\nPackage: vx11d\nArchitecture: any\n' > "$shl/debian/control"
# Libraries the virtualenv carries itself (llama.cpp's libggml*.so beside libllama.so)
# are found there, not looked for in a Debian package.
private=$(find "$stage$prefix" -name '*.so*' -type f -printf '-l%h\n' | sort -u)
shlibs=$(cd "$shl" && find "$stage$prefix" -name '*.so' -print0 | xargs -0 dpkg-shlibdeps -O \
  --ignore-missing-info $private 2>"$shl/err" | sed -n 's/^shlibs:Depends=//p') || {
  echo "build.sh: dpkg-shlibdeps failed:" >&2; tail -5 "$shl/err" >&2; exit 1; }
rm -rf "$shl"
# procps: the units' ExecReload= runs /bin/kill (minbase has no procps).
depends="python3 (>= $py), python3 (<< $next), systemd (>= 252), dbus, procps${shlibs:+, $shlibs}"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: vx11d
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Recommends: prometheus-node-exporter
Suggests: grafana
Section: admin
Priority: optional
Homepage: https://example.org/vx11d
Description: keeps an AI services host clean, bounded and observable
 systemd-integrated daemons: a token-protected gateway on :8000, madre
 (short-lived workers with mandatory TTLs as transient units), a zombie and
 orphan reaper, an audit rotator on a timer and a local LLM worker under
 MemoryMax, sharing one SQLite database and exposing Prometheus metrics.
CONTROL
printf '%s\n' /etc/vx11/vx11.yml /etc/grafana/provisioning/dashboards/vx11d.yaml \
  > "$stage/DEBIAN/conffiles"
install -m 0755 "$repo/packaging/deb/preinst" "$repo/packaging/deb/postinst" \
  "$repo/packaging/deb/prerm" "$repo/packaging/deb/postrm" "$stage/DEBIAN/"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)
mkdir -p "$out"
deb="$out/vx11d_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
