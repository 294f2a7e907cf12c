//! The command line: `check` validates and reports precisely; `--version`.

use std::io::Write;
use std::process::Command;

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

/// Runs `tandem check` on `config`; asserts it fails with status 2 and returns the
/// file's path and what it printed.
fn check_fails(config: &str) -> (String, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(config.as_bytes()).unwrap();
    let out = tandem().args(["check", "-c"]).arg(f.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    (
        f.path().display().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_problem_and_exits_non_zero() {
    let (path, err) = check_fails(
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n[[cluster]]\nname = \"api\"\nbalancer = \"roundrobin\"\nendpoints = [{ address = \"10.0.0.1\" }]\n\n[[route]]\nname = \"r\"\ncluster = \"apu\"\n",
    );
    assert!(
        err.contains(&format!(
            "{path}:7:12: cluster[0].balancer: unknown balancer `roundrobin`; did you mean `round_robin`?"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:8:26: cluster[0].endpoints[0].address: `10.0.0.1` is not an IP:port address"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:12:11: route[0].cluster: route points at cluster `apu`, which does not exist; did you mean `api`?"
        )),
        "{err}"
    );
    assert!(err.contains("3 problems found"), "{err}");
}

#[test]
fn check_accepts_the_shipped_examples() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let out = tandem().args(["check", "-c"]).arg(&p).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
            n += 1;
        }
    }
    assert!(n >= 2, "examples missing");
}

#[test]
fn the_pair_examples_validate_with_lab_certificates() {
    // The examples name /etc/tandem/ha/…; check them against certificates made by the CLI.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("ha");
    assert!(tandem()
        .args(["ctl", "cluster", "certs", "--members", "node1,node2,witness", "--out"])
        .arg(&certs)
        .status()
        .unwrap()
        .success());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/pair");
    for f in ["node1.toml", "node2.toml", "witness.toml"] {
        let text = std::fs::read_to_string(format!("{root}/{f}"))
            .unwrap()
            .replace("/etc/tandem/ha", &certs.display().to_string());
        let p = dir.path().join(f);
        std::fs::write(&p, text).unwrap();
        let out = tandem().args(["check", "-c"]).arg(&p).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = tandem()
        .args(["check", "-c", "/nonexistent/tandem.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tandem.toml: cannot read config"));
}

#[test]
fn version_prints() {
    let out = tandem().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tandem "));
}

#[test]
fn check_names_bad_vip_settings_with_their_lines() {
    let (path, err) = check_fails(
        "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[[cluster]]\nname = \"api\"\nendpoints = [{ address = \"127.0.0.1:9\" }]\n[[route]]\nname = \"r\"\ncluster = \"api\"\n\
         [[vip]]\nname = \"web\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\naddresses = [\"10.0.0.100/24\", \"fd00::100/64\"]\non_no_quorum = \"wait\"\n",
    );
    assert!(
        err.contains(&format!(
            "{path}:15:31: vip[0].addresses[1]: `fd00::100/64` mixes IPv4 and IPv6 in one VIP"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:16:16: vip[0].on_no_quorum: unknown policy `wait`")),
        "{err}"
    );
}
