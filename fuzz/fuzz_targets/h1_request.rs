//! `cargo fuzz run h1_request`: the HTTP/1 head parser and chunked decoder never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringside::http::h1::{parse_request, ChunkedDecoder, RequestHead};

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    let _ = parse_request(data, 100, 60 * 1024, &mut head);
    let mut d = ChunkedDecoder::default();
    let _ = d.feed(data, |_| {});
});
