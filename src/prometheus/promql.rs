//! The PromQL the guard sends: one instant query per poll covering the live workers of every
//! guarded run, answered per (namespace, pod).

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

/// Live workers in one namespace whose worker container has one name, whichever runs they
/// belong to. A run whose template renamed the worker mid-run is in two groups: each pod is
/// read through its own container.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerGroup<'a> {
    pub namespace: &'a str,
    pub container: &'a str,
    pub pods: Vec<&'a str>,
}

impl<'a> WorkerGroup<'a> {
    /// Groups (namespace, pod, worker container) triples by namespace and container, in the
    /// order first seen.
    pub fn group(pods: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Vec<Self> {
        let mut groups: Vec<Self> = vec![];
        for (namespace, pod, container) in pods {
            match groups
                .iter_mut()
                .find(|g| g.namespace == namespace && g.container == container)
            {
                Some(group) => group.pods.push(pod),
                None => groups.push(Self {
                    namespace,
                    container,
                    pods: vec![pod],
                }),
            }
        }
        groups
    }
}

/// What a memory value belongs to: pod names are unique only within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub pod: String,
}

impl PodKey {
    pub fn new(namespace: &str, pod: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
        }
    }
}

/// Memory of each listed pod's worker container, one value per (namespace, pod), in one
/// query over every group.
///
/// Series of dead containers linger (cAdvisor samples carry their own timestamps), so samples
/// older than `max_age_seconds` are dropped; pod-level and sandbox series have another
/// `container` label and never match.
pub fn worker_memory_query(
    metric: MemoryMetric,
    groups: &[WorkerGroup],
    max_age_seconds: u64,
) -> String {
    groups
        .iter()
        .map(|group| {
            let pattern = group
                .pods
                .iter()
                .map(|p| regex_escape(p))
                .collect::<Vec<_>>()
                .join("|");
            let mut selector = String::new();
            let _ = write!(
                selector,
                "{}{{namespace={},container={},pod=~{}}}",
                metric.series(),
                string_literal(group.namespace),
                string_literal(group.container),
                string_literal(&pattern)
            );
            format!(
                "max by (namespace, pod) ({selector} and (time() - timestamp({selector})) < {max_age_seconds})"
            )
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Default of `--memory-max-sample-age`: a 60 s scrape plus cAdvisor's housekeeping (10–15 s)
/// with room; 15 s and 30 s scrapes have several samples' slack.
pub const DEFAULT_MAX_SAMPLE_AGE: &str = "90s";

/// A sample age from the command line: seconds (`90`) or a duration (`90s`, `2m`, `1m30s`).
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let seconds = match text.parse::<u64>() {
        Ok(seconds) => std::time::Duration::from_secs(seconds),
        Err(_) => {
            let span: jiff::SignedDuration = text
                .parse()
                .map_err(|e| format!("{text:?} is not a duration like 90s or 2m: {e}"))?;
            span.try_into()
                .map_err(|_| format!("{text:?} is negative"))?
        }
    };
    if seconds < std::time::Duration::from_secs(1) {
        return Err(format!("{text:?} is shorter than one second"));
    }
    Ok(seconds)
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

    fn group<'a>(namespace: &'a str, container: &'a str, pods: &[&'a str]) -> WorkerGroup<'a> {
        WorkerGroup {
            namespace,
            container,
            pods: pods.to_vec(),
        }
    }

    #[test]
    fn one_group_is_one_fresh_max_per_namespace_and_pod() {
        let q = worker_memory_query(
            MemoryMetric::WorkingSet,
            &[group("payroll", "worker", &["a-1", "b-2"])],
            45,
        );
        assert_eq!(
            q,
            r#"max by (namespace, pod) (container_memory_working_set_bytes{namespace="payroll",container="worker",pod=~"a-1|b-2"} and (time() - timestamp(container_memory_working_set_bytes{namespace="payroll",container="worker",pod=~"a-1|b-2"})) < 45)"#
        );
    }

    #[test]
    fn one_query_covers_every_namespace_and_container() {
        let q = worker_memory_query(
            MemoryMetric::WorkingSet,
            &[
                group("payroll", "worker", &["a-1"]),
                group("billing", "worker", &["a-1", "b-1"]),
                group("billing", "main", &["c-1"]),
            ],
            90,
        );
        let parts: Vec<&str> = q.split(" or ").collect();
        assert_eq!(parts.len(), 3, "{q}");
        assert!(
            parts[0].contains(r#"{namespace="payroll",container="worker",pod=~"a-1"}"#),
            "{q}"
        );
        assert!(
            parts[1].contains(r#"{namespace="billing",container="worker",pod=~"a-1|b-1"}"#),
            "{q}"
        );
        assert!(
            parts[2].contains(r#"{namespace="billing",container="main",pod=~"c-1"}"#),
            "{q}"
        );
        // The same pod name in two namespaces stays two results.
        assert!(
            parts
                .iter()
                .all(|p| p.starts_with("max by (namespace, pod) (")),
            "{q}"
        );
        assert!(parts.iter().all(|p| p.ends_with(") < 90)")), "{q}");
    }

    #[test]
    fn label_values_are_escaped() {
        let q = worker_memory_query(MemoryMetric::Rss, &[group("n\"s", "w\\x", &["p.1"])], 30);
        assert!(q.contains(r#"namespace="n\"s""#), "{q}");
        assert!(q.contains(r#"container="w\\x""#), "{q}");
        // The dot is escaped for the regex, and the backslash again for the string.
        assert!(q.contains(r#"pod=~"p\\.1""#), "{q}");
        assert!(q.starts_with("max by (namespace, pod) (container_memory_rss{"));
    }

    #[test]
    fn workers_are_grouped_by_namespace_and_container_across_runs() {
        assert_eq!(
            WorkerGroup::group([
                ("ns", "old-1", "main"),
                ("ns", "new-1", "worker"),
                ("other", "x-1", "worker"),
                ("ns", "new-2", "worker"),
            ]),
            vec![
                group("ns", "main", &["old-1"]),
                group("ns", "worker", &["new-1", "new-2"]),
                group("other", "worker", &["x-1"]),
            ]
        );
    }

    #[test]
    fn sample_ages_read_as_seconds_or_durations() {
        let secs = |t: &str| parse_age(t).map(|d| d.as_secs());
        assert_eq!(secs(DEFAULT_MAX_SAMPLE_AGE), Ok(90));
        assert_eq!(secs("45"), Ok(45));
        assert_eq!(secs("2m"), Ok(120));
        assert_eq!(secs("1m30s"), Ok(90));
        assert!(parse_age("0s").is_err());
        assert!(parse_age("-5s").is_err());
        assert!(parse_age("soon").is_err());
    }
}
