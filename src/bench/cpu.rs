//! CPU accounting from `/proc`, the same way as the peer benchmarks' load generator:
//! `utime + stime` of a process (all its threads) from `/proc/PID/stat`, the CPU of its
//! waited-for children (`cutime + cstime`), and the busy and stolen time of the whole
//! machine from the first line of `/proc/stat`. Values are clock ticks; [`clock_ticks`]
//! converts them (`getconf CLK_TCK`, 100 on every Linux we run on).
//!
//! Linux only; every reader returns `None` where `/proc` is missing or unreadable, and the
//! reports then show the figure as absent rather than as zero.

use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second, from `getconf CLK_TCK` (read once; 100 if that fails).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, split on whitespace.
/// `pid` is a number or `self`.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    // Field 3 (state) is a letter; keep numbering by mapping non-numbers to 0.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

// Indexes into `stat_fields`: field N of proc(5) (1-based) is index N - 3.
const UTIME: usize = 14 - 3;
const STIME: usize = 15 - 3;
const CUTIME: usize = 16 - 3;
const CSTIME: usize = 17 - 3;

/// `utime + stime` of process `pid` (all threads), in clock ticks.
pub fn process_ticks(pid: &str) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(UTIME)? + f.get(STIME)?)
}

/// `cutime + cstime` of this process: CPU of its children that have been waited for.
pub fn children_ticks() -> Option<u64> {
    let f = stat_fields("self")?;
    Some(f.get(CUTIME)? + f.get(CSTIME)?)
}

/// Whole-machine CPU time, in clock ticks summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    /// user + nice + system + irq + softirq (idle, iowait and steal excluded).
    pub busy: u64,
    /// Time the hypervisor gave to someone else.
    pub steal: u64,
}

/// Read the first line of `/proc/stat`.
pub fn machine_ticks() -> Option<MachineTicks> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    let steal = *v.get(7)?;
    Some(MachineTicks {
        busy: total.checked_sub(idle + steal)?,
        steal,
    })
}

/// CPUs on the machine (the `cpuN` lines of `/proc/stat`), whatever this process's
/// affinity; falls back to the available parallelism.
pub fn machine_cpus() -> usize {
    let counted = std::fs::read_to_string("/proc/stat").ok().map(|text| {
        text.lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count()
    });
    match counted {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// `utime + stime` of every process whose command name is `name` (all of a database
/// server's processes: `postgres`), in clock ticks; `None` if `/proc` cannot be listed.
pub fn processes_named_ticks(name: &str) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == name {
            total += process_ticks(pid).unwrap_or(0);
        }
    }
    Some(total)
}

/// One reading of everything, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// The server processes (replicas) watched, summed; `None` if there are none or one
    /// cannot be read.
    pub server: Option<u64>,
    /// The database server's processes (`postgres`), when watched.
    pub database: Option<u64>,
    /// This process (the load generator).
    pub client: Option<u64>,
    /// The machine.
    pub machine: Option<MachineTicks>,
}

impl Sample {
    /// Read now. `server_pids` are the processes under test (replicas); with `database`,
    /// the `postgres` processes too.
    pub fn take(server_pids: &[u32], database: bool) -> Sample {
        let server = match server_pids {
            [] => None,
            pids => pids
                .iter()
                .map(|p| process_ticks(&p.to_string()))
                .sum::<Option<u64>>(),
        };
        Sample {
            at: Instant::now(),
            server,
            database: database
                .then(|| processes_named_ticks("postgres"))
                .flatten(),
            client: process_ticks("self"),
            machine: machine_ticks(),
        }
    }
}

/// CPU used between two [`Sample`]s, in seconds of CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Wall-clock seconds between the samples.
    pub wall_s: f64,
    /// CPU seconds of the server (all threads).
    pub server_cpu_s: Option<f64>,
    /// CPU seconds of this process (the load generator).
    pub client_cpu_s: Option<f64>,
    /// CPU seconds of the database server (PostgreSQL), when watched.
    pub database_cpu_s: Option<f64>,
    /// CPU seconds the whole machine was busy.
    pub machine_cpu_s: Option<f64>,
    /// CPU seconds used by everything else: machine − server − client − database. Well
    /// above zero
    /// means someone else's work (a compile, another benchmark) disturbed the run.
    pub other_cpu_s: Option<f64>,
    /// CPU seconds stolen by the hypervisor.
    pub steal_s: Option<f64>,
}

impl Usage {
    /// What happened between `start` and `end`.
    pub fn between(start: &Sample, end: &Sample) -> Usage {
        let tick = clock_ticks();
        let secs = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / tick);
        let server_cpu_s = secs(start.server, end.server);
        let client_cpu_s = secs(start.client, end.client);
        let database_cpu_s = secs(start.database, end.database);
        let machine_cpu_s = secs(start.machine.map(|m| m.busy), end.machine.map(|m| m.busy));
        let steal_s = secs(start.machine.map(|m| m.steal), end.machine.map(|m| m.steal));
        let other_cpu_s = machine_cpu_s.map(|m| {
            (m - server_cpu_s.unwrap_or(0.0)
                - client_cpu_s.unwrap_or(0.0)
                - database_cpu_s.unwrap_or(0.0))
            .max(0.0)
        });
        Usage {
            wall_s: end.at.saturating_duration_since(start.at).as_secs_f64(),
            server_cpu_s,
            client_cpu_s,
            database_cpu_s,
            machine_cpu_s,
            other_cpu_s,
            steal_s,
        }
    }

    /// `cpu_s` as cores busy over the window.
    pub fn cores(&self, cpu_s: Option<f64>) -> Option<f64> {
        let cpu = cpu_s?;
        (self.wall_s > 0.0).then(|| cpu / self.wall_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_machine() {
        assert!(clock_ticks() > 0.0);
        // Burn a little CPU so the counters have something to show.
        let start = Sample::take(&[std::process::id()], true);
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let end = Sample::take(&[std::process::id()], true);
        let usage = Usage::between(&start, &end);
        assert!(usage.wall_s >= 0.05);
        assert!(usage.server_cpu_s.is_some());
        assert!(usage.client_cpu_s.is_some());
        assert!(
            usage.database_cpu_s.is_some(),
            "zero when no PostgreSQL runs"
        );
        assert!(usage.machine_cpu_s.is_some());
        assert!(children_ticks().is_some());
        assert!(machine_cpus() >= 1);
    }
}
