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

/// Envoy-style Prometheus names: the well-known scope names become labels.
pub(super) fn prometheus(
    stats: &[crate::stats::StatValue],
    hists: &[crate::stats::HistValue],
) -> String {
    let mut families: std::collections::BTreeMap<String, (bool, Vec<(String, i64)>)> =
        Default::default();
    for s in stats {
        let (name, labels) = prometheus_name(&s.name);
        let entry = families.entry(name).or_insert((s.gauge, Vec::new()));
        entry.1.push((labels, s.value));
    }
    let mut out = String::new();
    for (name, (gauge, samples)) in families {
        let _ = writeln!(
            out,
            "# TYPE {name} {}",
            if gauge { "gauge" } else { "counter" }
        );
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }
    // Histograms: cumulative buckets at Envoy's bounds, then sum and count.
    let mut families: std::collections::BTreeMap<String, Vec<(String, &crate::stats::HistValue)>> =
        Default::default();
    for h in hists {
        let (name, labels) = prometheus_name(&h.name);
        families.entry(name).or_default().push((labels, h));
    }
    for (name, samples) in families {
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (labels, h) in samples {
            let inner = labels.trim_start_matches('{').trim_end_matches('}');
            let sep = if inner.is_empty() { "" } else { "," };
            for (i, c) in h.cumulative.iter().enumerate() {
                let le = match crate::stats::HISTOGRAM_BOUNDS.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".into(),
                };
                let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_sum{labels} {}", h.sum);
            let _ = writeln!(out, "{name}_count{labels} {}", h.count);
        }
    }
    out
}

/// Envoy's response-code tag extractors: `upstream_rq_200` is `upstream_rq` with
/// `envoy_response_code="200"`, `upstream_rq_2xx` (and `downstream_rq_2xx`) is `…_rq_xx`
/// with `envoy_response_code_class="2"`; the label comes first, as Envoy prints it.
fn response_code_tag<'a>(metric: &'a str, labels: &mut Vec<String>) -> std::borrow::Cow<'a, str> {
    let Some((base, last)) = metric.rsplit_once('_') else {
        return metric.into();
    };
    let b = last.as_bytes();
    if !base.ends_with("_rq") {
        return metric.into();
    }
    if b.len() == 3 && b.iter().all(u8::is_ascii_digit) && base == "upstream_rq" {
        labels.push(format!("envoy_response_code=\"{last}\""));
        return base.into();
    }
    if b.len() == 3 && b[0].is_ascii_digit() && &b[1..] == b"xx" {
        labels.push(format!("envoy_response_code_class=\"{}\"", b[0] as char));
        return format!("{base}_xx").into();
    }
    metric.into()
}

fn prometheus_name(stat: &str) -> (String, String) {
    let sanitize = |s: &str| {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    };
    let mut labels = Vec::new();
    let rest: String;
    if let Some(r) = stat.strip_prefix("cluster.") {
        let (name, metric) = r.rsplit_once('.').unwrap_or(("", r));
        let metric = response_code_tag(metric, &mut labels);
        labels.push(format!("envoy_cluster_name=\"{name}\""));
        rest = format!("cluster_{metric}");
    } else if let Some(r) = stat.strip_prefix("http.") {
        let (prefix, metric) = r.split_once('.').unwrap_or(("", r));
        let metric = response_code_tag(metric, &mut labels);
        labels.push(format!("envoy_http_conn_manager_prefix=\"{prefix}\""));
        rest = format!("http_{metric}");
    } else if let Some(r) = stat.strip_prefix("listener.") {
        let (addr_and_worker, metric) = r.rsplit_once('.').unwrap_or(("", r));
        match addr_and_worker.rsplit_once(".worker_") {
            Some((addr, w)) => {
                labels.push(format!("envoy_listener_address=\"{addr}\""));
                labels.push(format!("envoy_worker_id=\"{w}\""));
            }
            None => labels.push(format!("envoy_listener_address=\"{addr_and_worker}\"")),
        }
        rest = format!("listener_{metric}");
    } else {
        rest = stat.to_string();
    }
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", labels.join(","))
    };
    (format!("envoy_{}", sanitize(&rest)), labels)
}
