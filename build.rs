//! Tells the binary what it was built for and with, for `fxproxy_build_info` in /metrics: the
//! target triple (Cargo gives it to build scripts only) and the compiler's version.

use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    // `rustc 1.89.0 (29483883e 2025-08-04)`: the version is the second word.
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FXPROXY_TARGET={target}");
    println!("cargo:rustc-env=FXPROXY_RUSTC={version}");
    // Cargo builds everything again for another compiler or target anyway; nothing else here
    // can change.
    println!("cargo:rerun-if-changed=build.rs");
}
