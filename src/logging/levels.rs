//! The log level of each of Envoy's logger names, as `-l` and `--component-log-level` set
//! them at start and admin's `POST /logging` changes them at run time (istioctl
//! proxy-config log).
// Taken by the admin handler on the control thread only; cores never touch it (their log
// filter is swapped through tracing-subscriber's reload layer).
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

use super::COMPONENTS;

/// Envoy's level names, in its order.
const NAMES: [&str; 7] = [
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

/// Every logger's level (Envoy's spelling); the default applies to modules no logger names.
struct Levels {
    default: &'static str,
    per: BTreeMap<&'static str, &'static str>,
}

static LEVELS: Mutex<Option<Levels>> = Mutex::new(None);

/// Swaps the running log's filter.
pub(super) type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Applies a new filter to the running log (set by [`super::init`]).
pub(super) static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Envoy's name for a level given on the command line (which also takes `warn`, `err` and
/// upper case, as Envoy's flag parser does).
pub(super) fn cli_name(s: &str) -> Option<&'static str> {
    Some(match s.to_ascii_lowercase().as_str() {
        "warn" => "warning",
        "err" => "error",
        l => NAMES.into_iter().find(|n| *n == l)?,
    })
}

/// A level as a `tracing` directive (no `critical` there: it is `error`).
fn directive(level: &str) -> &'static str {
    match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" => "warn",
        "off" => "off",
        _ => "error",
    }
}

impl Levels {
    fn filter(&self) -> Result<EnvFilter, String> {
        // A module several loggers name (`upstream` and `pool`) logs at the most verbose
        // of the levels set for them; modules no set logger names follow the default.
        let rank = |l: &str| NAMES.iter().position(|n| *n == l).unwrap_or(NAMES.len());
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, mods) in COMPONENTS {
            let Some(&level) = self.per.get(name) else {
                continue;
            };
            for t in mods.iter() {
                let e = targets.entry(t).or_insert(level);
                if rank(level) < rank(e) {
                    *e = level;
                }
            }
        }
        let mut d = directive(self.default).to_string();
        for (t, level) in targets {
            let _ = write!(d, ",{t}={}", directive(level));
        }
        EnvFilter::try_new(&d).map_err(|e| format!("log filter '{d}': {e}"))
    }

    fn list(&self, out: &mut String) {
        out.push_str("active loggers:\n");
        let mut names: Vec<&str> = COMPONENTS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        for n in names {
            let level = self.per.get(n).copied().unwrap_or(self.default);
            let _ = writeln!(out, "  {n}: {level}");
        }
        out.push('\n');
    }
}

/// Records the levels the command line set and returns their filter.
pub(super) fn start(
    default: &'static str,
    per: Vec<(&'static str, &'static str)>,
) -> Result<EnvFilter, String> {
    let levels = Levels {
        default,
        per: per.into_iter().collect(),
    };
    let f = levels.filter();
    *LEVELS.lock().unwrap_or_else(|e| e.into_inner()) = Some(levels);
    f
}

/// Admin's `POST /logging`: with no parameter, the loggers and their levels; with one of
/// `level=`, `paths=name:level,...` or `name=level`, changes them first. Answers as Envoy
/// 1.40 does, errors (400) included.
pub fn admin(params: &[(&str, &str)]) -> (u16, String) {
    let mut guard = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
    let levels = guard.get_or_insert_with(|| Levels {
        default: "info",
        per: BTreeMap::new(),
    });
    let known = |n: &str| COMPONENTS.iter().find(|(c, _)| *c == n).map(|(c, _)| *c);
    let level = |l: &str| NAMES.into_iter().find(|n| *n == l);
    let result: Result<(), &str> = match params {
        [] => Ok(()),
        [_, _, ..] => Err("invalid number of parameters"),
        [("level", "")] => Ok(()),
        [("level", l)] => match level(l) {
            Some(l) => {
                levels.default = l;
                levels.per.clear();
                Ok(())
            }
            None => Err("unknown logger level"),
        },
        [("group", _)] => Err("group parameter requires fine-grain logging to be enabled"),
        [("paths", list)] => {
            let mut changes = Vec::new();
            let mut bad = Ok(());
            for item in list.split(',').filter(|s| !s.is_empty()) {
                let (n, l) = item.split_once(':').unwrap_or((item, ""));
                match (known(n), level(l)) {
                    (None, _) => bad = bad.and(Err("unknown logger name")),
                    (_, None) => bad = bad.and(Err("unknown logger level")),
                    (Some(n), Some(l)) => changes.push((n, l)),
                }
            }
            bad.map(|()| levels.per.extend(changes))
        }
        [(name, l)] => match (known(name), level(l)) {
            (None, _) => Err("unknown logger name"),
            (_, None) => Err("unknown logger level"),
            (Some(n), Some(l)) => {
                levels.per.insert(n, l);
                Ok(())
            }
        },
    };
    let mut out = String::new();
    let status = match result {
        Ok(()) => {
            if !params.is_empty() {
                if let (Some(reload), Ok(f)) = (RELOAD.get(), levels.filter()) {
                    if let Err(e) = reload(f) {
                        tracing::warn!("log levels not applied: {e}");
                    }
                }
            }
            200
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}\n");
            out.push_str(
                "usage: /logging?<name>=<level> (change single level)\n\
                 usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
                 usage: /logging?level=<level> (change all levels)\n\
                 usage: /logging?group=<group_name>:<level> (change group of loggers)\n\
                 levels: trace debug info warning error critical off \n",
            );
            400
        }
    };
    levels.list(&mut out);
    (status, out)
}
