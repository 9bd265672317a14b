#!/usr/bin/env bash
# Packages fxproxy for installing without a Rust toolchain, for x86_64, aarch64 and armv7,
# from the static binaries of contrib/build-static.sh (built, or rebuilt, by it first):
#
#   target/package/fxproxy-VERSION-TARGET.tar.gz   the binary, proxy.conf, an example keys
#       file, the systemd unit, socket and drop-in, README.md, docs/, the licences
#   target/package/fxproxy_VERSION-1_ARCH.deb      (ARCH: amd64, arm64, armhf)
#       /usr/bin/fxproxy; fxproxy.service and fxproxy.socket in /lib/systemd/system;
#       /etc/fxproxy/proxy.conf and /etc/fxproxy/users.keys as conffiles (root:fxproxy 0640);
#       the system user and group `fxproxy` from /usr/lib/sysusers.d/fxproxy.conf
#       (systemd-sysusers, or adduser/useradd where there is none); the service never runs
#       as root. Installing it enables and starts fxproxy.socket and fxproxy.service where
#       systemd runs; an upgrade restarts the service, which clients ride through on the
#       socket (docs/install.md, "Packages").
#
# usage: contrib/package.sh [TARGET...]     (default: all three; see contrib/build-static.sh)
#
# Prints the path of each file it made, one a line, and nothing else on stdout; progress goes
# to stderr. Needs what contrib/build-static.sh needs, plus tar, gzip and dpkg-deb (Debian:
# dpkg). The archives are reproducible: every file's time is the last commit's
# (SOURCE_DATE_EPOCH overrides it), owners are root, entries sorted.
# contrib/check-package.sh installs the host's .deb and checks that the service serves.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'package: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

for arg in "$@"; do
  case $arg in
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 0 ;;
    -*) die "unknown option $arg (see --help)" ;;
  esac
done
for c in tar gzip dpkg-deb; do
  command -v "$c" >/dev/null || die "needs $c (Debian: apt-get install tar gzip dpkg)"
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
revision=1
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch

deb_arch() {
  case $1 in
    x86_64-unknown-linux-musl) echo amd64 ;;
    aarch64-unknown-linux-musl) echo arm64 ;;
    armv7-unknown-linux-musleabihf) echo armhf ;;
    *) die "no Debian architecture for $1" ;;
  esac
}

mapfile -t bins < <(contrib/build-static.sh "$@")
[ ${#bins[@]} -gt 0 ] || die "contrib/build-static.sh built nothing"
out=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/package
mkdir -p "$out"

# tarball DIR FILE: a reproducible .tar.gz of DIR (its last path component at the top).
tarball() {
  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    -C "$(dirname "$1")" -cf - "$(basename "$1")" | gzip -9n >"$2"
}

# The files every package holds beside the binary.
docs=(README.md LICENSE-MIT LICENSE-APACHE)

for bin in "${bins[@]}"; do
  target=$(basename "$(dirname "$(dirname "$bin")")")
  arch=$(deb_arch "$target")
  work=$(mktemp -d "$out/.work-XXXXXX")
  trap 'rm -rf "$work"' EXIT

  # --- tarball ---------------------------------------------------------------------------
  name=fxproxy-$version-$target
  t=$work/$name
  mkdir -p "$t/docs" "$t/fxproxy.service.d"
  install -m 0755 "$bin" "$t/fxproxy"
  install -m 0644 proxy.conf users.keys contrib/fxproxy.service contrib/fxproxy.socket "${docs[@]}" "$t/"
  install -m 0644 contrib/fxproxy.service.d/notify-reload.conf "$t/fxproxy.service.d/"
  install -m 0644 docs/*.md "$t/docs/"
  tarball "$t" "$out/$name.tar.gz"
  say "$target: $out/$name.tar.gz ($(stat -c %s "$out/$name.tar.gz") bytes)"
  printf '%s\n' "$out/$name.tar.gz"

  # --- .deb ------------------------------------------------------------------------------
  d=$work/deb
  mkdir -p "$d/DEBIAN" "$d/usr/bin" "$d/lib/systemd/system" "$d/usr/lib/sysusers.d" \
    "$d/etc/fxproxy" "$d/usr/share/doc/fxproxy"
  install -m 0755 "$bin" "$d/usr/bin/fxproxy"
  # The unit as shipped, with the program where the package puts it.
  sed 's|^ExecStart=/usr/local/bin/fxproxy |ExecStart=/usr/bin/fxproxy |' contrib/fxproxy.service \
    >"$d/lib/systemd/system/fxproxy.service"
  grep -q '^ExecStart=/usr/bin/fxproxy ' "$d/lib/systemd/system/fxproxy.service" ||
    die "contrib/fxproxy.service has no 'ExecStart=/usr/local/bin/fxproxy ' line to point at /usr/bin"
  install -m 0644 contrib/fxproxy.socket "$d/lib/systemd/system/"
  chmod 0644 "$d/lib/systemd/system/fxproxy.service"
  # Read by systemd's DynamicUser= too: with a static user of the unit's name, that user runs it.
  printf '%s\n' '# The user fxproxy.service runs as: never root, no login, no home.' \
    'u fxproxy - "fxproxy market-data proxy" /nonexistent /usr/sbin/nologin' \
    >"$d/usr/lib/sysusers.d/fxproxy.conf"
  chmod 0644 "$d/usr/lib/sysusers.d/fxproxy.conf"
  # Group fxproxy is given to them by postinst, once the group exists.
  install -m 0640 proxy.conf users.keys "$d/etc/fxproxy/"
  install -m 0644 README.md contrib/fxproxy.service.d/notify-reload.conf docs/install.md \
    "$d/usr/share/doc/fxproxy/"
  {
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: fxproxy"
    echo
    echo "Files: *"
    echo "Copyright: The fxproxy developers"
    echo "License: MIT or Apache-2.0"
    echo " Either licence, at your option. The MIT licence:"
    echo " ."
    sed -e 's/^$/./' -e 's/^/ /' LICENSE-MIT
    echo " ."
    echo " The Apache License 2.0: /usr/share/common-licenses/Apache-2.0"
  } >"$d/usr/share/doc/fxproxy/copyright"
  chmod 0644 "$d/usr/share/doc/fxproxy/"*
  printf '%s\n' /etc/fxproxy/proxy.conf /etc/fxproxy/users.keys >"$d/DEBIAN/conffiles"
  size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
  cat >"$d/DEBIAN/control" <<EOF
Package: fxproxy
Version: $version-$revision
Architecture: $arch
Maintainer: The fxproxy developers <fxproxy@localhost>
Installed-Size: $size
Section: net
Priority: optional
Description: WebSocket proxy fanning one Forex market-data feed out to many clients
 fxproxy holds one connection to a market-data provider's WebSocket (TraderMade
 and the like, or its built-in simulated source) and fans every quote out, byte
 for byte, to any number of authenticated clients, speaking to them the
 provider's own protocol. Synchronous and thread-per-connection; a static
 binary with no dependency.
 .
 The service, fxproxy.service, runs as the system user fxproxy with the
 configuration in /etc/fxproxy; fxproxy.socket holds its client port
 (127.0.0.1:8765) so that restarts refuse nobody.
EOF
  install -m 0755 contrib/debian/postinst contrib/debian/prerm contrib/debian/postrm "$d/DEBIAN/"
  deb=$out/fxproxy_${version}-${revision}_$arch.deb
  # Every file root-owned; times clamped for a reproducible archive.
  find "$d" -exec touch -h -d "@$epoch" {} +
  dpkg-deb --root-owner-group -Zxz --build "$d" "$deb" >&2
  say "$target: $deb ($(stat -c %s "$deb") bytes)"
  printf '%s\n' "$deb"

  rm -rf "$work"
  trap - EXIT
done
