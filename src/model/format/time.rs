//! `%START_TIME%` and `%START_TIME(FORMAT)%`: Envoy's default ISO 8601 form, and its
//! strftime-like formats (in UTC, as Envoy writes them) with Envoy's additions `%s` (epoch
//! seconds) and `%f` / `%1f`..`%9f` (fractional seconds, nine digits or as many as named).

use std::fmt::Write as _;
use std::time::SystemTime;

/// A parsed `START_TIME(...)` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat(Vec<Piece>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Lit(char),
    /// A strftime conversion character.
    Conv(char),
    /// Fractional seconds with this many digits.
    Frac(u8),
}

/// The strftime conversions supported (those absl's FormatTime and Envoy agree on).
const CONVERSIONS: &str = "YmdHMSyjeaAbBpIzZsTFDR";

impl TimeFormat {
    /// Parses `spec`; an unsupported conversion is an error naming it.
    pub fn parse(spec: &str) -> Result<TimeFormat, String> {
        let mut out = Vec::new();
        let mut chars = spec.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(Piece::Lit(c));
                continue;
            }
            match chars.next() {
                Some('%') => out.push(Piece::Lit('%')),
                Some('f') => out.push(Piece::Frac(9)),
                Some(d @ '1'..='9') => match chars.next() {
                    Some('f') => out.push(Piece::Frac(d as u8 - b'0')),
                    _ => return Err(format!("START_TIME format `{spec}`: `%{d}` must be followed by `f`")),
                },
                Some(c) if CONVERSIONS.contains(c) => out.push(Piece::Conv(c)),
                Some(c) => {
                    return Err(format!(
                        "START_TIME format `{spec}`: the conversion `%{c}` is not supported (supported: %f, %1f..%9f, and %{})",
                        CONVERSIONS.chars().map(String::from).collect::<Vec<_>>().join(", %")
                    ))
                }
                None => return Err(format!("START_TIME format `{spec}` ends with `%`")),
            }
        }
        Ok(TimeFormat(out))
    }

    /// Appends `t` in this format.
    pub fn write(&self, t: SystemTime, out: &mut Vec<u8>) {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        let days = secs.div_euclid(86_400);
        let (y, m, day) = civil_from_days(days);
        let sod = secs.rem_euclid(86_400);
        let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
        let mut s = String::new();
        for p in &self.0 {
            let _ = match *p {
                Piece::Lit(c) => {
                    s.push(c);
                    Ok(())
                }
                Piece::Frac(n) => {
                    let nanos = format!("{:09}", d.subsec_nanos());
                    s.push_str(&nanos[..usize::from(n)]);
                    Ok(())
                }
                Piece::Conv(c) => match c {
                    'Y' => write!(s, "{y:04}"),
                    'm' => write!(s, "{m:02}"),
                    'd' => write!(s, "{day:02}"),
                    'e' => write!(s, "{day:2}"),
                    'H' => write!(s, "{hh:02}"),
                    'I' => write!(s, "{:02}", (hh + 11) % 12 + 1),
                    'M' => write!(s, "{mm:02}"),
                    'S' => write!(s, "{ss:02}"),
                    'p' => write!(s, "{}", if hh < 12 { "AM" } else { "PM" }),
                    'y' => write!(s, "{:02}", y.rem_euclid(100)),
                    'j' => write!(s, "{:03}", days - days_from_civil(y, 1, 1) + 1),
                    'a' => write!(s, "{}", &WEEKDAYS[weekday(days)][..3]),
                    'A' => write!(s, "{}", WEEKDAYS[weekday(days)]),
                    'b' => write!(s, "{}", &MONTHS[m as usize - 1][..3]),
                    'B' => write!(s, "{}", MONTHS[m as usize - 1]),
                    'z' => write!(s, "+0000"),
                    'Z' => write!(s, "UTC"),
                    's' => write!(s, "{secs}"),
                    'T' => write!(s, "{hh:02}:{mm:02}:{ss:02}"),
                    'R' => write!(s, "{hh:02}:{mm:02}"),
                    'F' => write!(s, "{y:04}-{m:02}-{day:02}"),
                    'D' => write!(s, "{m:02}/{day:02}/{:02}", y.rem_euclid(100)),
                    _ => Ok(()),
                },
            };
        }
        out.extend_from_slice(s.as_bytes());
    }
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// 0 = Sunday; 1970-01-01 was a Thursday.
fn weekday(days: i64) -> usize {
    (days + 4).rem_euclid(7) as usize
}

/// Writes `t` as Envoy's default START_TIME: `2026-11-24T23:59:01.123Z`.
pub fn write_start_time(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    // Straight into `out`: no allocation per log line.
    let _ = std::io::Write::write_fmt(
        out,
        format_args!(
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60,
            d.subsec_millis()
        ),
    );
}

/// `t` as protobuf's JSON writes a `Timestamp`: UTC, with 3, 6 or 9 fractional digits (as
/// few as the nanoseconds need), none when they are 0.
pub fn write_rfc3339_nanos(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let frac = match d.subsec_nanos() {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
        n => format!(".{n:09}"),
    };
    let _ = std::io::Write::write_fmt(
        out,
        format_args!(
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}{frac}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60,
        ),
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
    }

    #[test]
    fn start_time_is_iso8601() {
        let mut out = Vec::new();
        write_start_time(at(1_795_996_741_123), &mut out);
        assert_eq!(out, b"2026-11-29T23:59:01.123Z");
    }

    /// The same instant through Envoy 1.40 printed exactly these strings.
    #[test]
    fn custom_formats_match_envoy() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_796_530_967, 601_547_000);
        let f = TimeFormat::parse("%Y-%m-%dT%H:%M:%S.%f %z %Z %a %b %e %j %y %T %F %p %I %D %R %%")
            .unwrap();
        let mut out = Vec::new();
        f.write(t, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "2026-12-06T04:22:47.601547000 +0000 UTC Sun Dec  6 340 26 04:22:47 2026-12-06 AM 04 12/06/26 04:22 %"
        );
        let mut out = Vec::new();
        TimeFormat::parse("%s.%3f|%6f|%1f")
            .unwrap()
            .write(t, &mut out);
        assert_eq!(out, b"1796530967.601|601547|6");
    }

    #[test]
    fn unsupported_conversions_are_named() {
        assert!(TimeFormat::parse("%E4S").unwrap_err().contains("`%E`"));
        assert!(TimeFormat::parse("%3x").is_err());
        assert!(TimeFormat::parse("abc%").is_err());
    }
}
