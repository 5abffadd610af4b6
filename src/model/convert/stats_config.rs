//! The bootstrap's `stats_config` → which stats exist (`stats_matcher`) and how
//! `/stats/prometheus` names and labels them (`stats_tags`, `use_all_default_tags`).

use super::*;
use crate::proto::envoy::config::metrics::v3 as metrics;
use crate::stats::tags::{TagProducer, TagSpec, TagValue};
use crate::stats::{NamePattern, StatsConfig, StatsMatcher};

const RES: &str = "bootstrap";

/// Compiles `stats_config`, naming the field of anything refused.
pub(super) fn stats_config(c: &metrics::StatsConfig) -> Result<StatsConfig, ConvertError> {
    use metrics::tag_specifier::TagValue as V;
    let specs: Vec<TagSpec> = c
        .stats_tags
        .iter()
        .map(|t| TagSpec {
            name: t.tag_name.clone(),
            value: match &t.tag_value {
                Some(V::Regex(r)) if !r.is_empty() => TagValue::Regex(r.clone()),
                Some(V::FixedValue(v)) => TagValue::Fixed(v.clone()),
                _ => TagValue::Default,
            },
        })
        .collect();
    let use_defaults = c.use_all_default_tags.is_none_or(|b| b);
    let tags = TagProducer::new(use_defaults, &specs).map_err(|e| {
        err(
            RES,
            format!("stats_config.stats_tags[{}].{}", e.index, e.field),
            e.message,
        )
    })?;
    let matcher = match c
        .stats_matcher
        .as_ref()
        .and_then(|m| m.stats_matcher.as_ref())
    {
        None => StatsMatcher::AcceptAll,
        Some(metrics::stats_matcher::StatsMatcher::RejectAll(true)) => StatsMatcher::RejectAll,
        Some(metrics::stats_matcher::StatsMatcher::RejectAll(false)) => StatsMatcher::AcceptAll,
        Some(metrics::stats_matcher::StatsMatcher::InclusionList(l)) => {
            StatsMatcher::Include(patterns(l, "inclusion_list")?)
        }
        Some(metrics::stats_matcher::StatsMatcher::ExclusionList(l)) => {
            StatsMatcher::Exclude(patterns(l, "exclusion_list")?)
        }
    };
    Ok(StatsConfig { tags, matcher })
}

fn patterns(
    l: &crate::proto::envoy::r#type::matcher::v3::ListStringMatcher,
    list: &str,
) -> Result<Vec<NamePattern>, ConvertError> {
    l.patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let path = format!("stats_config.stats_matcher.{list}.patterns[{i}]");
            let m = matchers::string_matcher(p, RES, &path)?;
            Ok(Box::new(move |name: &str| m.matches(name.as_bytes())) as NamePattern)
        })
        .collect()
}
