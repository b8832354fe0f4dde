//! Process-tree resource figures from /proc: resident memory and CPU time of a
//! process and all its descendants (Pushpin is a runner with four children).

use std::collections::HashMap;
use std::fs;

use anyhow::{Context, Result};

/// Clock ticks per second of the utime/stime fields in /proc/<pid>/stat
/// (USER_HZ, 100 on every Linux architecture the benchmark runs on).
const USER_HZ: f64 = 100.0;

/// `pid` and all its live descendants.
pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse().ok())) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    // Bounded: every pid is visited once and /proc holds a finite number of them.
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|p| *p != pid));
        }
        i += 1;
        if out.len() > 100_000 {
            break;
        }
    }
    out
}

/// Fields of /proc/<pid>/stat after the `(comm)` field: index 0 is the state, 1 the ppid,
/// 11 utime and 12 stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Sum of VmRSS (KiB) over the process tree of `pid`.
pub(crate) fn tree_rss_kb(pid: u32) -> Result<u64> {
    let mut total = 0;
    let mut found = false;
    for p in tree(pid) {
        let Ok(status) = fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        found = true;
        if let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) {
            total += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    found
        .then_some(total)
        .with_context(|| format!("process {pid} not found"))
}

/// Sum of user + system CPU seconds over the process tree of `pid`.
pub(crate) fn tree_cpu_s(pid: u32) -> Result<f64> {
    let mut ticks = 0u64;
    let mut found = false;
    for p in tree(pid) {
        let Some(f) = stat_fields(p) else { continue };
        found = true;
        let field = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(11) + field(12);
    }
    anyhow::ensure!(found, "process {pid} not found");
    Ok(ticks as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measurable() -> Result<()> {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        assert!(tree_rss_kb(me)? > 0);
        assert!(tree_cpu_s(me)? >= 0.0);
        Ok(())
    }
}
