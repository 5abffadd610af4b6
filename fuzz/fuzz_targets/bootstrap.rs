//! `cargo fuzz run bootstrap`: any text through parse and conversion gives a value or an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringside::config::{parse_bootstrap, Source};
use ringside::model::convert::bootstrap_snapshot;
use ringside::stats::Store;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(b) = parse_bootstrap(text, &Source::Inline) {
            let _ = bootstrap_snapshot(&b, &Store::new(1), 1);
        }
    }
});
