//! `/stats` in Envoy's forms: histogram quantiles as text and JSON, and the Prometheus
//! exposition with Envoy's tag extraction.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// A histogram as Envoy's `/stats` prints it: each quantile as `P<q>(interval,cumulative)`.
/// Ringside keeps no flush intervals, so the interval value is `nan`, as Envoy prints it
/// for an interval without samples.
pub(super) fn quantiles_text(h: &crate::stats::HistValue) -> String {
    if h.count == 0 {
        return "No recorded values".into();
    }
    let mut out = String::new();
    for q in crate::stats::QUANTILES {
        if !out.is_empty() {
            out.push(' ');
        }
        let v = h.quantile(q).unwrap_or(f64::NAN);
        let _ = write!(out, "P{q}(nan,{v})");
    }
    out
}

/// Envoy's JSON form of histograms: an entry of the `stats` list.
pub(super) fn histograms_json(hists: &[crate::stats::HistValue]) -> Value {
    let computed: Vec<Value> = hists
        .iter()
        .map(|h| {
            let values: Vec<Value> = crate::stats::QUANTILES
                .iter()
                .map(|&q| json!({"interval": null, "cumulative": h.quantile(q)}))
                .collect();
            json!({"name": h.name, "values": values})
        })
        .collect();
    json!({"histograms": {"supported_quantiles": crate::stats::QUANTILES, "computed_quantiles": computed}})
}

/// The Prometheus exposition as Envoy prints it: counters, then gauges, then histograms;
/// within each, one `# TYPE` per tag-extracted name (ordered token by token, as Envoy's
/// symbol table orders them) and its stats by full name, each with its tags as labels.
pub(super) fn prometheus(
    store: &crate::stats::Store,
    stats: &[crate::stats::StatValue],
    hists: &[crate::stats::HistValue],
) -> String {
    let mut out = String::new();
    for gauges in [false, true] {
        let group = stats
            .iter()
            .filter(|s| s.gauge == gauges)
            .map(|s| (store.tagged(&s.name), s));
        let kind = if gauges { "gauge" } else { "counter" };
        for_each_family(
            group,
            |s| &s.name,
            &mut out,
            kind,
            |out, name, labels, s| {
                let _ = writeln!(out, "{name}{{{labels}}} {}", s.value);
            },
        );
    }
    let group = hists.iter().map(|h| (store.tagged(&h.name), h));
    for_each_family(
        group,
        |h| &h.name,
        &mut out,
        "histogram",
        |out, name, labels, h| {
            let sep = if labels.is_empty() { "" } else { "," };
            for (i, c) in h.cumulative.iter().enumerate() {
                let le = match crate::stats::HISTOGRAM_BOUNDS.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".into(),
                };
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        },
    );
    out
}

/// Sorts `items` into families by tag-extracted name and prints each under its `# TYPE`.
fn for_each_family<'a, T: 'a>(
    items: impl Iterator<Item = (std::sync::Arc<crate::stats::tags::Tagged>, &'a T)>,
    full_name: impl Fn(&T) -> &str,
    out: &mut String,
    kind: &str,
    mut print: impl FnMut(&mut String, &str, &str, &T),
) {
    let tokens = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
    let mut items: Vec<_> = items
        .map(|(t, v)| ((tokens(&t.name), tokens(full_name(v))), t, v))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut last: Option<&str> = None;
    for (_, tagged, v) in &items {
        let name = format!("envoy_{}", sanitize(&tagged.name));
        if last != Some(tagged.name.as_str()) {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last = Some(&tagged.name);
        }
        let labels: Vec<String> = tagged
            .tags
            .iter()
            .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape(v)))
            .collect();
        print(out, &name, &labels.join(","), v);
    }
}

/// Envoy's Prometheus name rule: every character outside `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A label value with `\`, newline and `"` escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}
