//! The PromQL the guard sends: one instant query per run covering all its live workers.

use std::fmt::Write;

/// Which memory series to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryMetric {
    /// `container_memory_working_set_bytes`: what the OOM killer enforces against the limit.
    WorkingSet,
    /// `container_memory_rss`: anonymous memory only (misses tmpfs and kernel memory).
    Rss,
}

impl MemoryMetric {
    pub fn series(self) -> &'static str {
        match self {
            MemoryMetric::WorkingSet => "container_memory_working_set_bytes",
            MemoryMetric::Rss => "container_memory_rss",
        }
    }
}

/// Memory of each listed pod's worker container, one value per pod.
///
/// Series of dead containers linger (cAdvisor samples carry their own timestamps), so samples
/// older than `max_age_seconds` are dropped; pod-level and sandbox series have another
/// `container` label and never match.
pub fn worker_memory_query(
    metric: MemoryMetric,
    namespace: &str,
    container: &str,
    pods: &[&str],
    max_age_seconds: u32,
) -> String {
    let pattern = pods
        .iter()
        .map(|p| regex_escape(p))
        .collect::<Vec<_>>()
        .join("|");
    let mut selector = String::new();
    let _ = write!(
        selector,
        "{}{{namespace={},container={},pod=~{}}}",
        metric.series(),
        string_literal(namespace),
        string_literal(container),
        string_literal(&pattern)
    );
    format!("max by (pod) ({selector} and (time() - timestamp({selector})) < {max_age_seconds})")
}

/// A PromQL double-quoted string literal.
fn string_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Escapes RE2 metacharacters so a pod name matches only itself.
fn regex_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_query_covers_every_pod_of_the_run() {
        let q = worker_memory_query(
            MemoryMetric::WorkingSet,
            "payroll",
            "worker",
            &["a-1", "b-2"],
            45,
        );
        assert_eq!(
            q,
            r#"max by (pod) (container_memory_working_set_bytes{namespace="payroll",container="worker",pod=~"a-1|b-2"} and (time() - timestamp(container_memory_working_set_bytes{namespace="payroll",container="worker",pod=~"a-1|b-2"})) < 45)"#
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let q = worker_memory_query(MemoryMetric::Rss, "n\"s", "w\\x", &["p.1"], 30);
        assert!(q.contains(r#"namespace="n\"s""#), "{q}");
        assert!(q.contains(r#"container="w\\x""#), "{q}");
        // The dot is escaped for the regex, and the backslash again for the string.
        assert!(q.contains(r#"pod=~"p\\.1""#), "{q}");
        assert!(q.starts_with("max by (pod) (container_memory_rss{"));
    }
}
