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
    wire_schema(&fds, &out.join("wire_schema.rs"));
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
    println!("cargo::rustc-check-cfg=cfg(ringside_code_layout)");
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
        // The list, then the marker of its end (src/io/memory.rs pages out the code after
        // it, which only configuration updates and admin requests run).
        let ordered = PathBuf::from(var("OUT_DIR")).join("hot-code.txt");
        let mut text = std::fs::read_to_string(&list).unwrap();
        text.push_str("\nringside_hot_code_end\n");
        std::fs::write(&ordered, text).unwrap();
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            ordered.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        println!("cargo:rustc-cfg=ringside_code_layout");
    }
}

/// Every message's fields as static tables (src/xds/unknown.rs checks each xDS resource's
/// wire format against them): the descriptor pool, decoded, is about 4.6 MB of heap, which
/// every xDS update would otherwise decode again and hold until it has been idle a while.
/// Messages are sorted by full name and fields by number, for binary search; a field's
/// `message` is the index of its message type (`NONE` for scalars), and `shape` says
/// whether it is single (0), repeated (1) or a map (2, its type the map entry).
fn wire_schema(fds: &prost_types::FileDescriptorSet, out: &Path) {
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::DescriptorProto;
    use std::fmt::Write;
    fn walk<'a>(scope: &str, m: &'a DescriptorProto, all: &mut Vec<(String, &'a DescriptorProto)>) {
        let name = format!("{scope}.{}", m.name());
        for n in &m.nested_type {
            walk(&name, n, all);
        }
        all.push((name, m));
    }
    let mut all = Vec::new();
    for f in &fds.file {
        for m in &f.message_type {
            walk(f.package(), m, &mut all);
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let index = |type_name: &str| {
        let name = type_name.trim_start_matches('.');
        all.binary_search_by(|(n, _)| n.as_str().cmp(name))
            .unwrap_or_else(|_| panic!("{name} is not in proto/"))
    };
    let mut src = String::from("pub static MESSAGES: &[Schema] = &[\n");
    for (name, m) in &all {
        let mut fields: Vec<_> = m.field.iter().collect();
        fields.sort_by_key(|f| f.number());
        write!(src, "Schema {{ name: {name:?}, fields: &[").unwrap();
        for f in fields {
            let (message, shape) = match f.r#type() {
                Type::Message | Type::Group => {
                    let i = index(f.type_name());
                    let map = all[i].1.options.as_ref().is_some_and(|o| o.map_entry());
                    let shape = match (f.label(), map) {
                        (Label::Repeated, true) => 2,
                        (Label::Repeated, false) => 1,
                        _ => 0,
                    };
                    (i.to_string(), shape)
                }
                _ => ("NONE".into(), u8::from(f.label() == Label::Repeated)),
            };
            write!(
                src,
                "WireField {{ number: {}, name: {:?}, message: {message}, shape: {shape} }},",
                f.number(),
                f.name()
            )
            .unwrap();
        }
        src.push_str("] },\n");
    }
    src.push_str("];\n");
    writeln!(
        src,
        "pub const ANY: u16 = {};",
        index("google.protobuf.Any")
    )
    .unwrap();
    std::fs::write(out, src).unwrap();
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
