//! Counters of the wasm host (per plugin: calls, failures by kind, restarts) and the
//! metrics guests define with `proxy_define_metric`, rendered into `/metrics`.
//! Guest metrics are per node ([`super::HostShared`]) and keyed by (plugin, name), so
//! the copies of a plugin in every worker add into one series, as in Envoy.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::HostShared;

/// A guest-defined metric.
#[derive(Debug)]
pub struct GuestMetric {
    /// Plugin that defined it.
    pub plugin: String,
    /// Name as given.
    pub name: String,
    /// 0 counter, 1 gauge, 2 histogram.
    pub kind: i32,
    /// Counter/gauge value; histogram sum.
    pub value: AtomicI64,
    /// Histogram sample count.
    pub count: AtomicU64,
}

/// A node's guest-defined metrics.
#[derive(Default)]
pub(crate) struct Registry {
    by_key: HashMap<(String, String), u32>,
    metrics: Vec<Arc<GuestMetric>>,
}

/// Defines (or finds) a metric; ids start at 1.
pub fn define(host: &HostShared, plugin: &str, name: &str, kind: i32) -> u32 {
    let mut r = host.metrics.write().expect("metric registry poisoned");
    let key = (plugin.to_string(), name.to_string());
    if let Some(&id) = r.by_key.get(&key) {
        return id;
    }
    r.metrics.push(Arc::new(GuestMetric {
        plugin: key.0.clone(),
        name: key.1.clone(),
        kind,
        value: AtomicI64::new(0),
        count: AtomicU64::new(0),
    }));
    let id = r.metrics.len() as u32;
    r.by_key.insert(key, id);
    id
}

/// The metric with this id.
pub fn get(host: &HostShared, id: u32) -> Option<Arc<GuestMetric>> {
    let r = host.metrics.read().expect("metric registry poisoned");
    r.metrics.get((id as usize).checked_sub(1)?).cloned()
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Appends the wasm families of a node (its filters' counters in `stats`, the metrics
/// they defined in `host`) to a Prometheus text exposition.
pub fn render(out: &mut String, host: &HostShared, stats: &crate::stats::StatsRegistry) {
    let p = stats.plugins();
    if !p.is_empty() {
        crate::exposition::counter(out, "tandem_wasm_events_total", "proxy-wasm host events per filter.");
        for (n, s) in &p {
            for (ev, v) in [
                ("stream", &s.streams),
                ("trap", &s.traps),
                ("deadline", &s.deadlines),
                ("memory_fault", &s.memory_faults),
                ("instance", &s.instances),
                ("instance_failure", &s.instance_failures),
                ("failed_closed", &s.failed_closed),
                ("failed_open", &s.failed_open),
                ("local_response", &s.local_responses),
                ("callout", &s.callouts),
                ("callout_failure", &s.callout_failures),
                ("grpc_call", &s.grpc_calls),
                ("grpc_failure", &s.grpc_failures),
                ("grpc_refused", &s.grpc_refused),
            ] {
                let _ = writeln!(
                    out,
                    "tandem_wasm_events_total{{filter=\"{}\",event=\"{ev}\"}} {}",
                    label(n),
                    v.load(Relaxed)
                );
            }
        }
        crate::exposition::gauge(
            out,
            "tandem_wasm_instance_memory_bytes",
            "Largest linear memory of one instance per filter.",
        );
        for (n, s) in &p {
            let _ = writeln!(
                out,
                "tandem_wasm_instance_memory_bytes{{filter=\"{}\"}} {}",
                label(n),
                s.memory_bytes.load(Relaxed)
            );
        }
    }
    let r = host.metrics.read().expect("metric registry poisoned");
    if r.metrics.is_empty() {
        return;
    }
    crate::exposition::untyped(
        out,
        "tandem_wasm_metric",
        "Metrics defined by filters (counter, gauge; histogram as sum and count).",
    );
    for m in &r.metrics {
        let (f, n) = (label(&m.plugin), label(&m.name));
        match m.kind {
            0 => {
                let _ = writeln!(
                    out,
                    "tandem_wasm_metric{{filter=\"{f}\",name=\"{n}\",type=\"counter\"}} {}",
                    m.value.load(Relaxed)
                );
            }
            1 => {
                let _ = writeln!(
                    out,
                    "tandem_wasm_metric{{filter=\"{f}\",name=\"{n}\",type=\"gauge\"}} {}",
                    m.value.load(Relaxed)
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "tandem_wasm_metric{{filter=\"{f}\",name=\"{n}\",type=\"histogram_sum\"}} {}\ntandem_wasm_metric{{filter=\"{f}\",name=\"{n}\",type=\"histogram_count\"}} {}",
                    m.value.load(Relaxed),
                    m.count.load(Relaxed)
                );
            }
        }
    }
}
