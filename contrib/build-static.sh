#!/usr/bin/env bash
# Builds fully static, stripped fxproxy binaries (musl libc, no glibc, no dynamic loader) for
# small and old Linux hosts:
#
#   x86_64-unknown-linux-musl        PCs, servers, VMs
#   aarch64-unknown-linux-musl       64-bit ARM: Raspberry Pi 3/4/5, gateways, ARM servers
#   armv7-unknown-linux-musleabihf   32-bit ARMv7 with hardware float: older boards, routers
#
# usage: contrib/build-static.sh [--unit-tests] [TARGET...]     (default: all three)
#   --unit-tests  also run the library's unit tests built the same way, for each target
#                 (the ARM ones under qemu-user: apt-get install qemu-user)
#
# Prints the path of each binary it built, one a line, and nothing else on stdout; progress
# and cargo's output go to stderr. Each binary is checked: `file` must call it statically
# linked (or static-pie linked) and stripped, with no program interpreter and no shared library.
#
# What it needs (Debian package or rustup component), installed when run as root on Debian,
# else named with the command that installs it:
#   all      `file` and binutils (readelf) for the checks; the rustup toolchain (stable)
#   x86_64   rustup target x86_64-unknown-linux-musl; musl-tools (musl-gcc compiles ring's C)
#   aarch64  rustup target aarch64-unknown-linux-musl; gcc-aarch64-linux-gnu and
#            libc6-dev-arm64-cross (C compiler for ring, and the linker driver)
#   armv7    rustup component rust-src; gcc-arm-linux-gnueabihf; Debian's musl-dev for armhf,
#            which this script fetches with `apt-get download` into target/static-deps/
#            (a private package list: the host's dpkg architectures are left alone).
#            rustup serves no prebuilt standard library for this target here, so the script
#            builds one from the toolchain's own source (rust-src: same compiler, same
#            version) into target/static-deps/sysroot-armv7, once per rustc version; that
#            one step uses cargo's -Z build-std, allowed on stable with RUSTC_BOOTSTRAP=1.
#            Panics still unwind: the unwinder is gcc's libgcc_eh, as libunwind.a.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
PROFILE=static

say() { printf 'build-static: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

unit_tests=0
targets=()
for arg in "$@"; do
  case $arg in
    --unit-tests) unit_tests=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 0 ;;
    -*) die "unknown option $arg (see --help)" ;;
    *)
      [[ " ${ALL_TARGETS[*]} " == *" $arg "* ]] || die "unknown target $arg; one of: ${ALL_TARGETS[*]}"
      targets+=("$arg")
      ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
wants() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# --- what is needed -----------------------------------------------------------------------
command -v cargo >/dev/null && command -v rustup >/dev/null ||
  die "needs cargo and rustup (https://rustup.rs); the targets come from rustup"

packages=(file binutils)
rust_targets=()
commands=(file readelf)
if wants x86_64-unknown-linux-musl; then
  packages+=(musl-tools); commands+=(musl-gcc)
  rust_targets+=(x86_64-unknown-linux-musl)
fi
if wants aarch64-unknown-linux-musl; then
  packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross); commands+=(aarch64-linux-gnu-gcc)
  rust_targets+=(aarch64-unknown-linux-musl)
fi
if wants armv7-unknown-linux-musleabihf; then
  packages+=(gcc-arm-linux-gnueabihf); commands+=(arm-linux-gnueabihf-gcc apt-get dpkg-deb)
fi
if [ $unit_tests = 1 ]; then
  wants aarch64-unknown-linux-musl && { packages+=(qemu-user); commands+=(qemu-aarch64); }
  wants armv7-unknown-linux-musleabihf && { packages+=(qemu-user); commands+=(qemu-arm); }
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    apt-get update -qq >&2 || say "apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  elif ! command -v dpkg-query >/dev/null; then
    for c in "${commands[@]}"; do
      command -v "$c" >/dev/null || die "missing $c; on Debian it comes from: ${packages[*]}"
    done
  else
    die "missing Debian packages; as root: apt-get install --no-install-recommends ${missing[*]}"
  fi
fi

installed_targets=$(rustup target list --installed)
for t in "${rust_targets[@]}"; do
  grep -qx "$t" <<<"$installed_targets" || { say "rustup target add $t"; rustup target add "$t" >&2; }
done
if wants armv7-unknown-linux-musleabihf; then
  rustup component list --installed | grep -q '^rust-src' ||
    { say "rustup component add rust-src"; rustup component add rust-src >&2; }
fi

target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot tell cargo's target directory (cargo metadata)"
mkdir -p "$target_dir"

# --- armv7: a musl sysroot from Debian's musl-dev:armhf --------------------------------------
# Debian has musl for armhf, and its musl-gcc.specs turns the armhf cross gcc into a musl gcc:
# musl's headers for ring's C code, and musl's start files and libc.a when linking.
musl_armhf_sysroot() {
  local root="$target_dir/static-deps/musl-armhf"
  if [ ! -f "$root/musl-gcc.specs" ]; then
    local apt="$target_dir/static-deps/apt"
    rm -rf "$root" "$apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$root"
    local opts=(-o APT::Architecture=armhf -o APT::Architectures=armhf
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1)
    say "fetching Debian's musl-dev for armhf (apt-get download, private package list)"
    # An index that fails (a mirror mid-sync) does not matter if musl-dev's can be read.
    apt-get "${opts[@]}" update >"$apt/update.log" 2>&1 || true
    (cd "$apt" && apt-get "${opts[@]}" download musl-dev >>"$apt/update.log" 2>&1) || {
      cat "$apt/update.log" >&2
      die "could not download musl-dev for armhf (above)"
    }
    dpkg-deb -x "$apt"/musl-dev_*_armhf.deb "$root"
    local lib="$root/usr/lib/arm-linux-musleabihf" inc="$root/usr/include/arm-linux-musleabihf"
    [ -f "$lib/libc.a" ] && [ -f "$lib/musl-gcc.specs" ] || die "musl-dev for armhf lacks libc.a or musl-gcc.specs"
    # Rust's std links `-l unwind` statically on musl; gcc's libgcc_eh.a has the same _Unwind_*
    # interface (including ARM EHABI), so panics unwind as on the other targets.
    ln -sf "$(arm-linux-gnueabihf-gcc -print-file-name=libgcc_eh.a)" "$lib/libunwind.a"
    sed -e "s|/usr/include/arm-linux-musleabihf|$inc|g" -e "s|/usr/lib/arm-linux-musleabihf|$lib|g" \
      "$lib/musl-gcc.specs" >"$root/musl-gcc.specs.tmp"
    mv "$root/musl-gcc.specs.tmp" "$root/musl-gcc.specs"
  fi
  printf '%s\n' "$root/musl-gcc.specs"
}

# --- armv7: a standard library built from the toolchain's source ----------------------------
# Once per compiler version, in a crate of its own, into a private sysroot that the armv7 build
# then names with --sysroot. Only this step needs RUSTC_BOOTSTRAP=1 (for -Z build-std); fxproxy
# and its dependencies are built on plain stable, exactly as for the other two targets.
armv7_sysroot() {
  local t=armv7-unknown-linux-musleabihf
  local sysroot="$target_dir/static-deps/sysroot-armv7" work="$target_dir/static-deps/std-armv7"
  local version
  version=$(rustc -vV)
  if [ "$(cat "$sysroot/rustc-version" 2>/dev/null)" != "$version" ]; then
    say "building the standard library for $t from rust-src (once per rustc version)"
    rm -rf "$sysroot" "$work"
    mkdir -p "$work/src" "$sysroot/lib/rustlib/$t/lib"
    printf '%s\n' '[package]' 'name = "armv7-std"' 'version = "0.0.0"' 'edition = "2021"' \
      '[workspace]' '[profile.release]' 'debug = false' >"$work/Cargo.toml"
    : >"$work/src/lib.rs"
    # Bitcode in the rlibs, as in rustup's, so that the fat LTO of the static profile covers std.
    (cd "$work" && RUSTC_BOOTSTRAP=1 CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C embed-bitcode=yes" \
      nice -n 10 cargo build --release --target "$t" -Z build-std=std,panic_unwind,test >&2)
    find "$work/target/$t/release/deps" -name '*.rlib' ! -name 'libarmv7_std-*' \
      -exec cp {} "$sysroot/lib/rustlib/$t/lib/" \;
    printf '%s\n' "$version" >"$sysroot/rustc-version"
  fi
  printf '%s\n' "$sysroot"
}

# --- build --------------------------------------------------------------------------------
export CC_x86_64_unknown_linux_musl=musl-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64
if wants armv7-unknown-linux-musleabihf; then
  specs=$(musl_armhf_sysroot)
  sysroot=$(armv7_sysroot)
  export CC_armv7_unknown_linux_musleabihf=arm-linux-gnueabihf-gcc
  export CFLAGS_armv7_unknown_linux_musleabihf="-specs=$specs"
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=arm-linux-gnueabihf-gcc
  # Start files and libc come from the specs (Debian's musl), not from a Rust-shipped musl.
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="--sysroot $sysroot -C link-self-contained=no -C link-arg=-specs=$specs"
  export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUNNER=qemu-arm
fi

# One cargo run for every target: one dependency graph, build scripts and macros built once,
# both cores busy.
target_args=()
for t in "${targets[@]}"; do target_args+=(--target "$t"); done
say "cargo build --locked --profile $PROFILE ${target_args[*]}"
nice -n 10 cargo build --locked --profile "$PROFILE" "${target_args[@]}" >&2
if [ $unit_tests = 1 ]; then
  say "cargo test --locked --profile $PROFILE --lib ${target_args[*]}"
  nice -n 10 cargo test --locked --profile "$PROFILE" --lib "${target_args[@]}" >&2
fi

# --- check and print ------------------------------------------------------------------------
for t in "${targets[@]}"; do
  bin="$target_dir/$t/$PROFILE/fxproxy"
  [ -x "$bin" ] || die "$bin was not built"
  what=$(file -b "$bin")
  case $what in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$bin is not static: $what" ;;
  esac
  case $what in *", stripped"*) ;; *) die "$bin is not stripped: $what" ;; esac
  ! readelf -lW "$bin" | grep -q 'INTERP' || die "$bin asks for a program interpreter"
  ! readelf -dW "$bin" | grep -q '(NEEDED)' || die "$bin needs a shared library"
  say "$t: $(stat -c %s "$bin") bytes: $what"
  printf '%s\n' "$bin"
done
