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

/// An example with its system paths (/var/log/tandem, /var/lib/tandem, /etc/tandem/ha)
/// moved into `dir`, as the package's directories would provide them.
fn example_in(dir: &std::path::Path, src: &std::path::Path) -> std::path::PathBuf {
    for sub in ["log", "lib", "ha"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let text = std::fs::read_to_string(src)
        .unwrap()
        .replace("/var/log/tandem", &dir.join("log").display().to_string())
        .replace("/var/lib/tandem", &dir.join("lib").display().to_string())
        .replace("/etc/tandem/ha", &dir.join("ha").display().to_string());
    let p = dir.join(src.file_name().unwrap());
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_shipped_examples() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples");
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    let anycast = std::path::Path::new(root).join("anycast");
    let files = std::fs::read_dir(root)
        .unwrap()
        .chain(std::fs::read_dir(anycast).unwrap());
    for entry in files {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let p = example_in(dir.path(), &p);
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
    assert!(n >= 3, "examples missing");
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
        let p = example_in(dir.path(), std::path::Path::new(&format!("{root}/{f}")));
        let out = tandem().args(["check", "-c"]).arg(&p).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("pair: node"), "{f}: {said}");
    }
}

/// `check` reads what the service user could not: certificates made as root are refused
/// for another user, naming file, line and key; `certs --owner` hands them over; a log
/// directory that does not exist is named too.
#[test]
fn check_verifies_files_as_the_service_user() {
    if !crate::common::is_root("checking files as another user") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/pair");
    let p = example_in(dir.path(), std::path::Path::new(&format!("{root}/node1.toml")));
    for sub in ["log", "lib"] {
        std::os::unix::fs::chown(dir.path().join(sub), Some(65534), Some(65534)).unwrap();
    }
    let certs = dir.path().join("ha");
    let make = |owner: Option<&str>| {
        let mut cmd = tandem();
        cmd.args(["ctl", "cluster", "certs", "--members", "node1,node2,witness", "--out"])
            .arg(&certs);
        if let Some(o) = owner {
            cmd.args(["--owner", o]);
        }
        assert!(cmd.status().unwrap().success());
    };
    make(None);
    let out = tandem()
        .args(["check", "--user", "nobody", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ha.tls.key: nobody cannot read"), "{err}");
    assert!(err.contains(&format!("{}:", p.display())), "{err}");
    assert!(err.contains("file problem"), "{err}");
    make(Some("nobody"));
    let out = tandem()
        .args(["check", "--user", "nobody", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checked as user nobody"));

    // A log directory that is not there: check says so before run would fail on it.
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let out = tandem().args(["check", "-c"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("log.access_log: directory") && err.contains("does not exist"),
        "{err}"
    );
}

/// One pass shows every problem: two unknown keys, a badly typed value and a semantic
/// error, each once.
#[test]
fn check_reports_unknown_keys_and_bad_values_together() {
    let (path, err) = check_fails(
        "[server]
workerz = 2

[[listener]]
name = \"web\"
listen = \"127.0.0.1:8080\"
idle_timeout = \"5 parsecs\"

[[cluster]]
name = \"api\"
endpoints = [{ address = \"127.0.0.1:9000\", wieght = 2 }]

[[route]]
name = \"r\"
cluster = \"apu\"
max_retries = true
",
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&path)).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(":2:1: server.workerz: unknown key `workerz`; did you mean `workers`?")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("wieght") && l.contains("did you mean `weight`?")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.contains(":7:") && l.contains("idle_timeout")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.contains(":15:") && l.contains("apu")), "{err}");
    assert!(
        lines.iter().any(|l| l.contains(":16:") && l.contains("max_retries")),
        "{err}"
    );
    assert_eq!(lines.len(), 5, "one problem per mistake: {err}");
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
