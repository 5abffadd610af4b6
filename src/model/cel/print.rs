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
        Value::Duration(d) => format_duration(*d, out),
        Value::Timestamp(t) => {
            let _ = write!(
                out,
                "{}",
                t.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            );
        }
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

/// A duration as `absl::FormatDuration` writes it: `72h3m0.5s`, `1.5s`, `150ms`, `0`.
fn format_duration(d: chrono::Duration, out: &mut String) {
    use std::fmt::Write as _;
    let mut ns = d.num_nanoseconds().unwrap_or(i64::MAX) as i128;
    if ns == 0 {
        out.push('0');
        return;
    }
    if ns < 0 {
        out.push('-');
        ns = -ns;
    }
    let frac = |n: i128, unit: i128, out: &mut String| {
        let whole = n / unit;
        let rest = n % unit;
        let _ = write!(out, "{whole}");
        if rest != 0 {
            let digits = (unit as f64).log10().round() as usize;
            let r = format!("{:0width$}", rest, width = digits);
            out.push('.');
            out.push_str(r.trim_end_matches('0'));
        }
    };
    const S: i128 = 1_000_000_000;
    if ns < S {
        let (unit, name) = match ns {
            n if n >= 1_000_000 => (1_000_000, "ms"),
            n if n >= 1_000 => (1_000, "us"),
            _ => (1, "ns"),
        };
        frac(ns, unit, out);
        out.push_str(name);
        return;
    }
    let h = ns / (3600 * S);
    let m = ns / (60 * S) % 60;
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let s = ns % (60 * S);
    frac(s, S, out);
    out.push('s');
}
