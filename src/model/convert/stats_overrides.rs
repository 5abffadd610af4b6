//! `stats.PluginConfig`'s metric overrides (what istiod makes of a Telemetry resource's
//! metric overrides): metrics dropped, standard labels removed, and dimensions — labels
//! whose values are CEL expressions ([`crate::model::cel`]) — added or replacing a standard
//! label's value, as istio-proxy applies them.

use super::{err, ConvertError, Ctx};
use crate::model::cel::Expr;
use crate::proto::stats::PluginConfig;
use crate::stats::istio::{Dim, HttpMetric, Shape, LABELS};

/// The shape the overrides of `c` give and the expressions its dimensions read (each
/// once), in the order their values follow the shape's id in a series key.
pub(super) fn overrides(
    c: &PluginConfig,
    res: &str,
    at: &str,
    ctx: &mut Ctx<'_>,
) -> Result<(Shape, Vec<Expr>), ConvertError> {
    let p = |f: &str| format!("{at}.{f}");
    let mut shape = Shape::standard();
    let mut exprs: Vec<Expr> = Vec::new();
    for (i, m) in c.metrics.iter().enumerate() {
        let mp = |f: &str| p(&format!("metrics[{i}].{f}"));
        if !m.r#match.is_empty() {
            ctx.ignored.push(format!(
                "{res}.{} (istio-proxy does not implement it either)",
                mp("match")
            ));
        }
        let metrics: Vec<usize> = if m.name.is_empty() {
            (0..shape.removed.len()).collect()
        } else {
            match HttpMetric::by_config_name(&m.name) {
                Some(k) => vec![k],
                None => {
                    return Err(err(
                        res,
                        mp("name"),
                        format!("'{}' is not one of Istio's standard metrics", m.name),
                    ))
                }
            }
        };
        // `drop` drops the metric; nothing else of the entry applies (as in istio-proxy).
        if m.drop {
            for k in metrics {
                shape.removed[k] = None;
            }
            continue;
        }
        let mut removed = 0u32;
        for (j, tag) in m.tags_to_remove.iter().enumerate() {
            let Some(bit) = LABELS.iter().position(|l| l == tag) else {
                return Err(err(
                    res,
                    mp(&format!("tags_to_remove[{j}]")),
                    format!("'{tag}' is not one of Istio's standard labels"),
                ));
            };
            removed |= 1 << bit;
        }
        // Dimensions after removals (an upsert of a removed label wins), in name order.
        let mut dims: Vec<(Dim, u8)> = Vec::new();
        let mut names: Vec<&String> = m.dimensions.keys().collect();
        names.sort();
        for name in names {
            let src = &m.dimensions[name];
            let at = mp(&format!("dimensions[\"{name}\"]"));
            let e = match exprs.iter().position(|e| &*e.source == src.as_str()) {
                Some(e) => e,
                None => {
                    let parsed =
                        Expr::parse(src).map_err(|why| err(res, &at, format!("'{src}' {why}")))?;
                    exprs.push(parsed);
                    exprs.len() - 1
                }
            };
            let e = u8::try_from(e)
                .map_err(|_| err(res, &at, "more than 255 distinct dimension expressions"))?;
            let dim = match LABELS.iter().position(|l| l == name) {
                Some(l) => Dim::Standard(l as u8),
                None => Dim::New(name.as_str().into()),
            };
            dims.push((dim, e));
        }
        for k in metrics {
            let Some(r) = shape.removed[k] else { continue };
            let mut r = r | removed;
            for (dim, e) in &dims {
                if let Dim::Standard(l) = dim {
                    r &= !(1 << l);
                }
                let list = &mut shape.dims[k];
                match list.iter_mut().find(|(d, _)| d == dim) {
                    Some(slot) => slot.1 = *e,
                    None => list.push((dim.clone(), *e)),
                }
            }
            shape.removed[k] = Some(r);
        }
    }
    shape.exprs = exprs.iter().map(|e| e.source.clone()).collect();
    Ok((shape, exprs))
}
