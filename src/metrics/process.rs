//! This process's CPU time, resident memory and open descriptors, read from /proc at a scrape.

use super::Metrics;

impl Metrics {
    /// Reads this process's CPU time, resident memory and open descriptors from /proc (Linux;
    /// elsewhere they stay 0), for a scrape.
    pub fn sample_process(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // After the command (in parentheses): utime and stime are fields 14 and 15.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
            // Linux reports in USER_HZ, 100 per second on every supported architecture.
            self.process_cpu.set((ticks(11) + ticks(12)) / 100.0);
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok());
            if let Some(kib) = kib {
                self.process_rss.set(kib * 1024);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(fds.count() as i64);
        }
    }
}
