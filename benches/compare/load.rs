//! Who used the CPU while a repetition ran: the whole machine, the cluster with the operator
//! and this benchmark, and everything else. A ratio measured while something else competed
//! for the two cores says more about that something than about batchguard.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

/// Average cores of CPU used by processes outside the cluster above which a repetition is not
/// counted.
pub const FOREIGN_LIMIT_CORES: f64 = 0.15;

/// CPU counters at one moment.
pub struct Sample {
    at: Instant,
    /// Jiffies the machine spent busy (all but idle and iowait).
    busy: u64,
    /// Jiffies per process (user + system), with its command name and parent.
    processes: HashMap<u32, (String, u32, u64)>,
}

/// What happened between two samples, in cores (1.0 = one core busy the whole time).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Load {
    pub seconds: f64,
    pub machine_cores: f64,
    pub cluster_cores: f64,
    pub foreign_cores: f64,
    /// The busiest processes outside the cluster, with their cores.
    pub foreign_top: Vec<(String, f64)>,
    /// Where the cluster's CPU went: its components (apiserver, etcd, controller manager,
    /// operator, …) by command name, busiest first.
    pub cluster_by_component: Vec<(String, f64)>,
    pub loadavg_1m: f64,
}

impl Load {
    pub fn quiet(&self) -> bool {
        self.foreign_cores <= FOREIGN_LIMIT_CORES
    }

    /// The CPU seconds of the cluster's busiest components, e.g. "kube-apiserver 9.8 s, etcd
    /// 3.1 s": work done, whatever the repetition's length.
    pub fn describe_components(&self) -> String {
        self.cluster_by_component
            .iter()
            .map(|(name, cores)| format!("{name} {:.1} s", cores * self.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn describe(&self) -> String {
        let top = self
            .foreign_top
            .iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "machine {:.2} cores, cluster+operator {:.2}, other processes {:.2}{} (loadavg {:.2})",
            self.machine_cores,
            self.cluster_cores,
            self.foreign_cores,
            if top.is_empty() {
                String::new()
            } else {
                format!(": {top}")
            },
            self.loadavg_1m
        )
    }
}

pub fn sample() -> Sample {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy = stat
        .lines()
        .next()
        .map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
            fields.iter().take(8).sum::<u64>() - idle
        })
        .unwrap_or(0);
    let mut processes = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
            continue;
        };
        let comm = text[open + 1..close].to_string();
        let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        processes.insert(pid, (comm, field(1) as u32, field(11) + field(12)));
    }
    Sample {
        at: Instant::now(),
        busy,
        processes,
    }
}

/// The load between `before` and `after`. The cluster is every process started by
/// tests/cluster/up (its pid files beside the kubeconfig) and their children, the container
/// runtime's shims, the operators this benchmark started and the benchmark itself.
pub fn between(before: &Sample, after: &Sample, operators: &[u32]) -> Load {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let hz = 100.0;
    let ours = cluster_pids(after, operators);
    let mut cluster = 0u64;
    let mut components: BTreeMap<String, u64> = BTreeMap::new();
    let mut foreign: BTreeMap<String, u64> = BTreeMap::new();
    for (pid, (comm, ppid, ticks)) in &after.processes {
        let used = ticks.saturating_sub(before.processes.get(pid).map_or(0, |p| p.2));
        if ours.contains(pid) {
            cluster += used;
            *components.entry(comm.clone()).or_default() += used;
        } else if *ppid != 2 && *pid != 2 {
            // Kernel threads (children of kthreadd) are the kernel's work, not a competitor.
            *foreign.entry(comm.clone()).or_default() += used;
        }
    }
    let cores = |ticks: u64| ticks as f64 / hz / seconds;
    let busiest = |by_name: &BTreeMap<String, u64>, keep: usize| {
        let mut top: Vec<(String, f64)> = by_name
            .iter()
            .map(|(name, ticks)| (name.clone(), cores(*ticks)))
            .filter(|(_, c)| *c >= 0.01)
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(keep);
        top
    };
    let top = busiest(&foreign, 3);
    Load {
        seconds,
        machine_cores: cores(after.busy.saturating_sub(before.busy)),
        cluster_cores: cores(cluster),
        foreign_cores: cores(foreign.values().sum()),
        foreign_top: top,
        cluster_by_component: busiest(&components, 8),
        loadavg_1m: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN),
    }
}

fn cluster_pids(sample: &Sample, operators: &[u32]) -> HashSet<u32> {
    let mut roots: HashSet<u32> = operators.iter().copied().collect();
    roots.insert(std::process::id());
    if let Some(dir) = std::env::var_os("KUBECONFIG")
        .as_deref()
        .and_then(|k| Path::new(k).parent().map(|p| p.join("pids")))
    {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Some(pid) = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                roots.insert(pid);
            }
        }
    }
    let runtime = |comm: &str| comm.starts_with("containerd") || comm == "runc" || comm == "pause";
    let mut ours: HashSet<u32> = sample
        .processes
        .iter()
        .filter(|(pid, (comm, _, _))| roots.contains(pid) || runtime(comm))
        .map(|(pid, _)| *pid)
        .collect();
    // Children of ours are ours (the parent map is small: a few hundred processes).
    loop {
        let grown: Vec<u32> = sample
            .processes
            .iter()
            .filter(|(pid, (_, ppid, _))| !ours.contains(pid) && ours.contains(ppid))
            .map(|(pid, _)| *pid)
            .collect();
        if grown.is_empty() {
            return ours;
        }
        ours.extend(grown);
    }
}
