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
            let help = "User and system CPU time spent.";
            emit(&mut encoder, "process_cpu", help, Some(Unit::Seconds), cpu)?;
            let rss = ConstGauge::new(stat.rss * procfs::page_size());
            let help = "Resident memory size.";
            emit(
                &mut encoder,
                "process_resident_memory",
                help,
                Some(Unit::Bytes),
                rss,
            )?;
            let virt = ConstGauge::new(stat.vsize);
            let help = "Virtual memory size.";
            emit(
                &mut encoder,
                "process_virtual_memory",
                help,
                Some(Unit::Bytes),
                virt,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks);
                let help = "Start time of the process since the Unix epoch.";
                emit(
                    &mut encoder,
                    "process_start_time",
                    help,
                    Some(Unit::Seconds),
                    start,
                )?;
            }
        }
        if let Ok(n) = me.fd_count() {
            let open = ConstGauge::new(n as u64);
            emit(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors.",
                None,
                open,
            )?;
        }
        if let Ok(limits) = me.limits() {
            // An unlimited soft limit is reported as the largest number, as
            // other client libraries do.
            let max = match limits.max_open_files.soft_limit {
                LimitValue::Value(n) => n,
                LimitValue::Unlimited => u64::MAX,
            };
            let help = "Most file descriptors the process may open.";
            emit(
                &mut encoder,
                "process_max_fds",
                help,
                None,
                ConstGauge::new(max),
            )?;
        }
        Ok(())
    }
}

/// Encodes one metric with its descriptor.
fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let descriptor = encoder.encode_descriptor(name, help, unit.as_ref(), metric.metric_type())?;
    metric.encode(descriptor)
}
