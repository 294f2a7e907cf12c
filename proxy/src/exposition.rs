//! The Prometheus text exposition format's one writer: every metric family's HELP and
//! TYPE lines go through here, whoever renders the samples (the counters in
//! `metrics.rs`, the process, VIPs, filters).

use std::fmt::Write;

fn head(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes the HELP and TYPE lines of a counter.
pub(crate) fn counter(out: &mut String, name: &str, help: &str) {
    head(out, name, help, "counter");
}

/// Writes the HELP and TYPE lines of a gauge.
pub(crate) fn gauge(out: &mut String, name: &str, help: &str) {
    head(out, name, help, "gauge");
}

/// Writes the HELP and TYPE lines of a histogram.
pub(crate) fn histogram(out: &mut String, name: &str, help: &str) {
    head(out, name, help, "histogram");
}

/// Writes the HELP and TYPE lines of a family whose samples have no one type (filters'
/// own metrics).
pub(crate) fn untyped(out: &mut String, name: &str, help: &str) {
    head(out, name, help, "untyped");
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_family_head_is_help_then_type() {
        let mut out = String::new();
        super::counter(&mut out, "tandem_x_total", "Things.");
        assert_eq!(out, "# HELP tandem_x_total Things.\n# TYPE tandem_x_total counter\n");
    }
}
