//! The field corpus in ../shared/compat: every bootstrap there is either accepted or refused
//! with a specific error naming file, line and the unsupported field or type. Never a panic.

use std::path::Path;
use std::process::Command;

#[test]
fn corpus_bootstraps_are_accepted_or_refused_precisely() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: {} is not here", dir.display());
        return;
    };
    let mut checked = 0;
    for e in entries {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("envoy-example-") || name.starts_with("istio-bootstrap-")) {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // pilot-agent's bootstraps, default and with all options, are accepted whole.
        if name == "istio-bootstrap-default.json" || name == "istio-bootstrap-all-options.json" {
            assert_eq!(out.status.code(), Some(0), "{name}: {err}");
        }
        match out.status.code() {
            Some(0) => {}
            Some(1) => {
                let first = err
                    .lines()
                    .find(|l| l.starts_with("error: "))
                    .unwrap_or_else(|| panic!("{name}: no error line in {err}"));
                assert!(
                    first.contains(&format!("{}:", path.display())),
                    "{name}: names the file and line: {first}"
                );
                assert!(
                    first.contains("unrecognized field name")
                        || first.contains("is not implemented")
                        || first.contains("not supported")
                        // A file the config refers to (a certificate) is not on this machine.
                        || first.contains("No such file or directory"),
                    "{name}: says what is unsupported: {first}"
                );
            }
            other => panic!("{name}: exit {other:?}: {err}"),
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} corpus files found");
}

/// istiod's outbound clusters carry Istio's TCP metadata exchange as an upstream filter:
/// accepted as a documented no-op (telemetry only). Any other upstream network filter is
/// refused by type.
#[test]
fn cluster_filters_accept_only_istio_metadata_exchange() {
    let dir = std::env::temp_dir().join(format!("ringside-compat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (filter, ok) in [
        ("{name: istio.metadata_exchange, typed_config: {\"@type\": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, protocol: istio-peer-exchange}}", true),
        ("{name: x, typed_config: {\"@type\": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange}}", true),
        ("{name: envoy.filters.network.rbac, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: x}}", false),
    ] {
        let cfg = dir.join("c.yaml");
        std::fs::write(
            &cfg,
            format!("static_resources:\n  clusters:\n  - name: c\n    filters: [{filter}]\n"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
            .args(["--mode", "validate", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{filter}: {err}");
        if !ok {
            assert!(
                err.contains("filters[0].typed_config: upstream network filter 'envoy.filters.network.rbac' of type envoy.extensions.filters.network.rbac.v3.RBAC is not supported"),
                "{err}"
            );
        }
    }
}
