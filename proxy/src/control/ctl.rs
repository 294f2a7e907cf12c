//! `tandem ctl`: a thin client of the admin API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Why a ctl call failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {addr}: {source} (is tandem running? is [admin] listen right?)")]
    Connect {
        /// Address tried.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("admin API sent an unreadable answer: {0}")]
    Protocol(String),
}

/// Performs `method path` against the admin API; returns (status, body).
pub fn call(addr: SocketAddr, token: Option<&str>, method: &str, path: &str) -> Result<(u16, String), CtlError> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|source| CtlError::Connect { addr, source })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}X-Tandem-Admin: ctl\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|source| CtlError::Connect { addr, source })?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|source| CtlError::Connect { addr, source })?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| CtlError::Protocol("no header end".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CtlError::Protocol(head.lines().next().unwrap_or("").into()))?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Writes a lab CA (`ca.pem`, `ca.key`) and one certificate per member (`NAME.pem`,
/// `NAME.key`, DNS name `tandem-peer`, and `node<ID>.tandem-peer` when `ids` gives the
/// members' node ids) for `[ha] tls`; keys are written mode 0600. With `owner` (uid,
/// gid), the members' files, `ca.pem` and the directory belong to the service user, so
/// certificates made as root can be read by it; `ca.key` stays the caller's.
pub fn write_lab_certs(
    out: &std::path::Path,
    members: &[String],
    ids: &[u64],
    owner: Option<(u32, u32)>,
) -> Result<(), Box<dyn std::error::Error>> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(out)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "tandem-ha-ca");
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(p, ca_key)?;
    std::fs::write(out.join("ca.pem"), ca.pem())?;
    write_private(&out.join("ca.key"), &ca_key_pem)?;
    for (i, m) in members.iter().enumerate() {
        let key = KeyPair::generate()?;
        let mut names = vec![tandem_ha::peer_tls::PEER_NAME.to_string()];
        if let Some(id) = ids.get(i) {
            names.push(format!("node{id}.{}", tandem_ha::peer_tls::PEER_NAME));
        }
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name.push(DnType::CommonName, m.as_str());
        let cert = p.signed_by(&key, &ca)?;
        std::fs::write(out.join(format!("{m}.pem")), cert.pem())?;
        write_private(&out.join(format!("{m}.key")), &key.serialize_pem())?;
    }
    if let Some((uid, gid)) = owner {
        let mut given = vec![out.to_path_buf(), out.join("ca.pem")];
        for m in members {
            given.push(out.join(format!("{m}.pem")));
            given.push(out.join(format!("{m}.key")));
        }
        for path in given {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn write_private(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())
}
