//! CPU profiles on demand: `/debug/pprof/profile` (pprof's protobuf, what `go tool pprof`
//! and `pprof` read) and `/debug/pprof/flamegraph` (SVG). The whole process — every core,
//! the control thread — is sampled ([`crate::sampler`]) for `seconds` (1–60, default 10)
//! at `hz` (1–1,000, default 99), one profile at a time. Sampling costs only while a
//! profile is being taken, and its memory is freed after it; the report is built on a
//! blocking thread, never on a core or the control thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::symbols::Resolved;
use crate::proto::perftools::profiles as pb;

/// One profile at a time (pprof-rs has one process-wide profiler).
static TAKING: AtomicBool = AtomicBool::new(false);

/// What a profile is returned as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pprof,
    Flamegraph,
}

/// Takes a profile as `params` ask: (status, content type, body).
pub async fn take(params: &HashMap<&str, &str>, format: Format) -> (u16, &'static str, Vec<u8>) {
    let text = "text/plain; charset=UTF-8";
    let number = |key: &str, default: u64, max: u64| match params.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("{key} must be a whole number from 1 to {max}\n")),
        },
    };
    let (seconds, hz) = match (number("seconds", 10, 60), number("hz", 99, 1000)) {
        (Ok(s), Ok(h)) => (s, h),
        (Err(e), _) | (_, Err(e)) => return (400, text, e.into_bytes()),
    };
    if TAKING.swap(true, Ordering::AcqRel) {
        return (409, text, b"a profile is already being taken\n".to_vec());
    }
    let taken = tokio::task::spawn_blocking(move || {
        let r = sample(Duration::from_secs(seconds), hz as i32, format);
        TAKING.store(false, Ordering::Release);
        r
    })
    .await;
    match taken {
        Ok(Ok(body)) => match format {
            Format::Pprof => (200, "application/octet-stream", body),
            Format::Flamegraph => (200, "image/svg+xml", body),
        },
        Ok(Err(e)) => (500, text, format!("profiling failed: {e}\n").into_bytes()),
        Err(e) => {
            TAKING.store(false, Ordering::Release);
            (500, text, format!("profiling failed: {e}\n").into_bytes())
        }
    }
}

/// The most samples one profile keeps (about 17 MB of stacks); past it, samples are
/// dropped (and logged).
const MAX_SAMPLES: usize = 32_768;

/// Samples the process for `duration` and encodes the report.
fn sample(duration: Duration, hz: i32, format: Format) -> Result<Vec<u8>, String> {
    // Room for every CPU busy for the whole time (the timer counts CPU time).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let room = (duration.as_secs() as usize * hz as usize * cpus * 11 / 10 + 64).min(MAX_SAMPLES);
    let start = std::time::SystemTime::now();
    let taken = crate::sampler::sample(duration, hz as u32, room)?;
    if taken.dropped > 0 {
        tracing::info!(dropped = taken.dropped, "CPU profile full: samples dropped");
    }
    let timing = (start, duration);
    let resolved = super::symbols::resolve(&taken.stacks);
    drop(taken);
    let mut out = Vec::new();
    match format {
        Format::Flamegraph => flamegraph(&resolved, &mut out)?,
        Format::Pprof => prost::Message::encode(&pprof_profile(&resolved, hz, timing), &mut out)
            .map_err(|e| e.to_string())?,
    }
    drop(resolved);
    // What the profile used (its stacks, the symbol table) goes back to the OS now.
    crate::io::release_free_memory();
    Ok(out)
}

/// An SVG flame graph (inferno's), one tower per thread.
fn flamegraph(r: &Resolved, out: &mut Vec<u8>) -> Result<(), String> {
    if r.samples.is_empty() {
        // Nothing ran: a graph that says so (inferno draws nothing from no samples).
        out.extend_from_slice(
            b"<?xml version=\"1.0\" standalone=\"no\"?><svg version=\"1.1\" width=\"1200\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"30\">No CPU samples: the process was idle while it was sampled.</text></svg>\n",
        );
        return Ok(());
    }
    let lines: Vec<String> = r
        .samples
        .iter()
        .map(|s| {
            let mut line = s.thread.replace(';', ":");
            for &f in s.stack.iter().rev() {
                line.push(';');
                line.push_str(&r.names[f].replace(';', ":"));
            }
            line.push(' ');
            line.push_str(&s.count.to_string());
            line
        })
        .collect();
    let mut options = inferno::flamegraph::Options::default();
    options.title = "Ringside CPU".into();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| e.to_string())
}

/// The profile in pprof's format: two sample types (samples, CPU nanoseconds), a location
/// per function, each sample labelled with its thread.
fn pprof_profile(
    r: &Resolved,
    hz: i32,
    (start, duration): (std::time::SystemTime, Duration),
) -> pb::Profile {
    let mut strings = Strings::default();
    let period = 1_000_000_000 / i64::from(hz.max(1));
    let value_type = |strings: &mut Strings, t: &str, u: &str| pb::ValueType {
        r#type: strings.id(t),
        unit: strings.id(u),
    };
    let sample_type = vec![
        value_type(&mut strings, "samples", "count"),
        value_type(&mut strings, "cpu", "nanoseconds"),
    ];
    let period_type = Some(value_type(&mut strings, "cpu", "nanoseconds"));
    let thread = strings.id("thread");
    // Function and location ids are the name's index plus one.
    let mut profile = pb::Profile {
        sample_type,
        period_type,
        period,
        ..Default::default()
    };
    for (i, name) in r.names.iter().enumerate() {
        let id = i as u64 + 1;
        let name = strings.id(name);
        profile.function.push(pb::Function {
            id,
            name,
            system_name: name,
            ..Default::default()
        });
        profile.location.push(pb::Location {
            id,
            line: vec![pb::Line {
                function_id: id,
                line: 0,
                column: 0,
            }],
            ..Default::default()
        });
    }
    for s in &r.samples {
        profile.sample.push(pb::Sample {
            location_id: s.stack.iter().map(|&f| f as u64 + 1).collect(),
            value: vec![s.count, s.count * period],
            label: vec![pb::Label {
                key: thread,
                str: strings.id(&s.thread),
                ..Default::default()
            }],
        });
    }
    profile.time_nanos = start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    profile.duration_nanos = duration.as_nanos() as i64;
    profile.string_table = strings.list;
    profile
}

/// pprof's string table: index 0 is the empty string.
struct Strings {
    list: Vec<String>,
    index: HashMap<String, i64>,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            list: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl Strings {
    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}
