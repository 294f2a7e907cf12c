//! Driving BIRD 2: the anycast routes this node announces are written as `protocol
//! static` blocks to the fragment file that bird.conf includes, then BIRD is asked to
//! reload (`birdc configure`, a few milliseconds; BGP sessions stay up). The file is the
//! state: a BIRD that restarts reads what Tandem last wanted, and an empty fragment
//! (what the guard writes when Tandem dies) withdraws everything.

use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

use crate::config::BgpConfig;

/// Why the speaker did not take the routes.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The fragment could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The fragment.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// `birdc` did not start.
    #[error("cannot run {birdc}: {source}")]
    Spawn {
        /// The program.
        birdc: String,
        /// What failed.
        source: std::io::Error,
    },
    /// BIRD refused the configuration or could not be reached.
    #[error("birdc configure failed: {0}")]
    Refused(String),
}

/// The fragment announcing `routes` (address, prefix): one static protocol per family,
/// both always present so bird.conf's export filters can name them.
pub fn fragment(protocol: &str, routes: &[(IpAddr, u8)]) -> String {
    let mut out = String::from("# Written by Tandem: the anycast routes this node announces now. Do not edit.\n");
    for (family, name, v6) in [
        ("ipv4", protocol.to_string(), false),
        ("ipv6", format!("{protocol}6"), true),
    ] {
        let _ = writeln!(out, "protocol static {name} {{\n  {family};");
        for (a, p) in routes.iter().filter(|(a, _)| a.is_ipv6() == v6) {
            let _ = writeln!(out, "  route {a}/{p} blackhole;");
        }
        out.push_str("}\n");
    }
    out
}

/// Writes the fragment for `routes` (atomically: a reader never sees half a file) and
/// has BIRD reload it.
pub fn apply(cfg: &BgpConfig, routes: &[(IpAddr, u8)]) -> Result<(), SpeakerError> {
    write_atomically(&cfg.fragment, &fragment(&cfg.protocol, routes)).map_err(|source| SpeakerError::Write {
        path: cfg.fragment.display().to_string(),
        source,
    })?;
    reload(cfg)
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tandem-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `birdc -s SOCKET configure`: BIRD re-reads its configuration; only the static
/// protocols whose routes changed are touched.
fn reload(cfg: &BgpConfig) -> Result<(), SpeakerError> {
    let out = std::process::Command::new(&cfg.birdc)
        .arg("-s")
        .arg(&cfg.control_socket)
        .arg("configure")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| SpeakerError::Spawn {
            birdc: cfg.birdc.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && text.contains("Reconfigur") {
        return Ok(());
    }
    let why = text
        .lines()
        .filter(|l| !l.starts_with("BIRD ") && !l.starts_with("Reading configuration"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(SpeakerError::Refused(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_holds_both_families_and_only_the_announced_routes() {
        let f = fragment(
            "tandem_anycast",
            &[("10.99.1.10".parse().unwrap(), 32), ("fd00::10".parse().unwrap(), 128)],
        );
        assert!(f.contains("protocol static tandem_anycast {\n  ipv4;\n  route 10.99.1.10/32 blackhole;\n}\n"));
        assert!(f.contains("protocol static tandem_anycast6 {\n  ipv6;\n  route fd00::10/128 blackhole;\n}\n"));
        let empty = fragment("tandem_anycast", &[]);
        assert!(empty.contains("protocol static tandem_anycast {\n  ipv4;\n}\n"));
        assert!(!empty.contains("  route "));
    }
}
