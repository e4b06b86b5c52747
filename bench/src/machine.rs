//! CPU accounting from `/proc` (Linux): this process, the server under test, and the whole
//! machine. What the machine spent beyond those two is *foreign* work, such as a build
//! running beside the benchmark; on a small shared machine it is the main source of noise,
//! so a step measured while foreign work ran is rerun instead of trusted.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `USER_HZ`, the unit of `/proc/stat`; 100 on every Linux architecture the bench runs on.
const PROC_STAT_TICKS_PER_S: u64 = 100;
/// Limit on how long [`wait_quiet`] waits for foreign work to stop.
pub const QUIET_WAIT_MAX: Duration = Duration::from_secs(600);

/// CPU time counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    /// Busy time of all CPUs, counted the way task run times are (see [`machine_busy`]).
    machine: Option<Duration>,
    own: Option<Duration>,
    server: Option<Duration>,
}

impl CpuSnapshot {
    pub fn take(server_pid: Option<u32>) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            machine: machine_busy(),
            own: process_cpu(std::process::id()),
            server: server_pid.and_then(process_cpu),
        }
    }

    /// Wall time since `earlier`.
    pub fn elapsed_since(&self, earlier: &CpuSnapshot) -> Duration {
        self.at.saturating_duration_since(earlier.at)
    }

    /// The server's CPU time since `earlier`.
    pub fn server_since(&self, earlier: &CpuSnapshot) -> Option<Duration> {
        Some(self.server?.saturating_sub(earlier.server?))
    }

    /// This process's CPU time since `earlier`.
    pub fn own_since(&self, earlier: &CpuSnapshot) -> Option<Duration> {
        Some(self.own?.saturating_sub(earlier.own?))
    }

    /// Foreign work since `earlier`, in cores (0.5 = half of one core on average).
    pub fn foreign_since(&self, earlier: &CpuSnapshot) -> Option<f64> {
        let machine = self.machine?.saturating_sub(earlier.machine?);
        let ours = self.own_since(earlier)? + self.server_since(earlier).unwrap_or_default();
        let wall = self.elapsed_since(earlier).as_secs_f64();
        (wall > 0.0).then(|| machine.saturating_sub(ours).as_secs_f64() / wall)
    }
}

/// Waits, in one-second samples, until foreign work is under `cores_max` for two samples in
/// a row or `timeout` passes; returns how long it waited and the last sample.
pub async fn wait_quiet(
    server_pid: Option<u32>,
    cores_max: f64,
    timeout: Duration,
) -> (Duration, Option<f64>) {
    let start = Instant::now();
    let mut quiet_samples = 0;
    let mut last = None;
    while start.elapsed() < timeout.min(QUIET_WAIT_MAX) {
        let before = CpuSnapshot::take(server_pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = CpuSnapshot::take(server_pid).foreign_since(&before);
        match last {
            // Without /proc there is nothing to wait for.
            None => break,
            Some(cores) if cores < cores_max => {
                quiet_samples += 1;
                if quiet_samples >= 2 {
                    break;
                }
            }
            Some(_) => quiet_samples = 0,
        }
    }
    (start.elapsed(), last)
}

/// Busy time of the whole machine from the first line of `/proc/stat`: user, nice, system,
/// steal and, unless the kernel does IRQ time accounting, irq and softirq. Without it (as on
/// the development VM) a task's run time includes the interrupt work done while it ran,
/// chiefly the loopback delivery of the benchmark's own packets, so leaving the irq columns
/// out would hide up to a core of other work behind our own; with it, that work is not in
/// our run times and counting it would flag every fast step as noisy.
fn machine_busy() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let mut ticks = fields.first()? + fields.get(1)? + fields.get(2)? + fields.get(7).unwrap_or(&0);
    if !irq_time_accounting() {
        ticks += fields.get(5).unwrap_or(&0) + fields.get(6).unwrap_or(&0);
    }
    Some(Duration::from_millis(ticks * 1000 / PROC_STAT_TICKS_PER_S))
}

/// Whether the running kernel was built with `CONFIG_IRQ_TIME_ACCOUNTING`, from its config
/// in `/boot`; when that cannot be read, assume not (the irq columns then count as busy, which
/// errs towards rerunning a step).
fn irq_time_accounting() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
            return false;
        };
        let path = format!("/boot/config-{}", release.trim());
        std::fs::read_to_string(path)
            .is_ok_and(|config| config.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
    })
}

/// CPU time all threads of process `pid` have used, from `/proc/PID/task/*/schedstat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that exited between listing and reading no longer counts.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
        total += Duration::from_nanos(ns);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_on_linux() {
        if !std::path::Path::new("/proc/stat").exists() {
            return;
        }
        let before = CpuSnapshot::take(Some(std::process::id()));
        // Spin until 50 ms of this process's CPU time show (a loaded machine may take a
        // while to give them), within a generous wall-clock bound.
        let give_up = Instant::now() + Duration::from_secs(30);
        let mut after = CpuSnapshot::take(Some(std::process::id()));
        while after.own_since(&before).unwrap() < Duration::from_millis(50)
            && Instant::now() < give_up
        {
            let spin_until = Instant::now() + Duration::from_millis(5);
            while Instant::now() < spin_until {}
            after = CpuSnapshot::take(Some(std::process::id()));
        }
        assert!(after.own_since(&before).unwrap() > Duration::from_millis(20));
        assert!(after.server_since(&before).unwrap() > Duration::from_millis(20));
        assert!(after.foreign_since(&before).is_some());
    }
}
