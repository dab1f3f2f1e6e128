//! Reading a Prometheus histogram from `/metrics` text.

/// The upper bound (in the metric's unit) of the bucket holding quantile `q` of the Prometheus
/// histogram `name` in the text `metrics`, over the series whose labels contain `labels`
/// (summed); `None` without samples. A bucket bound, not an interpolation: it says "at most".
pub fn bucket_quantile(metrics: &str, name: &str, labels: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = std::collections::BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with(&prefix) && l.contains(labels)) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        // Keyed by the bound's bits: positive floats order as their bits do.
        buckets.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += count;
    }
    let total = buckets.values().last()?.1;
    (total > 0.0).then(|| buckets.values().find(|(_, c)| *c >= q * total).map_or(f64::INFINITY, |(b, _)| *b))
}
