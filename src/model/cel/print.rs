//! How istio-proxy prints a CEL value into a tag (cel-cpp's values through absl).

use cel::objects::Value;

/// Appends `v` as istio-proxy prints a CEL value into a tag.
pub(super) fn print(v: &Value, out: &mut String) {
    use std::fmt::Write as _;
    match v {
        Value::String(s) => out.push_str(s),
        Value::Bytes(b) => out.push_str(&String::from_utf8_lossy(b)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Float(f) => write_six_digits(*f, out),
        Value::Null => out.push_str("NULL"),
        Value::Map(_) => out.push_str("CelMap value"),
        Value::List(_) => out.push_str("CelList value"),
        _ => out.push_str("unknown"),
    }
}

/// A double as `absl::StrCat` writes it: six significant digits (`%g`), as Envoy writes
/// numbers into tags.
pub fn six_digits(f: f64) -> String {
    let mut s = String::new();
    write_six_digits(f, &mut s);
    s
}

fn write_six_digits(f: f64, out: &mut String) {
    use std::fmt::Write as _;
    if f.is_nan() {
        out.push_str("nan");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    let exp = f.abs().log10().floor() as i32;
    // Round to six significant digits first: that may move the exponent.
    let s = format!("{:.5e}", f);
    let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(exp);
    if (-4..6).contains(&e) {
        let decimals = (5 - e).max(0) as usize;
        let fixed = format!("{:.*}", decimals, f);
        out.push_str(trim_zeros(&fixed));
    } else {
        let m = trim_zeros(mantissa);
        let _ = write!(
            out,
            "{m}e{}{:02}",
            if e < 0 { '-' } else { '+' },
            e.unsigned_abs()
        );
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}
