//! What ships beside the binary: systemd units (hardening score, commands that exist),
//! the .deb's assets, logrotate, the monitoring rules and dashboard (every series they
//! use is one Tandem exports), shell completions and the man page.

use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn both_units_score_3_or_better_in_systemd_analyze_security() {
    if !crate::common::can_run(
        crate::common::has_tool("systemd-analyze", "--version"),
        "systemd-analyze is not installed (Debian package systemd)",
    ) {
        return;
    }
    for unit in ["tandem.service", "tandem-witness.service"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("{ROOT}/deploy/systemd/{unit}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("{unit}: no score in {text}"));
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: {line}"));
        eprintln!("{unit}: {score}");
        assert!(score <= 3.0, "{unit}: {line}");
    }
}

#[test]
fn units_start_check_and_reload_with_commands_that_exist() {
    let unit = read("deploy/systemd/tandem.service");
    for dir in [
        "StateDirectory=tandem",
        "CacheDirectory=tandem",
        "LogsDirectory=tandem",
        "RuntimeDirectory=tandem",
    ] {
        assert!(unit.contains(dir), "tandem.service lacks {dir}");
    }
    // Every Exec line's tandem command line parses (`--help` appended stops before it runs).
    for unit in ["tandem.service", "tandem-witness.service"] {
        for line in read(&format!("deploy/systemd/{unit}")).lines() {
            let Some((key, cmd)) = line.split_once('=') else {
                continue;
            };
            if !key.starts_with("Exec") || !cmd.starts_with("/usr/bin/tandem ") {
                continue;
            }
            let args: Vec<&str> = cmd["/usr/bin/tandem ".len()..].split_whitespace().collect();
            let out = tandem().args(&args).arg("--help").output().unwrap();
            assert!(
                out.status.success(),
                "{unit}: `{cmd}` does not parse: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(read("deploy/systemd/tandem.service")
        .contains("ExecReload=/usr/bin/tandem ctl -c /etc/tandem/tandem.toml reload"));
}

#[test]
fn the_package_ships_files_that_exist_and_purges_what_it_created() {
    let manifest: toml::Table = read("proxy/Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    assert!(deb["depends"].as_str().unwrap().contains("adduser"));
    assert_eq!(deb["separate-debug-symbols"].as_bool(), Some(true));
    for asset in deb["assets"].as_array().unwrap() {
        let src = asset[0].as_str().unwrap();
        if src.starts_with("target/") {
            continue;
        }
        let path = format!("{ROOT}/proxy/{src}");
        assert!(std::path::Path::new(&path).exists(), "asset {src} does not exist");
    }
    let postinst = read("deploy/debian/postinst");
    assert!(postinst.contains("sysctl"), "postinst does not apply the sysctl file");
    let postrm = read("deploy/debian/postrm");
    for created in [
        "/etc/tandem",
        "/var/lib/tandem",
        "/var/log/tandem",
        "/var/cache/tandem",
        "deluser",
    ] {
        assert!(postrm.contains(created), "purge leaves {created}");
    }
    let sysctl = read("deploy/sysctl/60-tandem.conf");
    assert!(!sysctl.contains("ip_local_port_range") && !sysctl.contains("somaxconn"));
    for script in ["deploy/debian/postinst", "deploy/debian/postrm"] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(format!("{ROOT}/{script}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let logrotate = read("deploy/logrotate/tandem");
    assert!(logrotate.contains("/var/log/tandem/") && logrotate.contains("USR1"));
}

/// Every series name the alert rules and the dashboard use is one Tandem writes (its
/// name appears in the renderers), so a renamed metric cannot leave a silent alert.
#[test]
fn alerts_and_dashboard_use_only_exported_series() {
    let sources = [
        "proxy/src/control/metrics.rs",
        "proxy/src/control/process_metrics.rs",
        "proxy/src/wasm/metrics.rs",
        "proxy/src/cluster/vips.rs",
    ]
    .iter()
    .map(|f| read(f))
    .collect::<Vec<_>>()
    .join("\n");
    let mut checked = 0;
    for file in [
        "deploy/monitoring/alerts.yml",
        "deploy/monitoring/grafana-dashboard.json",
    ] {
        let text = read(file);
        let mut rest = text.as_str();
        while let Some(at) = rest.find(['t', 'p']) {
            rest = &rest[at..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[name.len().max(1)..];
            if !(name.starts_with("tandem_") || name.starts_with("process_")) {
                continue;
            }
            let base = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                names_whole(&sources, base),
                "{file}: {name} is not a series Tandem exports"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} series names found");
    let json: serde_json::Value = serde_json::from_str(&read("deploy/monitoring/grafana-dashboard.json")).unwrap();
    assert!(json["panels"].as_array().unwrap().len() >= 10);
}

/// Whether `name` occurs in `text` as a whole identifier.
fn names_whole(text: &str, name: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    text.match_indices(name)
        .any(|(at, _)| !ident(text[..at].chars().next_back()) && !ident(text[at + name.len()..].chars().next()))
}

#[test]
fn completions_and_man_page_are_generated() {
    let out = tandem().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tandem") && text.contains("maintenance"), "{text}");
    let out = tandem().arg("man").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH tandem"),
        "{}",
        &text[..200.min(text.len())]
    );
}
