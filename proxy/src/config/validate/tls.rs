//! TLS sections: a listener's certificates and client authentication, a cluster's upstream TLS.

use super::checker::*;
use crate::config::model::{self, SpannedStr};
use crate::config::*;

impl Checker<'_> {
    pub(super) fn listener_tls(
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
                            crate::config::access::Access::Read,
                        ),
                        self.file(
                            base,
                            &c.key,
                            format!("{key}.certificates[{i}].key"),
                            crate::config::access::Access::Read,
                        ),
                    )
                })
                .collect(),
            alpn: t.alpn.clone(),
            tls13_only,
            client_ca: t
                .client_ca
                .as_ref()
                .map(|p| self.file(base, p, format!("{key}.client_ca"), crate::config::access::Access::Read)),
            client_auth,
            session_tickets: t.session_tickets,
        }
    }

    /// Where a listener's TLS section and its certificates are written (`key` is the
    /// listener's, e.g. `listener[0]`).
    pub(super) fn tls_anchors(
        &self,
        section: Option<&model::ListenerTlsSection>,
        anchor: &SpannedStr,
        key: &str,
    ) -> TlsAnchors {
        TlsAnchors {
            section: self.anchor(anchor, format!("{key}.tls")),
            certificates: section
                .iter()
                .flat_map(|s| s.certificates.iter().enumerate())
                .map(|(i, c)| self.anchor(&c.cert, format!("{key}.tls.certificates[{i}]")))
                .collect(),
        }
    }

    pub(super) fn upstream_tls(
        &mut self,
        t: &model::UpstreamTlsSection,
        base: &std::path::Path,
        key: &str,
        anchor: &SpannedStr,
        protocol: UpstreamProtocol,
    ) -> Option<(crate::tls::UpstreamTls, Anchor)> {
        let client_cert = match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => Some((
                self.file(
                    base,
                    c,
                    format!("{key}.client_cert"),
                    crate::config::access::Access::Read,
                ),
                self.file(
                    base,
                    k,
                    format!("{key}.client_key"),
                    crate::config::access::Access::Read,
                ),
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
                .map(|p| self.file(base, p, format!("{key}.ca"), crate::config::access::Access::Read)),
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
        let span = t.ca.clone().or(t.client_cert.clone()).unwrap_or_else(|| anchor.clone());
        Some((settings, self.anchor(&span, key.to_string())))
    }
}
