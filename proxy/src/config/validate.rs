//! Semantic checks: addresses parse, names are unique, references resolve, values are
//! in range. All problems are collected and reported at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use regex::Regex;

use super::error::{did_you_mean, ConfigIssue, LineIndex};
use super::model::{self, ConfigFile, SpannedStr};
use super::*;

/// Shortest admin token accepted.
const MIN_ADMIN_TOKEN: usize = 16;

struct Checker<'a> {
    lines: &'a LineIndex,
    issues: Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
    /// The file can be read by every local user: a secret in it is warned about.
    readable_by_others: Option<&'a str>,
    /// Files the configuration names (see [`Config::files`]).
    files: Vec<super::access::FileUse>,
}

impl Checker<'_> {
    /// Warns when the secret at `span` sits in a file every local user can read.
    fn secret(&mut self, span: &SpannedStr, key: String) {
        if let Some(file) = self.readable_by_others {
            self.warn(
                span,
                key,
                format!("this secret is in {file}, which every local user can read"),
                Some(format!("chmod 640 {file} (owner root, group of the service user)")),
            );
        }
    }

    fn warn(&mut self, span: &SpannedStr, key: String, message: String, hint: Option<String>) {
        let (line, col) = self.lines.locate(span.span().start);
        self.warnings.push(ConfigIssue {
            line,
            col,
            key,
            message,
            hint,
        });
    }

    fn path(&self, base: &std::path::Path, s: &SpannedStr) -> std::path::PathBuf {
        let p = std::path::Path::new(s.get_ref());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    }

    /// The path at `s`, remembered as a file the process will use as `access`.
    fn file(
        &mut self,
        base: &std::path::Path,
        s: &SpannedStr,
        key: String,
        access: super::access::Access,
    ) -> std::path::PathBuf {
        let path = self.path(base, s);
        let (line, col) = self.lines.locate(s.span().start);
        self.files.push(super::access::FileUse {
            path: path.clone(),
            access,
            key,
            line,
            col,
        });
        path
    }

    fn listener_tls(
        &mut self,
        t: &model::ListenerTlsSection,
        base: &std::path::Path,
        key: &str,
        anchor: &SpannedStr,
    ) -> crate::tls::ListenerTls {
        if t.certificates.is_empty() {
            self.at(
                anchor,
                format!("{key}.certificates"),
                "no certificate".into(),
                Some("add certificates = [{ cert = \"server.pem\", key = \"server.key\" }]".into()),
            );
        }
        let tls13_only = match t.min_version.get_ref().as_str() {
            "1.2" => false,
            "1.3" => true,
            other => {
                self.at(
                    &t.min_version,
                    format!("{key}.min_version"),
                    format!("unsupported TLS version `{other}`"),
                    Some("use \"1.2\" or \"1.3\"".into()),
                );
                false
            }
        };
        let client_auth = match t.client_auth.get_ref().as_str() {
            "none" => crate::tls::ClientAuth::None,
            "optional" => crate::tls::ClientAuth::Optional,
            "required" => crate::tls::ClientAuth::Required,
            other => {
                self.at(
                    &t.client_auth,
                    format!("{key}.client_auth"),
                    format!("unknown client_auth `{other}`"),
                    Some("use \"none\", \"optional\" or \"required\"".into()),
                );
                crate::tls::ClientAuth::None
            }
        };
        if client_auth != crate::tls::ClientAuth::None && t.client_ca.is_none() {
            self.at(
                &t.client_auth,
                format!("{key}.client_ca"),
                "client certificates need a CA to verify them".into(),
                Some("add client_ca = \"clients-ca.pem\"".into()),
            );
        }
        crate::tls::ListenerTls {
            certificates: t
                .certificates
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        self.file(
                            base,
                            &c.cert,
                            format!("{key}.certificates[{i}].cert"),
                            super::access::Access::Read,
                        ),
                        self.file(
                            base,
                            &c.key,
                            format!("{key}.certificates[{i}].key"),
                            super::access::Access::Read,
                        ),
                    )
                })
                .collect(),
            alpn: t.alpn.clone(),
            tls13_only,
            client_ca: t
                .client_ca
                .as_ref()
                .map(|p| self.file(base, p, format!("{key}.client_ca"), super::access::Access::Read)),
            client_auth,
            session_tickets: t.session_tickets,
        }
    }

    /// Loads every file of a listener's TLS settings now, so `check` reports unreadable,
    /// mismatched or expired material with the key that names it.
    fn tls_server(
        &mut self,
        t: &crate::tls::ListenerTls,
        section: Option<&model::ListenerTlsSection>,
        anchor: &SpannedStr,
        key: &str,
    ) -> Option<Built<rustls::ServerConfig>> {
        match crate::tls::server_config(t) {
            Ok(cfg) => Some(Built(cfg)),
            Err(e) => {
                let (span, k) = section
                    .and_then(|s| {
                        s.certificates.iter().enumerate().find_map(|(i, c)| {
                            let text = e.to_string();
                            (text.contains(c.cert.get_ref().as_str()) || text.contains(c.key.get_ref().as_str()))
                                .then(|| (c.cert.clone(), format!("{key}.tls.certificates[{i}]")))
                        })
                    })
                    .unwrap_or_else(|| (anchor.clone(), format!("{key}.tls")));
                let hint = match &e {
                    crate::tls::TlsError::Unreadable { .. } => {
                        "check the path (relative paths start at the config file's directory) and permissions"
                    }
                    crate::tls::TlsError::Empty { .. } => {
                        "the file must hold PEM blocks (-----BEGIN CERTIFICATE----- / -----BEGIN PRIVATE KEY-----)"
                    }
                    crate::tls::TlsError::Mismatch { .. } => "pair each certificate with the key it was issued for",
                    crate::tls::TlsError::Validity { .. } => "renew the certificate",
                    crate::tls::TlsError::Rustls(_) => "check the certificate and key formats",
                };
                self.at(&span, k, e.to_string(), Some(hint.into()));
                None
            }
        }
    }

    fn upstream_tls(
        &mut self,
        t: &model::UpstreamTlsSection,
        base: &std::path::Path,
        key: &str,
        anchor: &SpannedStr,
        protocol: UpstreamProtocol,
    ) -> Option<(crate::tls::UpstreamTls, Built<rustls::ClientConfig>)> {
        let client_cert = match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => Some((
                self.file(base, c, format!("{key}.client_cert"), super::access::Access::Read),
                self.file(base, k, format!("{key}.client_key"), super::access::Access::Read),
            )),
            (None, None) => None,
            _ => {
                self.at(
                    anchor,
                    format!("{key}.client_cert"),
                    "client_cert and client_key go together".into(),
                    Some("set both, or neither".into()),
                );
                None
            }
        };
        let settings = crate::tls::UpstreamTls {
            sni: t.sni.clone(),
            ca: t
                .ca
                .as_ref()
                .map(|p| self.file(base, p, format!("{key}.ca"), super::access::Access::Read)),
            client_cert,
            alpn: match protocol {
                UpstreamProtocol::H2c => vec!["h2".into()],
                UpstreamProtocol::Http1 => vec!["http/1.1".into()],
            },
            insecure_skip_verify: t.insecure_skip_verify,
        };
        if t.insecure_skip_verify {
            self.warn(
                anchor,
                format!("{key}.insecure_skip_verify"),
                "upstream certificates are not verified".into(),
                Some("use it in labs only; set ca = \"…\" instead".into()),
            );
        }
        match crate::tls::client_config(&settings) {
            Ok(cfg) => Some((settings, Built(cfg))),
            Err(e) => {
                let span = t.ca.clone().or(t.client_cert.clone()).unwrap_or_else(|| anchor.clone());
                self.at(
                    &span,
                    key.to_string(),
                    e.to_string(),
                    Some("check the CA and client certificate files".into()),
                );
                None
            }
        }
    }

    fn ha(&mut self, h: &model::HaSection, base: &std::path::Path) -> Option<HaConfigSection> {
        let mut peers = Vec::new();
        for (i, p) in h.peers.iter().enumerate() {
            if let Some(a) = self.addr(&p.address, format!("ha.peers[{i}].address")) {
                if peers.iter().any(|q: &tandem_ha::Peer| q.id == p.id) {
                    self.at(
                        &p.address,
                        format!("ha.peers[{i}].id"),
                        format!("peer id {} is used twice", p.id),
                        Some("give every member its own id, and never reuse one".into()),
                    );
                }
                peers.push(tandem_ha::Peer { id: p.id, address: a });
            }
        }
        if !h.peers.iter().any(|p| p.id == h.node_id) {
            self.at(
                &h.data_dir,
                "ha.node_id".into(),
                format!("node_id {} is not among ha.peers", h.node_id),
                Some("list this node in peers = [{ id = …, address = \"IP:port\" }]".into()),
            );
        }
        if h.peers.len() == 2 {
            self.warn(
                &h.data_dir,
                "ha.peers".into(),
                "a two-member group stops committing when either member is down".into(),
                Some("add a witness: { id = 3, address = \"…\", witness = true } run with `tandem witness`".into()),
            );
        }
        let sync = self.dur(&h.sync_interval, "ha.sync_interval".into());
        let mut tls = tandem_ha::PeerTls::new(
            self.file(base, &h.tls.ca, "ha.tls.ca".into(), super::access::Access::Read),
            self.file(base, &h.tls.cert, "ha.tls.cert".into(), super::access::Access::Read),
            self.file(base, &h.tls.key, "ha.tls.key".into(), super::access::Access::Read),
        );
        tls.verify_node_id = h.tls.verify_node_id;
        if let Some(n) = &h.tls.peer_name {
            if rustls_pki_types::ServerName::try_from(n.get_ref().as_str())
                .is_ok_and(|s| matches!(s, rustls_pki_types::ServerName::DnsName(_)))
            {
                tls.name = n.get_ref().clone();
            } else {
                self.at(
                    n,
                    "ha.tls.peer_name".into(),
                    format!("`{}` is not a DNS name", n.get_ref()),
                    Some("use a DNS name such as \"tandem-peer\" (it must be in every member's certificate)".into()),
                );
            }
        }
        for (what, p, s) in [
            ("ca", &tls.ca, &h.tls.ca),
            ("cert", &tls.cert, &h.tls.cert),
            ("key", &tls.key, &h.tls.key),
        ] {
            if let Err(e) = std::fs::metadata(p) {
                self.at(
                    s,
                    format!("ha.tls.{what}"),
                    format!("cannot read {}: {e}", p.display()),
                    Some("`tandem ctl cluster certs` makes a lab CA and node certificates".into()),
                );
            }
        }
        let heartbeat = self.dur(&h.heartbeat, "ha.heartbeat".into());
        let election = self.dur(&h.election_timeout, "ha.election_timeout".into());
        if election < heartbeat * 3 || heartbeat.is_zero() {
            let span = h
                .election_timeout
                .0
                .as_ref()
                .or(h.heartbeat.0.as_ref())
                .unwrap_or(&h.data_dir);
            self.at(
                span,
                "ha.election_timeout".into(),
                format!("election timeout {election:?} is under three heartbeats ({heartbeat:?})"),
                Some("keep election_timeout at least 3 × heartbeat (defaults \"150ms\" and \"50ms\")".into()),
            );
        }
        let mut group = tandem_ha::HaConfig::new(
            h.node_id,
            peers,
            self.file(
                base,
                &h.data_dir,
                "ha.data_dir".into(),
                super::access::Access::Directory,
            ),
            tls,
        );
        if !sync.is_zero() {
            group.sync_interval = sync;
        }
        group.heartbeat = heartbeat.max(Duration::from_millis(1));
        group.election_timeout = election.max(Duration::from_millis(3));
        // The witness leads by preference: a VIP holder's death then needs no election
        // before its lease can move.
        group.preferred_leader = h.peers.iter().find(|p| p.witness).map(|p| p.id);
        group.snapshot_every = h.snapshot_every.max(10);
        Some(HaConfigSection {
            group,
            witnesses: h.peers.iter().filter(|p| p.witness).map(|p| p.id).collect(),
            adopt_peer_recovery: h.adopt_peer_recovery,
        })
    }

    fn sticky(&mut self, st: &model::StickySection, key: &str) -> Option<crate::sticky::StickyConfig> {
        match st.mode.get_ref().as_str() {
            "cookie" => {
                if let Some(s) = &st.secret {
                    self.secret(s, format!("{key}.secret"));
                }
                let secret = match &st.secret {
                    Some(s) if s.get_ref().len() >= 16 => s.get_ref().as_bytes().to_vec(),
                    Some(s) => {
                        self.at(
                            s,
                            format!("{key}.secret"),
                            "the secret is shorter than 16 bytes".into(),
                            Some("use a long random string, the same on every node".into()),
                        );
                        return None;
                    }
                    None => {
                        self.at(
                            &st.mode,
                            format!("{key}.secret"),
                            "cookie stickiness needs a signing secret".into(),
                            Some("add secret = \"…\" (≥ 16 bytes, the same on every node of the pair)".into()),
                        );
                        return None;
                    }
                };
                let max_age = self.dur(&st.max_age, format!("{key}.max_age"));
                Some(crate::sticky::StickyConfig::Cookie {
                    name: st.cookie.clone(),
                    secret,
                    max_age: (!max_age.is_zero()).then_some(max_age),
                    secure: st.secure,
                })
            }
            "learned" => {
                let Some(on) = &st.on else {
                    self.at(
                        &st.mode,
                        format!("{key}.on"),
                        "learned stickiness needs a key".into(),
                        Some("add on = \"cookie:JSESSIONID\", \"header:NAME\" or \"source_ip\"".into()),
                    );
                    return None;
                };
                let on = parse_hash_on(self, on, format!("{key}.on"))?;
                Some(crate::sticky::StickyConfig::Learned {
                    on,
                    idle: self.dur(&st.idle_timeout, format!("{key}.idle_timeout")),
                })
            }
            other => {
                self.at(
                    &st.mode,
                    format!("{key}.mode"),
                    format!("unknown sticky mode `{other}`"),
                    Some("use \"cookie\" or \"learned\"".into()),
                );
                None
            }
        }
    }

    fn rate_limit(
        &mut self,
        rl: &model::RateLimitSection,
        key: &str,
        anchor: &SpannedStr,
        has_ha: bool,
    ) -> Option<crate::ratelimit::LimitConfig> {
        use crate::ratelimit::{Algorithm, LimitConfig, LimitKey};
        if rl.requests == 0 {
            self.at(
                anchor,
                format!("{key}.requests"),
                "0 would refuse every request".into(),
                Some("use a positive number".into()),
            );
        }
        let per = self.dur(&rl.per, format!("{key}.per"));
        let lk = match rl.key.get_ref().as_str() {
            "source_ip" => LimitKey::SourceIp,
            "route" => LimitKey::Route,
            k => match k
                .strip_prefix("header:")
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            {
                Some(h) => LimitKey::Header(h),
                None => {
                    self.at(
                        &rl.key,
                        format!("{key}.key"),
                        format!("`{k}` is not a limit key"),
                        Some("use \"source_ip\", \"header:NAME\" or \"route\"".into()),
                    );
                    LimitKey::Route
                }
            },
        };
        let algorithm = match rl.algorithm.get_ref().as_str() {
            "token_bucket" => Algorithm::TokenBucket,
            "sliding_window" => Algorithm::SlidingWindow,
            other => {
                self.at(
                    &rl.algorithm,
                    format!("{key}.algorithm"),
                    format!("unknown algorithm `{other}`"),
                    Some("use \"token_bucket\" or \"sliding_window\"".into()),
                );
                Algorithm::SlidingWindow
            }
        };
        let scope = match rl.scope.get_ref().as_str() {
            "local" => crate::ratelimit::Scope::Local,
            "cluster" => {
                if algorithm != Algorithm::SlidingWindow {
                    self.at(
                        &rl.scope,
                        format!("{key}.algorithm"),
                        "cluster scope counts in sliding windows".into(),
                        Some("use algorithm = \"sliding_window\" with scope = \"cluster\"".into()),
                    );
                }
                if !has_ha {
                    self.at(
                        &rl.scope,
                        format!("{key}.scope"),
                        "cluster scope needs the pair's Raft group".into(),
                        Some("add an [ha] section, or use scope = \"local\"".into()),
                    );
                }
                crate::ratelimit::Scope::Cluster
            }
            other => {
                self.at(
                    &rl.scope,
                    format!("{key}.scope"),
                    format!("unknown scope `{other}`"),
                    Some("use \"local\" or \"cluster\"".into()),
                );
                crate::ratelimit::Scope::Local
            }
        };
        (rl.requests > 0 && !per.is_zero()).then(|| LimitConfig {
            requests: rl.requests,
            per,
            burst: rl.burst.unwrap_or(rl.requests).max(1),
            key: lk,
            algorithm,
            scope,
        })
    }

    fn health_check(
        &mut self,
        h: &model::HealthCheckSection,
        key: &str,
        anchor: &SpannedStr,
    ) -> Option<HealthCheckConfig> {
        let interval = self.dur(&h.interval, format!("{key}.interval"));
        let timeout = self.dur(&h.timeout, format!("{key}.timeout"));
        let jitter = self.dur(&h.jitter, format!("{key}.jitter"));
        if interval.is_zero() {
            self.at(
                anchor,
                format!("{key}.interval"),
                "a zero interval would probe in a busy loop".into(),
                Some("use e.g. \"2s\"".into()),
            );
        }
        if timeout > interval {
            self.warn(
                anchor,
                format!("{key}.timeout"),
                format!("probe timeout {timeout:?} is longer than the interval {interval:?}"),
                Some("probes will overlap; make the timeout shorter than the interval".into()),
            );
        }
        if h.rise == 0 || h.fall == 0 {
            self.at(
                anchor,
                format!("{key}.rise"),
                "rise and fall must be at least 1".into(),
                Some("e.g. rise = 2, fall = 3".into()),
            );
        }
        let kind = match h.kind.get_ref().as_str() {
            "http" => {
                let method = match http::Method::from_bytes(h.method.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        self.at(
                            anchor,
                            format!("{key}.method"),
                            format!("`{}` is not an HTTP method", h.method),
                            None,
                        );
                        http::Method::GET
                    }
                };
                check_path(self, &h.path, format!("{key}.path"));
                let mut expected = Vec::new();
                for (i, e) in h.expected_statuses.iter().enumerate() {
                    let parsed = match e.get_ref().split_once('-') {
                        Some((a, b)) => a.trim().parse::<u16>().ok().zip(b.trim().parse::<u16>().ok()),
                        None => e.get_ref().trim().parse::<u16>().ok().map(|v| (v, v)),
                    };
                    match parsed {
                        Some((a, b)) if (100..=599).contains(&a) && (a..=599).contains(&b) => expected.push((a, b)),
                        _ => self.at(
                            e,
                            format!("{key}.expected_statuses[{i}]"),
                            format!("`{}` is not a status or range", e.get_ref()),
                            Some("write \"200\" or \"200-399\"".into()),
                        ),
                    }
                }
                CheckKind::Http {
                    method,
                    path: h.path.get_ref().clone(),
                    host: h.host.clone(),
                    expected,
                    body_contains: h.body_contains.clone(),
                }
            }
            "tcp" => CheckKind::Tcp {
                send: h.send.as_ref().map(|s| s.as_bytes().to_vec()),
                expect: h.expect.as_ref().map(|s| s.as_bytes().to_vec()),
            },
            other => {
                self.at(
                    &h.kind,
                    format!("{key}.kind"),
                    format!("unknown health check kind `{other}`"),
                    Some("use \"http\" or \"tcp\"".into()),
                );
                return None;
            }
        };
        Some(HealthCheckConfig {
            kind,
            interval,
            timeout,
            rise: h.rise.max(1),
            fall: h.fall.max(1),
            jitter,
            port: h.port,
            uneject: false,
        })
    }
    /// Validates a `[[filter]]`: loads, pins and compiles its module, and starts it once
    /// so a module that traps at start or refuses its configuration is reported here.
    fn filter(&mut self, f: &model::FilterSection, key: &str, base: &std::path::Path) -> Option<FilterConfig> {
        let failure_policy = match f.failure_policy.get_ref().as_str() {
            "fail_closed" => FailurePolicy::FailClosed,
            "fail_open" => FailurePolicy::FailOpen,
            other => {
                self.at(
                    &f.failure_policy,
                    format!("{key}.failure_policy"),
                    format!("unknown failure_policy `{other}`"),
                    Some("use \"fail_closed\" (503 when the filter fails) or \"fail_open\" (skip it)".into()),
                );
                FailurePolicy::FailClosed
            }
        };
        if f.memory_limit_mb == 0 || f.memory_limit_mb > 4096 {
            self.at(
                &f.name,
                format!("{key}.memory_limit_mb"),
                format!("{} MiB is out of range", f.memory_limit_mb),
                Some("use 1 to 4096 (default 64)".into()),
            );
        }
        let cpu_limit = self.dur(&f.cpu_limit, format!("{key}.cpu_limit"));
        if cpu_limit.is_zero() && f.cpu_limit.0.is_some() {
            self.at(
                &f.name,
                format!("{key}.cpu_limit"),
                "a zero CPU limit fails every callback".into(),
                Some("use e.g. \"50ms\"".into()),
            );
        }
        let as_bytes = |v: &Option<toml::Value>| -> Vec<u8> {
            match v {
                None => Vec::new(),
                Some(toml::Value::String(s)) => s.clone().into_bytes(),
                Some(other) => serde_json::to_vec(other).unwrap_or_default(),
            }
        };
        let path = self.file(base, &f.path, format!("{key}.path"), super::access::Access::Read);
        let module = match crate::wasm::module::load(&path, f.sha256.as_ref().map(|s| s.get_ref().as_str())) {
            Ok(m) => m,
            Err(e) => {
                let (span, k, hint) = match &e {
                    crate::wasm::module::ModuleError::Pin { actual, .. } => (
                        f.sha256.as_ref().unwrap_or(&f.path),
                        format!("{key}.sha256"),
                        format!("if this module is the one you mean to run, pin sha256 = \"{actual}\""),
                    ),
                    crate::wasm::module::ModuleError::Read { .. } => (
                        &f.path,
                        format!("{key}.path"),
                        "build the filter (cargo build --target wasm32-wasip1 --release) or fix the path".into(),
                    ),
                    crate::wasm::module::ModuleError::Compile { .. } => (
                        &f.path,
                        format!("{key}.path"),
                        "point at a .wasm module built for wasm32-wasip1 with the proxy-wasm SDK".into(),
                    ),
                };
                self.at(span, k, e.to_string(), Some(hint));
                return None;
            }
        };
        let cfg = FilterConfig {
            name: f.name.get_ref().clone(),
            path,
            root_id: f.root_id.clone(),
            vm_id: f.vm_id.clone().unwrap_or_else(|| f.name.get_ref().clone()),
            config: as_bytes(&f.config),
            vm_config: as_bytes(&f.vm_config),
            failure_policy,
            memory_limit: (f.memory_limit_mb.clamp(1, 4096) as usize) << 20,
            cpu_limit: if cpu_limit.is_zero() {
                Duration::from_millis(50)
            } else {
                cpu_limit
            },
            shared_prefix: f.shared_prefix.clone().filter(|p| !p.is_empty()),
            env: f.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            module: Built(std::sync::Arc::new(module)),
        };
        if let Err(e) = crate::wasm::trial(&cfg) {
            self.at(
                &f.name,
                key.to_string(),
                format!("filter `{}` does not start: {e}", cfg.name),
                Some("check the filter's configuration (its log lines above say more)".into()),
            );
            return None;
        }
        Some(cfg)
    }

    /// Validates a `[[vip]]`.
    fn vip(
        &mut self,
        v: &model::VipSection,
        key: &str,
        base: &std::path::Path,
    ) -> Option<tandem_ha::vip::router::VipConfig> {
        let mut ok = true;
        if !(1..=255).contains(&v.vrid) {
            self.at(
                &v.name,
                format!("{key}.vrid"),
                format!("{} is not a VRID", v.vrid),
                Some("use 1–255, the same on both nodes".into()),
            );
            ok = false;
        }
        if !(1..=255).contains(&v.priority) {
            self.at(
                &v.name,
                format!("{key}.priority"),
                format!("{} is out of range", v.priority),
                Some("use 1–254 (higher wins; 255 only on the node that owns the address)".into()),
            );
            ok = false;
        }
        let mut addresses: Vec<(std::net::IpAddr, u8)> = Vec::new();
        for (j, a) in v.addresses.iter().enumerate() {
            let (ip, prefix) = match a.get_ref().split_once('/') {
                Some((ip, p)) => (ip, Some(p)),
                None => (a.get_ref().as_str(), None),
            };
            let parsed = ip.parse::<std::net::IpAddr>().ok().and_then(|ip| {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let p = prefix.map_or(Some(max), |p| p.parse::<u8>().ok())?;
                (p <= max).then_some((ip, p))
            });
            match parsed {
                Some(v) if addresses.first().is_some_and(|f| f.0.is_ipv4() != v.0.is_ipv4()) => {
                    self.at(
                        a,
                        format!("{key}.addresses[{j}]"),
                        format!("`{}` mixes IPv4 and IPv6 in one VIP", a.get_ref()),
                        Some("VRRPv3 runs one virtual router per family: put the IPv6 addresses in their own [[vip]] with another vrid".into()),
                    );
                    ok = false;
                }
                Some(v) => addresses.push(v),
                None => {
                    self.at(
                        a,
                        format!("{key}.addresses[{j}]"),
                        format!("`{}` is not an IP address with an optional prefix", a.get_ref()),
                        Some("e.g. \"10.0.0.100/24\" or \"fd00::100/64\"".into()),
                    );
                    ok = false;
                }
            }
        }
        if v.addresses.is_empty() {
            self.at(
                &v.name,
                format!("{key}.addresses"),
                "no address".into(),
                Some("add addresses = [\"10.0.0.100/24\"]".into()),
            );
            ok = false;
        }
        let interval = self.dur(&v.advert_interval, format!("{key}.advert_interval"));
        let interval_cs = (interval.as_millis() / 10) as u64;
        if !(1..=4095).contains(&interval_cs) {
            self.at(
                &v.name,
                format!("{key}.advert_interval"),
                format!("{interval:?} is out of range"),
                Some("use 10ms to 40.95s (VRRPv3 counts centiseconds)".into()),
            );
            ok = false;
        }
        let lifetime = self.dur(&v.address_lifetime, format!("{key}.address_lifetime"));
        if lifetime < Duration::from_secs(1) || lifetime < interval * 3 {
            self.at(
                &v.name,
                format!("{key}.address_lifetime"),
                format!("{lifetime:?} is shorter than 1s or three advert intervals"),
                Some("use a few seconds (default \"3s\"): a killed holder's VIP disappears after it".into()),
            );
            ok = false;
        }
        let mut peers = Vec::new();
        let v6 = addresses.first().is_some_and(|a| a.0.is_ipv6());
        for (j, p) in v.unicast_peers.iter().enumerate() {
            // IPv6 adverts come from the link-local address and their checksum covers
            // it: a peer is reached at its link-local address on the VIP's interface.
            match p.get_ref().parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) if !v6 => peers.push(std::net::IpAddr::V4(a)),
                Ok(std::net::IpAddr::V6(a)) if v6 && a.segments()[0] & 0xffc0 == 0xfe80 => {
                    peers.push(std::net::IpAddr::V6(a))
                }
                _ => {
                    self.at(
                        p,
                        format!("{key}.unicast_peers[{j}]"),
                        if v6 {
                            format!("`{}` is not an IPv6 link-local address", p.get_ref())
                        } else {
                            format!("`{}` is not an IPv4 address", p.get_ref())
                        },
                        Some(if v6 {
                            "IPv6 adverts go between link-local addresses: name the peer's fe80:: address on this interface (`ip -6 addr show scope link`)".into()
                        } else {
                            "e.g. \"10.0.0.12\"".into()
                        }),
                    );
                    ok = false;
                }
            }
        }
        let garp_refresh = self.dur(&v.garp_refresh, format!("{key}.garp_refresh"));
        let hold_down = self.dur(&v.hold_down, format!("{key}.hold_down"));
        let quorum_wait = self.dur(&v.quorum_wait, format!("{key}.quorum_wait"));
        let on_no_quorum = match v.on_no_quorum.get_ref().as_str() {
            "vrrp" => tandem_ha::vip::router::NoQuorum::Vrrp,
            "hold" => tandem_ha::vip::router::NoQuorum::Hold,
            other => {
                self.at(
                    &v.on_no_quorum,
                    format!("{key}.on_no_quorum"),
                    format!("unknown policy `{other}`"),
                    Some(
                        "use \"vrrp\" (take over by VRRP alone) or \"hold\" (a node without quorum never takes over)"
                            .into(),
                    ),
                );
                ok = false;
                tandem_ha::vip::router::NoQuorum::Vrrp
            }
        };
        let preempt_delay = self.dur(&v.preempt_delay, format!("{key}.preempt_delay"));
        let mut track_scripts = Vec::new();
        for (j, t) in v.track_scripts.iter().enumerate() {
            let skey = format!("{key}.track_scripts[{j}]");
            if t.command.get_ref().trim().is_empty() {
                self.at(
                    &t.command,
                    format!("{skey}.command"),
                    "empty command".into(),
                    Some("a shell command whose exit status 0 means healthy, e.g. \"pidof haproxy\"".into()),
                );
                ok = false;
            }
            let interval = self.dur(&t.interval, format!("{skey}.interval"));
            let timeout = self.dur(&t.timeout, format!("{skey}.timeout"));
            if interval < Duration::from_millis(100) || timeout.is_zero() {
                self.at(
                    &t.command,
                    format!("{skey}.interval"),
                    format!("interval {interval:?} / timeout {timeout:?} out of range"),
                    Some("use an interval of at least 100ms and a timeout above 0 (e.g. interval = \"2s\", timeout = \"1s\")".into()),
                );
                ok = false;
            }
            if t.rise == 0 || t.fall == 0 {
                self.at(
                    &t.command,
                    format!("{skey}.rise"),
                    "rise and fall must be at least 1".into(),
                    Some("rise = 2, fall = 2 waits for two results in a row".into()),
                );
                ok = false;
            }
            track_scripts.push(tandem_ha::vip::router::TrackScript {
                command: t.command.get_ref().clone(),
                interval,
                timeout,
                rise: t.rise,
                fall: t.fall,
                weight: t.weight.unwrap_or(v.track_weight).min(254) as u8,
            });
        }
        let mut track_processes = Vec::new();
        for (j, t) in v.track_processes.iter().enumerate() {
            let pkey = format!("{key}.track_processes[{j}]");
            let name = t.name.get_ref();
            if name.trim().is_empty() || (!t.full_command && name.len() > 15) {
                self.at(
                    &t.name,
                    format!("{pkey}.name"),
                    format!("`{name}` cannot name a process"),
                    Some("the kernel keeps 15 characters of a process name (`ps -o comm`); for a longer one or a path, set full_command = true and give the start of its command line".into()),
                );
                ok = false;
            }
            if t.quorum == 0 {
                self.at(
                    &t.name,
                    format!("{pkey}.quorum"),
                    "quorum 0 is always met".into(),
                    Some("quorum = 1 (the default) needs one running instance".into()),
                );
                ok = false;
            }
            track_processes.push(tandem_ha::vip::router::TrackProcess {
                name: name.clone(),
                full_command: t.full_command,
                quorum: t.quorum,
                weight: t.weight.unwrap_or(v.track_weight).min(254) as u8,
                delay: self.dur(&t.delay, format!("{pkey}.delay")),
            });
        }
        let version = match v.vrrp_version {
            3 => tandem_ha::vip::packet::Version::V3,
            2 if v6 => {
                self.at(
                    &v.name,
                    format!("{key}.vrrp_version"),
                    "VRRPv2 carries IPv4 addresses only".into(),
                    Some("IPv6 VIPs need vrrp_version = 3 (the default)".into()),
                );
                ok = false;
                tandem_ha::vip::packet::Version::V3
            }
            2 if interval.subsec_millis() != 0 || interval < Duration::from_secs(1) => {
                self.at(
                    &v.name,
                    format!("{key}.advert_interval"),
                    format!("{interval:?} is not whole seconds"),
                    Some("VRRPv2 counts the interval in seconds: use advert_interval = \"1s\" (or more)".into()),
                );
                ok = false;
                tandem_ha::vip::packet::Version::V2
            }
            2 => tandem_ha::vip::packet::Version::V2,
            other => {
                self.at(
                    &v.name,
                    format!("{key}.vrrp_version"),
                    format!("VRRP version {other} does not exist"),
                    Some("use 3 (the default), or 2 for peers that speak only VRRPv2".into()),
                );
                ok = false;
                tandem_ha::vip::packet::Version::V3
            }
        };
        for (j, i) in v.track_interfaces.iter().enumerate() {
            if i.get_ref().is_empty() || i.get_ref().len() >= 16 {
                self.at(
                    i,
                    format!("{key}.track_interfaces[{j}]"),
                    format!("`{}` is not an interface name", i.get_ref()),
                    Some("name an interface as `ip link` shows it, e.g. \"eth1\"".into()),
                );
                ok = false;
            }
        }
        ok.then(|| tandem_ha::vip::router::VipConfig {
            name: v.name.get_ref().clone(),
            interface: v.interface.get_ref().clone(),
            vrid: v.vrid as u8,
            priority: v.priority as u8,
            interval_cs: interval_cs as u16,
            preempt: v.preempt,
            addresses,
            unicast_peers: peers,
            garp_repeat: v.garp_repeat,
            garp_refresh,
            address_lifetime: lifetime,
            notify: v
                .notify
                .as_ref()
                .map(|n| self.file(base, n, format!("{key}.notify"), super::access::Access::Read)),
            notify_keepalived: v.notify_keepalived,
            notify_fifo: v.notify_fifo.as_ref().map(|f| self.path(base, f)),
            hold_down,
            track_clusters: v.track_clusters.iter().map(|c| c.get_ref().clone()).collect(),
            track_weight: v.track_weight.min(254) as u8,
            on_no_quorum,
            quorum_wait,
            skip_check_adv_addr: v.skip_check_adv_addr,
            preempt_delay,
            track_interfaces: v.track_interfaces.iter().map(|c| c.get_ref().clone()).collect(),
            track_scripts,
            track_files: v.track_files.iter().map(|f| self.path(base, f)).collect(),
            sync_group: v.sync_group.as_ref().map(|g| g.get_ref().clone()),
            track_processes,
            version,
            use_vmac: v.use_vmac,
        })
    }

    fn at(&mut self, span: &SpannedStr, key: String, message: String, hint: Option<String>) {
        let (line, col) = self.lines.locate(span.span().start);
        self.issues.push(ConfigIssue {
            line,
            col,
            key,
            message,
            hint,
        });
    }

    fn addr(&mut self, s: &SpannedStr, key: String) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let hint = if s.get_ref().contains(':') {
                    "write an IP and port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"; host names are not resolved"
                } else {
                    "add a port, e.g. \"127.0.0.1:8080\""
                };
                self.at(
                    s,
                    key,
                    format!("`{}` is not an IP:port address", s.get_ref()),
                    Some(hint.into()),
                );
                None
            }
        }
    }

    /// Parses a duration written in the file; a default passes through.
    fn dur(&mut self, d: &model::Dur, key: String) -> Duration {
        let Some(text) = &d.0 else { return d.1 };
        match humantime::parse_duration(text.get_ref()) {
            Ok(v) => v,
            Err(_) => {
                self.at(
                    text,
                    key,
                    format!("`{}` is not a duration", text.get_ref()),
                    Some("write a number and a unit, e.g. \"250ms\", \"5s\", \"2m\"".into()),
                );
                Duration::ZERO
            }
        }
    }

    fn regex(&mut self, s: &SpannedStr, key: String) -> Option<Regex> {
        match Regex::new(&format!("^(?:{})$", s.get_ref())) {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("").trim().to_string();
                self.at(
                    s,
                    key,
                    format!("`{}` is not a valid regular expression: {last}", s.get_ref()),
                    Some("the syntax is Rust `regex` (RE2-like); the pattern is anchored at both ends".into()),
                );
                None
            }
        }
    }

    fn header_name(&mut self, s: &SpannedStr, key: String) -> Option<http::HeaderName> {
        match http::HeaderName::from_bytes(s.get_ref().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.at(
                    s,
                    key,
                    format!("`{}` is not a valid header name", s.get_ref()),
                    Some("use letters, digits and `-` only".into()),
                );
                None
            }
        }
    }

    fn rules(&mut self, r: &model::HeaderRulesSection, key: &str) -> HeaderRules {
        let mut out = HeaderRules::default();
        for (list, dest, what) in [(&r.add, 0, "add"), (&r.set, 1, "set")] {
            for (i, hv) in list.iter().enumerate() {
                let k = format!("{key}.{what}[{i}]");
                let name = self.header_name(&hv.name, format!("{k}.name"));
                let value = match http::HeaderValue::from_str(hv.value.get_ref()) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.at(
                            &hv.value,
                            format!("{k}.value"),
                            "header value contains control characters".into(),
                            Some("use visible ASCII only".into()),
                        );
                        None
                    }
                };
                if let (Some(n), Some(v)) = (name, value) {
                    if dest == 0 {
                        out.add.push((n, v));
                    } else {
                        out.set.push((n, v));
                    }
                }
            }
        }
        for (i, n) in r.remove.iter().enumerate() {
            if let Some(h) = self.header_name(n, format!("{key}.remove[{i}]")) {
                out.remove.push(h);
            }
        }
        out
    }
}

/// Validates a parsed file; returns every problem found.
pub(crate) fn validate(
    source: &str,
    text: &str,
    lines: &LineIndex,
    file: ConfigFile,
    base: &std::path::Path,
    readable_by_others: bool,
) -> Result<Config, Vec<ConfigIssue>> {
    let mut c = Checker {
        lines,
        issues: Vec::new(),
        warnings: Vec::new(),
        readable_by_others: readable_by_others.then_some(source),
        files: Vec::new(),
    };

    let workers = if file.server.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        file.server.workers
    };
    let request_id = match file.server.request_id.as_ref() {
        None => crate::headers::RequestIdMode::Generate,
        Some(m) => match m.get_ref().as_str() {
            "generate" => crate::headers::RequestIdMode::Generate,
            "keep" => crate::headers::RequestIdMode::Keep,
            "off" => crate::headers::RequestIdMode::Off,
            other => {
                c.at(
                    m,
                    "server.request_id".into(),
                    format!("unknown mode `{other}`"),
                    Some(
                        "use \"generate\" (keep the client's or make one), \"keep\" (only the client's) or \"off\""
                            .into(),
                    ),
                );
                crate::headers::RequestIdMode::Generate
            }
        },
    };
    let mut forwarded = crate::headers::ForwardedHeaders::default();
    if let Some(list) = &file.server.forwarded_headers {
        forwarded = crate::headers::ForwardedHeaders {
            xff: false,
            proto: false,
            host: false,
        };
        for (i, h) in list.iter().enumerate() {
            match h.get_ref().as_str() {
                "for" => forwarded.xff = true,
                "proto" => forwarded.proto = true,
                "host" => forwarded.host = true,
                other => c.at(
                    h,
                    format!("server.forwarded_headers[{i}]"),
                    format!("unknown header `{other}`"),
                    Some(
                        "list any of \"for\", \"proto\", \"host\" (X-Forwarded-For, -Proto, -Host); [] adds none"
                            .into(),
                    ),
                ),
            }
        }
    }
    let server = ServerConfig {
        workers,
        drain_timeout: c.dur(&file.server.drain_timeout, "server.drain_timeout".into()),
        maintenance_handover: c.dur(&file.server.maintenance_handover, "server.maintenance_handover".into()),
        request_id,
        forwarded,
    };

    let admin_explicit = file.admin.is_some();
    let admin_section = file
        .admin
        .as_ref()
        .map_or_else(Default::default, |a| model::AdminSection {
            listen: a.listen.clone(),
            token: a.token.clone(),
        });
    let admin_listen = c.addr(&admin_section.listen, "admin.listen".into());
    let token = admin_section.token.as_ref().filter(|t| !t.get_ref().is_empty());
    if let Some(t) = token {
        let v = t.get_ref();
        if v.chars().count() < MIN_ADMIN_TOKEN {
            c.at(
                t,
                "admin.token".into(),
                format!(
                    "the token is {} characters long; a guessable token guards nothing",
                    v.chars().count()
                ),
                Some(format!(
                    "use at least {MIN_ADMIN_TOKEN} random characters, e.g. the output of `openssl rand -hex 24`"
                )),
            );
        } else if !v.chars().all(|ch| ch.is_ascii_graphic()) {
            c.at(
                t,
                "admin.token".into(),
                "the token holds spaces or characters outside printable ASCII".into(),
                Some("use letters, digits and punctuation only, e.g. `openssl rand -hex 24`".into()),
            );
        }
        c.secret(t, "admin.token".into());
    }
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() && token.is_none() {
            c.at(
                &admin_section.listen,
                "admin.listen".into(),
                format!("`{a}` is reachable beyond loopback but no token is set"),
                Some("set admin.token = \"…\" (a long random string) or listen on 127.0.0.1".into()),
            );
        }
    }
    let admin = AdminConfig {
        listen: admin_listen.unwrap_or_else(|| "127.0.0.1:9900".parse().expect("literal")),
        token: token.map(|t| t.get_ref().clone()),
        explicit: admin_explicit,
    };

    let log = LogConfig {
        level: file.log.level.clone(),
        format: log_format(&mut c, &file.log.format, "log.format"),
        access_log: match file.log.access_log.as_str() {
            "off" | "" => AccessLogTarget::Off,
            "stdout" => AccessLogTarget::Stdout,
            "stderr" => AccessLogTarget::Stderr,
            p => {
                let (line, col) = text.find("access_log").map(|at| lines.locate(at)).unwrap_or((1, 1));
                // As given: a relative path is taken from the working directory.
                let path = std::path::PathBuf::from(p);
                c.files.push(super::access::FileUse {
                    path: path.clone(),
                    access: super::access::Access::Append,
                    key: "log.access_log".into(),
                    line,
                    col,
                });
                AccessLogTarget::File(path)
            }
        },
        access_log_format: log_format(&mut c, &file.log.access_log_format, "log.access_log_format"),
    };

    // Listeners.
    let mut listeners = Vec::new();
    let mut listener_names: HashMap<String, usize> = HashMap::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let key = format!("listener[{i}]");
        if listener_names.insert(l.name.get_ref().clone(), i).is_some() {
            c.at(
                &l.name,
                format!("{key}.name"),
                format!("listener name `{}` is used twice", l.name.get_ref()),
                Some("give each listener a unique name".into()),
            );
        }
        let addr = c.addr(&l.listen, format!("{key}.listen"));
        if l.max_header_bytes < 1024 {
            c.at(
                &l.name,
                format!("{key}.max_header_bytes"),
                format!("{} is too small", l.max_header_bytes),
                Some("use at least 1024 (default 65536)".into()),
            );
        }
        if l.max_connections == 0 {
            c.at(
                &l.name,
                format!("{key}.max_connections"),
                "0 would refuse every connection".into(),
                Some("use a positive number (default 10000)".into()),
            );
        }
        let protocol = match l.protocol.get_ref().as_str() {
            "http" => ListenerProtocol::Http,
            "tcp" => ListenerProtocol::Tcp,
            other => {
                c.at(
                    &l.protocol,
                    format!("{key}.protocol"),
                    format!("unknown listener protocol `{other}`"),
                    Some("use \"http\" or \"tcp\"".into()),
                );
                ListenerProtocol::Http
            }
        };
        let tls = l
            .tls
            .as_ref()
            .map(|t| c.listener_tls(t, base, &format!("{key}.tls"), &l.name));
        let mut proxy_protocol_from = Vec::new();
        for (j, s) in l.proxy_protocol_from.iter().enumerate() {
            match Cidr::parse(s.get_ref()) {
                Some(n) => proxy_protocol_from.push(n),
                None => c.at(
                    s,
                    format!("{key}.proxy_protocol_from[{j}]"),
                    format!("`{}` is not an address block", s.get_ref()),
                    Some("write e.g. \"10.0.0.0/8\" or \"192.0.2.7\"".into()),
                ),
            }
        }
        let mut sni_routes = Vec::new();
        for (j, r) in l.sni_routes.iter().enumerate() {
            let mut pats = Vec::new();
            for (k, n) in r.server_names.iter().enumerate() {
                let v = n.get_ref().to_ascii_lowercase();
                match v.strip_prefix('*') {
                    Some(sfx) if sfx.starts_with('.') && sfx.len() > 1 => {
                        pats.push(HostPattern::Suffix(sfx.to_string()))
                    }
                    Some(_) => c.at(
                        n,
                        format!("{key}.sni_routes[{j}].server_names[{k}]"),
                        format!("`{}` is not a server name pattern", n.get_ref()),
                        Some("write `a.example.com` or `*.example.com`".into()),
                    ),
                    None => pats.push(HostPattern::Exact(v)),
                }
            }
            sni_routes.push((pats, r.cluster.get_ref().clone()));
        }
        if protocol == ListenerProtocol::Tcp && l.cluster.is_none() && l.sni_routes.is_empty() {
            c.at(
                &l.name,
                format!("{key}.cluster"),
                "a tcp listener needs a destination".into(),
                Some("add cluster = \"NAME\" or sni_routes = [...]".into()),
            );
        }
        if protocol == ListenerProtocol::Http && (l.cluster.is_some() || !l.sni_routes.is_empty()) {
            c.at(
                &l.name,
                format!("{key}.cluster"),
                "`cluster` and `sni_routes` apply to tcp listeners".into(),
                Some("route HTTP with [[route]] tables, or set protocol = \"tcp\"".into()),
            );
        }
        if !l.sni_routes.is_empty() && l.tls.is_some() {
            c.at(
                &l.name,
                format!("{key}.sni_routes"),
                "sni_routes pass TLS through; this listener also terminates TLS".into(),
                Some("remove `tls` for passthrough, or `sni_routes` to terminate".into()),
            );
        }
        let max_age = c.dur(&l.max_connection_age, format!("{key}.max_connection_age"));
        if !(1024..=1 << 20).contains(&l.tcp_buffer_bytes) {
            c.at(
                &l.name,
                format!("{key}.tcp_buffer_bytes"),
                format!("{} is out of range", l.tcp_buffer_bytes),
                Some("use 1024 to 1048576 bytes (default 32768)".into()),
            );
        }
        if let Some(listen) = addr {
            if let Some(prev) = listeners.iter().find(|p: &&ListenerConfig| p.listen == listen) {
                c.at(
                    &l.listen,
                    format!("{key}.listen"),
                    format!("`{listen}` is already used by listener `{}`", prev.name),
                    Some("each listener needs its own address".into()),
                );
            }
            listeners.push(ListenerConfig {
                name: l.name.get_ref().clone(),
                listen,
                max_connections: l.max_connections,
                max_requests_per_connection: l.max_requests_per_connection,
                max_header_bytes: l.max_header_bytes.max(8192),
                max_headers: l.max_headers,
                header_read_timeout: c.dur(&l.header_read_timeout, format!("{key}.header_read_timeout")),
                request_body_timeout: c.dur(&l.request_body_timeout, format!("{key}.request_body_timeout")),
                idle_timeout: c.dur(&l.idle_timeout, format!("{key}.idle_timeout")),
                http2: l.http2,
                protocol,
                tls_server: tls
                    .as_ref()
                    .and_then(|t| c.tls_server(t, l.tls.as_ref(), &l.name, &key)),
                tls,
                proxy_protocol_from,
                cluster: l.cluster.as_ref().map(|s| s.get_ref().clone()),
                sni_routes,
                max_connection_age: (max_age > Duration::ZERO).then_some(max_age),
                tcp_buffer_bytes: l.tcp_buffer_bytes,
                filters: l.filters.iter().map(|f| f.get_ref().clone()).collect(),
            });
        }
    }

    // Clusters.
    let mut clusters = Vec::new();
    let mut cluster_names: HashMap<String, usize> = HashMap::new();
    for (i, cl) in file.clusters.iter().enumerate() {
        let key = format!("cluster[{i}]");
        if cluster_names.insert(cl.name.get_ref().clone(), i).is_some() {
            c.at(
                &cl.name,
                format!("{key}.name"),
                format!("cluster name `{}` is used twice", cl.name.get_ref()),
                Some("give each cluster a unique name".into()),
            );
        }
        let balancer = match BalancerKind::from_name(cl.balancer.get_ref()) {
            Some(b) => b,
            None => {
                let hint = match did_you_mean(cl.balancer.get_ref(), BalancerKind::NAMES) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("one of: {}", BalancerKind::NAMES.join(", ")),
                };
                c.at(
                    &cl.balancer,
                    format!("{key}.balancer"),
                    format!("unknown balancer `{}`", cl.balancer.get_ref()),
                    Some(hint),
                );
                BalancerKind::RoundRobin
            }
        };
        let hash_on = cl
            .hash_on
            .as_ref()
            .and_then(|h| parse_hash_on(&mut c, h, format!("{key}.hash_on")));
        if balancer.is_hashing() && cl.hash_on.is_none() {
            c.at(
                &cl.balancer,
                format!("{key}.hash_on"),
                format!("balancer `{}` needs a hash key", balancer.name()),
                Some("add hash_on = \"header:NAME\", \"cookie:NAME\" or \"source_ip\"".into()),
            );
        }
        let protocol = match cl.protocol.get_ref().as_str() {
            "http1" => UpstreamProtocol::Http1,
            "h2c" | "http2" => UpstreamProtocol::H2c,
            other => {
                c.at(
                    &cl.protocol,
                    format!("{key}.protocol"),
                    format!("unknown upstream protocol `{other}`"),
                    Some("use \"http1\" or \"h2c\"".into()),
                );
                UpstreamProtocol::Http1
            }
        };
        if cl.endpoints.is_empty() {
            c.at(
                &cl.name,
                format!("{key}.endpoints"),
                format!("cluster `{}` has no endpoints", cl.name.get_ref()),
                Some("add endpoints = [{ address = \"127.0.0.1:9001\" }]".into()),
            );
        }
        let mut endpoints: Vec<EndpointConfig> = Vec::new();
        for (j, ep) in cl.endpoints.iter().enumerate() {
            let ekey = format!("{key}.endpoints[{j}]");
            if ep.weight == 0 {
                c.at(
                    &ep.address,
                    format!("{ekey}.weight"),
                    "weight 0 would never be picked".into(),
                    Some("use a weight ≥ 1, or remove the endpoint".into()),
                );
            }
            if let Some(address) = c.addr(&ep.address, format!("{ekey}.address")) {
                if endpoints.iter().any(|e| e.address == address) {
                    c.at(
                        &ep.address,
                        format!("{ekey}.address"),
                        format!("`{address}` is listed twice in cluster `{}`", cl.name.get_ref()),
                        Some("list each endpoint once and use weight to favour it".into()),
                    );
                }
                endpoints.push(EndpointConfig {
                    address,
                    weight: ep.weight.max(1),
                });
            }
        }
        if balancer == BalancerKind::Maglev && (cl.maglev_table_size as usize) < 100 * endpoints.len().max(1) {
            c.at(
                &cl.name,
                format!("{key}.maglev_table_size"),
                format!(
                    "{} is too small for {} endpoints",
                    cl.maglev_table_size,
                    endpoints.len()
                ),
                Some("use a prime above 100 × endpoints (default 65537)".into()),
            );
        }
        if cl.ring_hash_virtual_nodes == 0 {
            c.at(
                &cl.name,
                format!("{key}.ring_hash_virtual_nodes"),
                "0 leaves the ring empty".into(),
                Some("use 100–1000 (default 160)".into()),
            );
        }
        let health_check = cl
            .health_check
            .as_ref()
            .and_then(|h| c.health_check(h, &format!("{key}.health_check"), &cl.name));
        let outlier = cl.outlier_detection.as_ref().map(|o| {
            let k = format!("{key}.outlier_detection");
            if o.max_ejection_percent > 100 {
                c.at(
                    &cl.name,
                    format!("{k}.max_ejection_percent"),
                    format!("{} is above 100", o.max_ejection_percent),
                    Some("use 0–100".into()),
                );
            }
            OutlierConfig {
                consecutive_5xx: o.consecutive_5xx,
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                interval: c
                    .dur(&o.interval, format!("{k}.interval"))
                    .max(Duration::from_millis(100)),
                success_rate_min_requests: o.success_rate_min_requests,
                success_rate_min_hosts: o.success_rate_min_hosts,
                success_rate_stdev_factor: o.success_rate_stdev_factor,
                base_ejection_time: c.dur(&o.base_ejection_time, format!("{k}.base_ejection_time")),
                max_ejection_time: c.dur(&o.max_ejection_time, format!("{k}.max_ejection_time")),
                max_ejection_percent: o.max_ejection_percent.min(100),
                uneject_on_active_check: o.uneject_on_active_check,
            }
        });
        let slow_window = c.dur(&cl.slow_start, format!("{key}.slow_start"));
        if cl.slow_start_aggression <= 0.0 {
            c.at(
                &cl.name,
                format!("{key}.slow_start_aggression"),
                "must be above 0".into(),
                Some("1.0 is linear; larger ramps faster early".into()),
            );
        }
        let slow_start = (!slow_window.is_zero()).then(|| SlowStart {
            window: slow_window,
            aggression: cl.slow_start_aggression.max(0.01),
            min_weight: f64::from(cl.slow_start_min_weight_percent.min(100)) / 100.0,
        });
        if cl.panic_threshold > 100 {
            c.at(
                &cl.name,
                format!("{key}.panic_threshold"),
                format!("{} is above 100", cl.panic_threshold),
                Some("use 0–100 (default 50); 0 disables panic mode".into()),
            );
        }
        let connect_timeout = c.dur(&cl.connect_timeout, format!("{key}.connect_timeout"));
        let pool_idle_timeout = c.dur(&cl.pool_idle_timeout, format!("{key}.pool_idle_timeout"));
        let max_connection_age = c.dur(&cl.max_connection_age, format!("{key}.max_connection_age"));
        clusters.push(ClusterConfig {
            name: cl.name.get_ref().clone(),
            balancer,
            hash_on,
            protocol,
            connect_timeout,
            pool_max_idle_per_endpoint: cl.pool_max_idle_per_endpoint,
            pool_idle_timeout,
            max_connection_age: (max_connection_age > Duration::ZERO).then_some(max_connection_age),
            ring_hash_virtual_nodes: cl.ring_hash_virtual_nodes.max(1),
            maglev_table_size: cl.maglev_table_size,
            endpoints,
            health_check,
            outlier,
            slow_start,
            panic_threshold: f64::from(cl.panic_threshold.min(100)) / 100.0,
            breakers: BreakerConfig {
                max_connections: cl.circuit_breakers.max_connections,
                max_pending: cl.circuit_breakers.max_pending,
                max_requests: cl.circuit_breakers.max_requests,
                max_retries: cl.circuit_breakers.max_retries,
            },
            retry_budget: RetryBudget {
                ratio: (cl.retry_budget.budget_percent / 100.0).clamp(0.0, 1.0),
                min_concurrency: cl.retry_budget.min_retry_concurrency,
            },
            tls: cl
                .tls
                .as_ref()
                .and_then(|t| c.upstream_tls(t, base, &format!("{key}.tls"), &cl.name, protocol)),
            sticky: cl.sticky.as_ref().and_then(|st| c.sticky(st, &format!("{key}.sticky"))),
            proxy_protocol: cl.proxy_protocol.as_ref().and_then(|p| match p.get_ref().as_str() {
                "v1" => Some(ProxyProtocolVersion::V1),
                "v2" => Some(ProxyProtocolVersion::V2),
                other => {
                    c.at(
                        p,
                        format!("{key}.proxy_protocol"),
                        format!("unknown PROXY protocol version `{other}`"),
                        Some("use \"v1\" or \"v2\"".into()),
                    );
                    None
                }
            }),
        });
    }

    // Listener destinations (tcp listeners name clusters).
    for (i, l) in file.listeners.iter().enumerate() {
        let names = l.cluster.iter().map(|c| (c, format!("listener[{i}].cluster"))).chain(
            l.sni_routes
                .iter()
                .enumerate()
                .map(|(j, r)| (&r.cluster, format!("listener[{i}].sni_routes[{j}].cluster"))),
        );
        for (name, k) in names {
            if !cluster_names.contains_key(name.get_ref()) {
                let hint = match did_you_mean(name.get_ref(), cluster_names.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "define it with [[cluster]] name = \"…\"".into(),
                };
                c.at(name, k, format!("no cluster named `{}`", name.get_ref()), Some(hint));
            }
        }
    }

    // Routes.
    // Filters (before routes, which name them).
    let mut filters: Vec<FilterConfig> = Vec::new();
    let mut filter_names: HashMap<String, usize> = HashMap::new();
    if let (Some(f), Err(why)) = (file.filters.first(), crate::wasm::module::cache()) {
        c.warn(
            &f.path,
            "filter[0].path".into(),
            format!("compiled filters are not cached on disk ({why}); every start compiles them"),
            Some(
                "give Tandem a cache directory of its own: TANDEM_WASM_CACHE, or systemd's CacheDirectory=tandem"
                    .into(),
            ),
        );
    }
    for (i, f) in file.filters.iter().enumerate() {
        let key = format!("filter[{i}]");
        if filter_names.contains_key(f.name.get_ref()) {
            c.at(
                &f.name,
                format!("{key}.name"),
                format!("filter name `{}` is used twice", f.name.get_ref()),
                Some("give each filter a unique name".into()),
            );
            continue;
        }
        if let Some(cfg) = c.filter(f, &key, base) {
            filter_names.insert(cfg.name.clone(), filters.len());
            filters.push(cfg);
        } else {
            filter_names.insert(f.name.get_ref().clone(), usize::MAX);
        }
    }

    for (i, l) in file.listeners.iter().enumerate() {
        for (j, name) in l.filters.iter().enumerate() {
            if !filter_names.contains_key(name.get_ref()) {
                let hint = match did_you_mean(name.get_ref(), filter_names.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "define it with [[filter]] name = \"…\" path = \"….wasm\"".into(),
                };
                c.at(
                    name,
                    format!("listener[{i}].filters[{j}]"),
                    format!("unknown filter `{}`", name.get_ref()),
                    Some(hint),
                );
            }
        }
        if !l.filters.is_empty() && l.protocol.get_ref() != "tcp" {
            c.at(
                &l.filters[0],
                format!("listener[{i}].filters"),
                "listener filters are network (L4) filters and apply to tcp listeners".into(),
                Some("put HTTP filters on routes: [[route]] filters = [\"…\"]".into()),
            );
        }
    }

    let mut routes = Vec::new();
    let mut route_names: HashMap<String, usize> = HashMap::new();
    for (i, r) in file.routes.iter().enumerate() {
        let key = format!("route[{i}]");
        if route_names.insert(r.name.get_ref().clone(), i).is_some() {
            c.at(
                &r.name,
                format!("{key}.name"),
                format!("route name `{}` is used twice", r.name.get_ref()),
                Some("give each route a unique name".into()),
            );
        }
        for (j, l) in r.listeners.iter().enumerate() {
            if !listener_names.contains_key(l.get_ref()) {
                let hint = match did_you_mean(l.get_ref(), listener_names.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "name a listener defined with [[listener]]".into(),
                };
                c.at(
                    l,
                    format!("{key}.listeners[{j}]"),
                    format!("no listener named `{}`", l.get_ref()),
                    Some(hint),
                );
            }
        }
        let mut hosts = Vec::new();
        for (j, h) in r.hosts.iter().enumerate() {
            let s = h.get_ref().to_ascii_lowercase();
            if s == "*" {
                hosts.push(HostPattern::Any);
            } else if let Some(suffix) = s.strip_prefix('*') {
                if !suffix.starts_with('.') || suffix.len() < 2 {
                    c.at(
                        h,
                        format!("{key}.hosts[{j}]"),
                        format!("`{}` is not a host pattern", h.get_ref()),
                        Some("write an exact host, `*.example.com`, or `*`".into()),
                    );
                }
                hosts.push(HostPattern::Suffix(suffix.to_string()));
            } else if s.contains('*') || s.contains('/') || s.is_empty() {
                c.at(
                    h,
                    format!("{key}.hosts[{j}]"),
                    format!("`{}` is not a host pattern", h.get_ref()),
                    Some("write an exact host, `*.example.com`, or `*`".into()),
                );
            } else {
                hosts.push(HostPattern::Exact(s));
            }
        }
        if hosts.is_empty() {
            hosts.push(HostPattern::Any);
        }
        let path_count = [r.path_exact.is_some(), r.path_prefix.is_some(), r.path_regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if path_count > 1 {
            c.at(
                &r.name,
                format!("{key}.path_*"),
                "more than one of path_exact, path_prefix, path_regex is set".into(),
                Some("keep one; split the route in two if both are needed".into()),
            );
        }
        let path = if let Some(p) = &r.path_exact {
            check_path(&mut c, p, format!("{key}.path_exact"));
            PathMatch::Exact(p.get_ref().clone())
        } else if let Some(p) = &r.path_prefix {
            check_path(&mut c, p, format!("{key}.path_prefix"));
            PathMatch::Prefix(p.get_ref().clone())
        } else if let Some(p) = &r.path_regex {
            c.regex(p, format!("{key}.path_regex"))
                .map_or(PathMatch::Any, PathMatch::Regex)
        } else {
            PathMatch::Any
        };
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            match http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(mm) => methods.push(mm),
                Err(_) => c.at(
                    m,
                    format!("{key}.methods[{j}]"),
                    format!("`{}` is not an HTTP method", m.get_ref()),
                    Some("e.g. \"GET\", \"POST\"".into()),
                ),
            }
        }
        let mut headers = Vec::new();
        for (j, h) in r.headers.iter().enumerate() {
            let hkey = format!("{key}.headers[{j}]");
            let name = c.header_name(&h.name, format!("{hkey}.name"));
            let set = [h.exact.is_some(), h.regex.is_some(), h.present.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            let cond = if set != 1 {
                c.at(
                    &h.name,
                    hkey.clone(),
                    format!(
                        "header match on `{}` needs exactly one of exact, regex, present",
                        h.name.get_ref()
                    ),
                    Some("e.g. { name = \"x-canary\", exact = \"1\" }".into()),
                );
                None
            } else if let Some(v) = &h.exact {
                Some(HeaderCondition::Exact(v.clone()))
            } else if let Some(re) = &h.regex {
                c.regex(re, format!("{hkey}.regex")).map(HeaderCondition::Regex)
            } else if h.present == Some(true) {
                Some(HeaderCondition::Present)
            } else {
                Some(HeaderCondition::Absent)
            };
            if let (Some(n), Some(cond)) = (name, cond) {
                headers.push((n, cond));
            }
        }
        let mut destinations = Vec::new();
        let mut resolve =
            |c: &mut Checker, name: &SpannedStr, k: String, weight: u32| match cluster_names.get(name.get_ref()) {
                Some(&idx) => destinations.push((idx, weight)),
                None => {
                    let hint = match did_you_mean(name.get_ref(), cluster_names.keys().map(String::as_str)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "define it with [[cluster]] name = \"…\"".into(),
                    };
                    c.at(
                        name,
                        k,
                        format!("route points at cluster `{}`, which does not exist", name.get_ref()),
                        Some(hint),
                    );
                }
            };
        match (&r.cluster, r.clusters.is_empty()) {
            (Some(cl), true) => resolve(&mut c, cl, format!("{key}.cluster"), 1),
            (None, false) => {
                for (j, wc) in r.clusters.iter().enumerate() {
                    resolve(&mut c, &wc.name, format!("{key}.clusters[{j}].name"), wc.weight);
                }
                if r.clusters.iter().map(|w| u64::from(w.weight)).sum::<u64>() == 0 {
                    c.at(
                        &r.name,
                        format!("{key}.clusters"),
                        "all weights are 0".into(),
                        Some("give at least one cluster a positive weight".into()),
                    );
                }
            }
            (Some(_), false) => c.at(
                &r.name,
                format!("{key}.cluster"),
                "both `cluster` and `clusters` are set".into(),
                Some("use `cluster` for one destination or `clusters` for a weighted split".into()),
            ),
            (None, true) => c.at(
                &r.name,
                format!("{key}.cluster"),
                format!("route `{}` has no destination", r.name.get_ref()),
                Some("add cluster = \"NAME\" or clusters = [{ name = \"…\", weight = … }]".into()),
            ),
        }
        let timeout = c.dur(&r.timeout, format!("{key}.timeout"));
        if timeout.is_zero()
            && r.timeout
                .0
                .as_ref()
                .is_some_and(|t| humantime::parse_duration(t.get_ref()).is_ok())
        {
            c.at(
                &r.name,
                format!("{key}.timeout"),
                "a zero timeout fails every request".into(),
                Some("use e.g. \"15s\"".into()),
            );
        }
        let per_try_timeout = if r.per_try_timeout.0.is_some() {
            let t = c.dur(&r.per_try_timeout, format!("{key}.per_try_timeout"));
            if t > timeout && !timeout.is_zero() {
                c.at(
                    &r.name,
                    format!("{key}.per_try_timeout"),
                    format!("per_try_timeout {t:?} is longer than the route timeout {timeout:?}"),
                    Some("a try can never outlast the whole request; make per_try_timeout ≤ timeout".into()),
                );
            }
            t
        } else {
            timeout
        };
        for &(ci, _) in &destinations {
            let ct = clusters[ci].connect_timeout;
            if ct > per_try_timeout && !per_try_timeout.is_zero() {
                c.warn(
                    &r.name,
                    format!("{key}.per_try_timeout"),
                    format!("cluster `{}` connect_timeout {ct:?} is longer than this route's per-try timeout {per_try_timeout:?}", clusters[ci].name),
                    Some("timeouts should descend: connect < per-try < route total".into()),
                );
            }
        }
        let mut on = 0u8;
        for (j, name) in r.retry_on.iter().enumerate() {
            match RetryOn::NAMES.iter().find(|(n, _)| n == name.get_ref()) {
                Some((_, bit)) => on |= bit,
                None => {
                    let hint = match did_you_mean(name.get_ref(), RetryOn::NAMES.iter().map(|(n, _)| *n)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("one of: {}", RetryOn::NAMES.map(|(n, _)| n).join(", ")),
                    };
                    c.at(
                        name,
                        format!("{key}.retry_on[{j}]"),
                        format!("unknown retry condition `{}`", name.get_ref()),
                        Some(hint),
                    );
                }
            }
        }
        if on & RetryOn::RETRIABLE_STATUS != 0 && r.retriable_statuses.is_empty() {
            c.at(
                &r.name,
                format!("{key}.retriable_statuses"),
                "retry_on has retriable-status but no statuses are listed".into(),
                Some("add retriable_statuses = [503]".into()),
            );
        }
        let retry = (on != 0).then(|| RetryPolicy {
            on: RetryOn(on),
            statuses: r.retriable_statuses.clone(),
            max_retries: r.max_retries,
            backoff: c.dur(&r.retry_backoff, format!("{key}.retry_backoff")),
            backoff_max: c.dur(&r.retry_backoff_max, format!("{key}.retry_backoff_max")),
            non_idempotent: r.retry_non_idempotent,
            buffer_bytes: r.retry_buffer_bytes,
        });
        let mut route_filters = Vec::new();
        for (j, name) in r.filters.iter().enumerate() {
            match filter_names.get(name.get_ref()) {
                Some(&usize::MAX) => {}
                Some(&idx) => route_filters.push(idx),
                None => {
                    let hint = match did_you_mean(name.get_ref(), filter_names.keys().map(String::as_str)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "define it with [[filter]] name = \"…\" path = \"….wasm\"".into(),
                    };
                    c.at(
                        name,
                        format!("{key}.filters[{j}]"),
                        format!("unknown filter `{}`", name.get_ref()),
                        Some(hint),
                    );
                }
            }
        }
        let request_headers = c.rules(&r.request_headers, &format!("{key}.request_headers"));
        let response_headers = c.rules(&r.response_headers, &format!("{key}.response_headers"));
        let metadata = match &r.metadata {
            None => None,
            Some(toml::Value::Table(t)) if t.values().all(toml::Value::is_table) => {
                serde_json::to_value(t).ok().map(std::sync::Arc::new)
            }
            Some(_) => {
                c.at(
                    &r.name,
                    format!("{key}.metadata"),
                    "metadata is a table of namespaces, each a table of settings".into(),
                    Some("e.g. metadata = { \"my.filter\" = { mode = \"strict\", limit = 10 } }; filters read metadata.filter_metadata.my.filter.mode".into()),
                );
                None
            }
        };
        routes.push(RouteConfig {
            name: r.name.get_ref().clone(),
            listeners: r.listeners.iter().map(|l| l.get_ref().clone()).collect(),
            hosts,
            path,
            methods,
            headers,
            destinations,
            timeout,
            per_try_timeout,
            upgrade_idle_timeout: c.dur(&r.upgrade_idle_timeout, format!("{key}.upgrade_idle_timeout")),
            rate_limit: r
                .rate_limit
                .as_ref()
                .and_then(|rl| c.rate_limit(rl, &format!("{key}.rate_limit"), &r.name, file.ha.is_some())),
            retry,
            request_headers,
            response_headers,
            filters: route_filters,
            metadata,
        });
    }

    let ha = file.ha.as_ref().and_then(|h| c.ha(h, base));
    let mut vips = Vec::new();
    for (i, v) in file.vips.iter().enumerate() {
        for (j, t) in v.track_clusters.iter().enumerate() {
            if !cluster_names.contains_key(t.get_ref()) {
                let hint = match did_you_mean(t.get_ref(), cluster_names.keys().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "name a [[cluster]]".into(),
                };
                c.at(
                    t,
                    format!("vip[{i}].track_clusters[{j}]"),
                    format!("unknown cluster `{}`", t.get_ref()),
                    Some(hint),
                );
            }
        }
        if let Some(cfg) = c.vip(v, &format!("vip[{i}]"), base) {
            if vips
                .iter()
                .any(|o: &tandem_ha::vip::router::VipConfig| o.vrid == cfg.vrid && o.interface == cfg.interface)
            {
                c.at(
                    &v.name,
                    format!("vip[{i}].vrid"),
                    format!("VRID {} is used twice on {}", cfg.vrid, cfg.interface),
                    Some("give each [[vip]] on an interface its own vrid".into()),
                );
            }
            vips.push(cfg);
        }
    }
    for (i, v) in file.vips.iter().enumerate() {
        let Some(g) = &v.sync_group else { continue };
        let members = file
            .vips
            .iter()
            .filter(|o| o.sync_group.as_ref().is_some_and(|h| h.get_ref() == g.get_ref()));
        if members.count() < 2 {
            c.at(
                g,
                format!("vip[{i}].sync_group"),
                format!("sync group `{}` has only this VIP", g.get_ref()),
                Some("a sync group moves two or more VIPs together: give the other [[vip]] the same sync_group, or remove the key".into()),
            );
        }
    }

    if !c.issues.is_empty() {
        c.issues.sort_by_key(|i| (i.line, i.col));
        return Err(c.issues);
    }
    let mut certificates = Vec::new();
    for l in &listeners {
        for (cert, _) in l.tls.iter().flat_map(|t| t.certificates.iter()) {
            if let Some(not_after) = crate::tls::not_after(cert) {
                certificates.push(CertificateExpiry {
                    used_by: format!("listener/{}", l.name),
                    path: cert.clone(),
                    not_after,
                });
            }
        }
    }
    if let Some(h) = &ha {
        if let Some(not_after) = crate::tls::not_after(&h.group.tls.cert) {
            certificates.push(CertificateExpiry {
                used_by: "ha".into(),
                path: h.group.tls.cert.clone(),
                not_after,
            });
        }
    }
    Ok(Config {
        source: source.to_string(),
        certificates,
        hash: fnv1a(text.as_bytes()),
        server,
        admin,
        log,
        listeners,
        routes,
        clusters,
        warnings: c.warnings,
        files: c.files,
        ha,
        filters,
        vips,
    })
}

fn log_format(c: &mut Checker, s: &SpannedStr, key: &str) -> LogFormat {
    match s.get_ref().as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            c.at(
                s,
                key.into(),
                format!("unknown format `{other}`"),
                Some("use \"text\" or \"json\"".into()),
            );
            LogFormat::Text
        }
    }
}

fn check_path(c: &mut Checker, p: &SpannedStr, key: String) {
    if !p.get_ref().starts_with('/') {
        c.at(
            p,
            key,
            format!("`{}` does not start with `/`", p.get_ref()),
            Some(format!("write \"/{}\"", p.get_ref())),
        );
    }
}

fn parse_hash_on(c: &mut Checker, s: &SpannedStr, key: String) -> Option<HashOn> {
    let v = s.get_ref();
    if v == "source_ip" {
        return Some(HashOn::SourceIp);
    }
    if let Some(h) = v.strip_prefix("header:") {
        if let Ok(name) = http::HeaderName::from_bytes(h.as_bytes()) {
            return Some(HashOn::Header(name));
        }
    }
    if let Some(ck) = v.strip_prefix("cookie:") {
        if !ck.is_empty() {
            return Some(HashOn::Cookie(ck.to_string()));
        }
    }
    c.at(
        s,
        key,
        format!("`{v}` is not a hash key"),
        Some("use \"header:NAME\", \"cookie:NAME\" or \"source_ip\"".into()),
    );
    None
}
