//! The standard process metrics (`process_*`, as Prometheus client
//! libraries name them), read from `/proc/self` at each scrape.
//!
//! A value that cannot be read (no `/proc`, a file the kernel does not
//! have) is left out of the scrape rather than reported as zero.

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Encodes the process metrics when the registry is encoded.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent.",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?)?;
            let rss = ConstGauge::new(stat.rss * procfs::page_size());
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size.",
                Some(&Unit::Bytes),
                rss.metric_type(),
            )?)?;
            let virt = ConstGauge::new(stat.vsize);
            virt.encode(encoder.encode_descriptor(
                "process_virtual_memory",
                "Virtual memory size.",
                Some(&Unit::Bytes),
                virt.metric_type(),
            )?)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks);
                start.encode(encoder.encode_descriptor(
                    "process_start_time",
                    "Start time of the process since the Unix epoch.",
                    Some(&Unit::Seconds),
                    start.metric_type(),
                )?)?;
            }
        }
        if let Ok(n) = me.fd_count() {
            let open = ConstGauge::new(n as u64);
            open.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors.",
                None,
                open.metric_type(),
            )?)?;
        }
        if let Ok(limits) = me.limits() {
            // An unlimited soft limit is reported as the largest number, as
            // other client libraries do.
            let max = match limits.max_open_files.soft_limit {
                LimitValue::Value(n) => n,
                LimitValue::Unlimited => u64::MAX,
            };
            let max = ConstGauge::new(max);
            max.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Most file descriptors the process may open.",
                None,
                max.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
