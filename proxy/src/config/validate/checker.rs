//! The checker every section is validated with: the problems found (all reported at
//! once, each with file, line, key and the fix), warnings, the files the configuration
//! names, and the checks the sections share (addresses, durations, names defined once
//! and references that resolve).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use regex::Regex;

use crate::config::error::did_you_mean;
use crate::config::model::{self, SpannedStr};
use crate::config::*;

use crate::config::error::{ConfigIssue, LineIndex};

/// Collects the problems and warnings of one configuration file.
pub(super) struct Checker<'a> {
    pub(super) lines: &'a LineIndex,
    pub(super) issues: Vec<ConfigIssue>,
    pub(super) warnings: Vec<ConfigIssue>,
    /// The file can be read by every local user: a secret in it is warned about.
    pub(super) readable_by_others: Option<&'a str>,
    /// Files the configuration names (see [`Config::files`]).
    pub(super) files: Vec<crate::config::access::FileUse>,
}

impl Checker<'_> {
    /// Warns when the secret at `span` sits in a file every local user can read.
    pub(super) fn secret(&mut self, span: &SpannedStr, key: String) {
        if let Some(file) = self.readable_by_others {
            self.warn(
                span,
                key,
                format!("this secret is in {file}, which every local user can read"),
                Some(format!("chmod 640 {file} (owner root, group of the service user)")),
            );
        }
    }

    pub(super) fn warn(&mut self, span: &SpannedStr, key: String, message: String, hint: Option<String>) {
        let (line, col) = self.lines.locate(span.span().start);
        self.warnings.push(ConfigIssue {
            line,
            col,
            key,
            message,
            hint,
        });
    }

    /// Where `span` is in the file, under `key` (see [`Anchor`]).
    pub(super) fn anchor(&self, span: &SpannedStr, key: String) -> Anchor {
        let (line, col) = self.lines.locate(span.span().start);
        Anchor { line, col, key }
    }

    pub(super) fn path(&self, base: &std::path::Path, s: &SpannedStr) -> std::path::PathBuf {
        let p = std::path::Path::new(s.get_ref());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    }

    /// The path at `s`, remembered as a file the process will use as `access`.
    pub(super) fn file(
        &mut self,
        base: &std::path::Path,
        s: &SpannedStr,
        key: String,
        access: crate::config::access::Access,
    ) -> std::path::PathBuf {
        let path = self.path(base, s);
        let (line, col) = self.lines.locate(s.span().start);
        self.files.push(crate::config::access::FileUse {
            path: path.clone(),
            access,
            key,
            line,
            col,
        });
        path
    }

    pub(super) fn at(&mut self, span: &SpannedStr, key: String, message: String, hint: Option<String>) {
        let (line, col) = self.lines.locate(span.span().start);
        self.issues.push(ConfigIssue {
            line,
            col,
            key,
            message,
            hint,
        });
    }

    pub(super) fn addr(&mut self, s: &SpannedStr, key: String) -> Option<SocketAddr> {
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

    /// An address with an optional prefix length (`"10.0.0.100/24"`; none: the whole
    /// length of its family), or the problem reported.
    pub(super) fn ip_prefix(&mut self, a: &SpannedStr, key: String) -> Option<(std::net::IpAddr, u8)> {
        let (ip, prefix) = match a.get_ref().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (a.get_ref().as_str(), None),
        };
        let parsed = ip.parse::<std::net::IpAddr>().ok().and_then(|ip| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let p = prefix.map_or(Some(max), |p| p.parse::<u8>().ok())?;
            (p <= max).then_some((ip, p))
        });
        if parsed.is_none() {
            self.at(
                a,
                key,
                format!("`{}` is not an IP address with an optional prefix", a.get_ref()),
                Some("e.g. \"10.0.0.100/24\" or \"fd00::100/64\"".into()),
            );
        }
        parsed
    }

    /// Parses a duration written in the file; a default passes through.
    pub(super) fn dur(&mut self, d: &model::Dur, key: String) -> Duration {
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

    pub(super) fn regex(&mut self, s: &SpannedStr, key: String) -> Option<Regex> {
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

    pub(super) fn header_name(&mut self, s: &SpannedStr, key: String) -> Option<http::HeaderName> {
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

    pub(super) fn rules(&mut self, r: &model::HeaderRulesSection, key: &str) -> HeaderRules {
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

    /// Notes `name` as the `i`th of its kind; a name defined before is reported as
    /// `what` name `…` used twice, with `fix`. Whether it was new.
    pub(super) fn define(
        &mut self,
        names: &mut HashMap<String, usize>,
        name: &SpannedStr,
        i: usize,
        key: String,
        what: &str,
        fix: &str,
    ) -> bool {
        if names.contains_key(name.get_ref()) {
            self.at(
                name,
                key,
                format!("{what} name `{}` is used twice", name.get_ref()),
                Some(fix.into()),
            );
            return false;
        }
        names.insert(name.get_ref().clone(), i);
        true
    }

    /// Resolves a reference to a name defined elsewhere: its index, or the problem
    /// `message` reported with the closest defined name as the hint (else `otherwise`).
    pub(super) fn resolve(
        &mut self,
        names: &HashMap<String, usize>,
        name: &SpannedStr,
        key: String,
        message: String,
        otherwise: &str,
    ) -> Option<usize> {
        if let Some(&i) = names.get(name.get_ref()) {
            return Some(i);
        }
        let hint = match did_you_mean(name.get_ref(), names.keys().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => otherwise.to_string(),
        };
        self.at(name, key, message, Some(hint));
        None
    }
}

pub(super) fn log_format(c: &mut Checker, s: &SpannedStr, key: &str) -> LogFormat {
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

pub(super) fn check_path(c: &mut Checker, p: &SpannedStr, key: String) {
    if !p.get_ref().starts_with('/') {
        c.at(
            p,
            key,
            format!("`{}` does not start with `/`", p.get_ref()),
            Some(format!("write \"/{}\"", p.get_ref())),
        );
    }
}

pub(super) fn parse_hash_on(c: &mut Checker, s: &SpannedStr, key: String) -> Option<HashOn> {
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
