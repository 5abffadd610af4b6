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
        // pilot-agent's default bootstrap is accepted whole.
        if name == "istio-bootstrap-default.json" {
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
