//! What the whole cluster wrote through the apiserver, from the apiserver's own request
//! counter: the Job controller's, the garbage collector's, the scheduler's and kwok's writes
//! beside the operator's. On a small machine these writes are where the CPU goes, so their
//! count per batch explains a makespan gap that the operator's own figures do not.

use std::collections::BTreeMap;

use kube::Client;

const WRITE_VERBS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

/// The apiserver's write counters, by "VERB resource[/subresource]".
pub async fn writes(client: &Client) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics").body(vec![]).unwrap();
    let text = client.request_text(request).await.unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if !WRITE_VERBS.contains(&verb.as_str()) {
            continue;
        }
        let subresource = label("subresource");
        let key = if subresource.is_empty() {
            format!("{verb} {}", label("resource"))
        } else {
            format!("{verb} {}/{subresource}", label("resource"))
        };
        *out.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Writes per batch between two readings, the busiest first, leaving out the ones below
/// 0.05 per batch (leases, events of other work).
pub fn per_batch(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    batches: u64,
) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(key, value)| {
            let grown = value - before.get(key).unwrap_or(&0.0);
            (key.clone(), grown / batches as f64)
        })
        .filter(|(_, per)| *per >= 0.05)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}

pub fn describe(rows: &[(String, f64)]) -> String {
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let parts = rows
        .iter()
        .map(|(key, per)| format!("{key} {per:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{total:.2} per batch: {parts}")
}
