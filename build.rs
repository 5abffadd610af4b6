//! Compiles `proto/` (our subset of Envoy's v3 API) with protox, a pure-Rust protobuf
//! compiler, so no system `protoc` is needed. The encoded descriptor set is written beside
//! the generated code for the runtime descriptor pool (proto3 JSON/YAML and `Any`).
use std::path::{Path, PathBuf};

fn main() {
    hot_code_first();
    let proto_root = Path::new("proto");
    let mut files = Vec::new();
    collect(proto_root, &mut files);
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(&files, [proto_root]).expect("compiling proto/");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .unwrap();
    // Messages through prost, the ADS service (client for the control thread, server for
    // the tests' control plane) through tonic.
    tonic_prost_build::configure()
        .include_file("_includes.rs")
        .build_transport(false)
        .compile_fds(fds)
        .expect("generating Rust from proto/");

    // The integration tests' gRPC service (client and server), included by tests/grpc.rs.
    println!("cargo:rerun-if-changed=tests/proto");
    let test_fds = protox::compile(["tests/proto/echo.proto"], ["tests/proto"])
        .expect("compiling tests/proto/echo.proto");
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(test_fds)
        .expect("generating Rust from tests/proto/");
}

/// Release builds of the binary lay the code the request path runs out together at the
/// start of `.text`, in the order perf/hot-code.txt lists it (written by
/// perf/code_layout.py). Linux maps a binary's pages in windows around each one first
/// touched, so that code, scattered among start-up and admin code, kept 8-9 MB of each
/// sidecar resident. Only where the linker is LLD (Rust's default for this target since
/// 1.90); names
/// it no longer finds are skipped. `RINGSIDE_CODE_LAYOUT=off` builds without it.
fn hot_code_first() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("perf/hot-code.txt");
    println!("cargo:rerun-if-changed=perf/hot-code.txt");
    println!("cargo:rerun-if-env-changed=RINGSIDE_CODE_LAYOUT");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    // Rust links this target with its own LLD from 1.90 on; before, with the system's
    // linker, which may not know the option.
    let rustc_minor = std::process::Command::new(var("RUSTC"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let v = String::from_utf8_lossy(&o.stdout).into_owned();
            v.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    let lld_default = var("TARGET") == "x86_64-unknown-linux-gnu"
        && rustc_minor.is_some_and(|m| m >= 90)
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("link")
        && std::env::var_os("RUSTC_LINKER").is_none();
    if var("PROFILE") == "release"
        && lld_default
        && var("RINGSIDE_CODE_LAYOUT") != "off"
        && list.exists()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
}
