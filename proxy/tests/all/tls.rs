//! TLS termination: SNI certificate choice, ALPN, resumption, client certificates,
//! certificate reload, precise errors for bad material, and real clients (curl, openssl).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::*;
use crate::pki::{names_of, Pki};

fn https_body(b: &Backend, pki_files: &[(std::path::PathBuf, std::path::PathBuf)]) -> String {
    let certs: Vec<String> = pki_files
        .iter()
        .map(|(c, k)| format!("{{ cert = \"{}\", key = \"{}\" }}", c.display(), k.display()))
        .collect();
    let _ = certs;
    format!(
        "[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
        b.addr
    )
}

fn tls_listener(certs: &[(std::path::PathBuf, std::path::PathBuf)], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| format!("{{ cert = \"{}\", key = \"{}\" }}", c.display(), k.display()))
        .collect();
    format!("tls = {{ certificates = [{}] {extra} }}", list.join(", "))
}

async fn connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// One GET over an established TLS stream (h2 if negotiated); returns (status, body).
async fn get_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
) -> Result<(u16, String), hyper::Error> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        tx.send_request(
            http::Request::get(format!("https://{host}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        tx.send_request(
            http::Request::get(path)
                .header("host", host)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await?
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_alpn_negotiates_h2_and_sessions_resume() {
    bounded(30, async {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"], false);
        let b = pki.leaf("b", &["b.test", "*.wild.test"], false);
        let backend = Backend::start("web").await;
        let proxy = Proxy::start_with(&https_body(&backend, &[]), &tls_listener(&[a.clone(), b.clone()], ""));
        let client = pki.client(&["h2", "http/1.1"], None);
        for (sni, want) in [
            ("a.test", "a.test"),
            ("b.test", "b.test"),
            ("x.wild.test", "b.test"),
            ("other.test", "a.test"),
        ] {
            let s = connect(proxy.addr, client.clone(), sni).await;
            if sni == "other.test" {
                // The default certificate does not name other.test: the client refuses it.
                assert!(s.is_err());
                continue;
            }
            let s = s.unwrap();
            let names = names_of(&s.get_ref().1.peer_certificates().unwrap()[0]);
            assert!(names.contains(&want.to_string()), "{sni}: {names:?}");
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (status, body) = get_over(s, sni, "/headers").await.unwrap();
            assert_eq!(status, 200);
            assert!(body.contains("x-forwarded-proto: https"), "{body}");
            assert!(body.starts_with("GET /headers HTTP/1.1"), "{body}");
        }
        // HTTP/1.1 only client.
        let s = connect(proxy.addr, pki.client(&["http/1.1"], None), "a.test")
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(get_over(s, "a.test", "/").await.unwrap().0, 200);
        // Resumption: the same client config resumes its session.
        let cfg = pki.client(&["http/1.1"], None);
        let s = connect(proxy.addr, cfg.clone(), "a.test").await.unwrap();
        assert_eq!(get_over(s, "a.test", "/").await.unwrap().0, 200);
        let s = connect(proxy.addr, cfg.clone(), "a.test").await.unwrap();
        assert_eq!(s.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        // The server counts the handshake as it completes on its side.
        let t = std::time::Instant::now();
        while proxy.metric("tandem_listener_tls_resumed_total{listener=\"web\"}") < 1.0 {
            assert!(t.elapsed() < Duration::from_secs(2), "resumption not counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Each certificate's expiry is exported (the lab certificates run to 4096).
        let year_4000 = 64_060_588_800.0;
        for (cert, _) in [&a, &b] {
            let expiry = proxy.metric(&format!(
                "tandem_tls_certificate_expiry_timestamp_seconds{{used_by=\"listener/web\",path=\"{}\"}}",
                cert.display()
            ));
            assert!(expiry > year_4000, "{}: {expiry}", cert.display());
        }
    })
    .await;
}

/// A client session store that counts the TLS 1.3 tickets the server sends.
#[derive(Debug)]
struct CountingTickets {
    inner: Arc<dyn rustls::client::ClientSessionStore>,
    tickets: std::sync::atomic::AtomicUsize,
}

impl CountingTickets {
    fn take(&self) -> usize {
        self.tickets.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

impl rustls::client::ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: rustls_pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls_pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls_pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls_pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls_pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// A new session gets two tickets, a resumed one one (as OpenSSL servers send), for
/// rustls and OpenSSL clients alike; a ClientHello that arrives in pieces still
/// completes its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_gets_two_tickets_and_a_resumed_one_one() {
    bounded(30, async {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"], false);
        let backend = Backend::start("web").await;
        let proxy = Proxy::start_with(&https_body(&backend, &[]), &tls_listener(&[a], ""));
        let store = Arc::new(CountingTickets {
            inner: Arc::new(rustls::client::ClientSessionMemoryCache::new(8)),
            tickets: Default::default(),
        });
        let mut cfg = (*pki.client(&["http/1.1"], None)).clone();
        cfg.resumption = rustls::client::Resumption::store(store.clone());
        let cfg = Arc::new(cfg);
        for (round, kind, tickets) in [
            (0, rustls::HandshakeKind::Full, 2),
            (1, rustls::HandshakeKind::Resumed, 1),
            (2, rustls::HandshakeKind::Resumed, 1),
        ] {
            let s = connect(proxy.addr, cfg.clone(), "a.test").await.unwrap();
            assert_eq!(s.get_ref().1.handshake_kind(), Some(kind), "round {round}");
            // The tickets come before the response.
            assert_eq!(get_over(s, "a.test", "/").await.unwrap().0, 200);
            assert_eq!(store.take(), tickets, "round {round}: {kind:?}");
        }

        // OpenSSL: a session saved, then offered.
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("session.pem");
        let (addr, ca) = (proxy.addr.to_string(), pki.ca_pem.clone());
        let s_client = move |resume: bool| {
            use std::io::Write;
            let mut c = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr, "-servername", "a.test"])
                .args(["-ign_eof", "-CAfile"])
                .arg(&ca)
                .arg(if resume { "-sess_in" } else { "-sess_out" })
                .arg(&session)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = c.stdin.take().unwrap();
            stdin
                .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
                .unwrap();
            drop(stdin);
            let out = c.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let text = tokio::task::spawn_blocking(move || {
            let new = s_client(false);
            let resumed = s_client(true);
            (new, resumed)
        })
        .await
        .unwrap();
        for (text, reused, tickets) in [(&text.0, false, 2), (&text.1, true, 1)] {
            assert!(text.contains("HTTP/1.1 200"), "{text}");
            assert_eq!(text.contains("Reused, TLSv1.3"), reused, "{text}");
            let got = text.matches("Post-Handshake New Session Ticket arrived").count();
            assert_eq!(got, tickets, "{text}");
        }

        // A ClientHello in three pieces, 50 ms apart: the first read holds only part.
        let handshakes = "tandem_listener_tls_handshakes_total{listener=\"web\"}";
        let before = proxy.metric(handshakes);
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut hello = Vec::new();
        let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
        let mut c = rustls::ClientConnection::new(pki.client(&["http/1.1"], None), name).unwrap();
        c.write_tls(&mut hello).unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for part in [&hello[..3], &hello[3..60], &hello[60..]] {
            wr.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut buf = vec![0u8; 16 * 1024];
        while c.is_handshaking() {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            c.read_tls(&mut &buf[..n]).unwrap();
            c.process_new_packets().unwrap();
            let mut out = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut out).unwrap();
            }
            wr.write_all(&out).await.unwrap();
        }
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let t = std::time::Instant::now();
        while proxy.metric(handshakes) < before + 1.0 {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "the split handshake did not complete"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// An idle TLS keep-alive connection gives hyper's buffers back too, but its session
/// stays in memory: it waits in a task of its own, not in the worker's lot, and serves
/// its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_releases_its_buffers_and_keeps_serving() {
    bounded(30, async {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"], false);
        let backend = Backend::start("web").await;
        let proxy = Proxy::start_with(&https_body(&backend, &[]), &tls_listener(&[a], ""));
        let s = connect(proxy.addr, pki.client(&["http/1.1"], None), "a.test")
            .await
            .unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        for round in 0..2 {
            let req = http::Request::get("/")
                .header("host", "a.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = tx.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            resp.into_body().collect().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1300)).await;
            let released = proxy.metric("tandem_listener_idle_releases_total{listener=\"web\"}");
            assert_eq!(released, f64::from(round + 1));
            assert_eq!(
                proxy.metric("tandem_listener_connections_parked{listener=\"web\"}"),
                0.0
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_their_subject_reaches_the_backend() {
    bounded(30, async {
        let pki = Pki::new();
        let server = pki.leaf("server", &["api.test"], false);
        let client_cert = pki.leaf("client", &["client-1"], true);
        let backend = Backend::start("api").await;
        let extra = format!(", client_ca = \"{}\", client_auth = \"required\"", pki.ca_pem.display());
        let proxy = Proxy::start_with(&https_body(&backend, &[]), &tls_listener(&[server], &extra));
        // Without a certificate: refused.
        let refused = async {
            let s = connect(proxy.addr, pki.client(&["http/1.1"], None), "api.test").await?;
            get_over(s, "api.test", "/").await.map_err(std::io::Error::other)
        }
        .await;
        assert!(refused.is_err(), "{refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(proxy.metric("tandem_listener_tls_handshake_failures_total{listener=\"web\"}") >= 1.0);
        // With one: served, and the verified subject is passed on (a forged one is not).
        let s = connect(proxy.addr, pki.client(&["http/1.1"], Some(&client_cert)), "api.test")
            .await
            .unwrap();
        let (status, body) = get_over(s, "api.test", "/headers").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("x-client-cert-subject: CN=client-1"), "{body}");
        assert_eq!(backend.hits(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_certificates_are_served_to_new_handshakes() {
    bounded(30, async {
        let pki = Pki::new();
        let first = pki.leaf("site", &["site.test"], false);
        let backend = Backend::start("web").await;
        let proxy = Proxy::start_with(
            &https_body(&backend, &[]),
            &tls_listener(std::slice::from_ref(&first), ""),
        );
        let cfg = pki.client(&["http/1.1"], None);
        let der = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
            s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        };
        let before = der(&connect(proxy.addr, cfg.clone(), "site.test").await.unwrap());
        // Issue a new certificate into the same files, then SIGHUP.
        pki.leaf("site", &["site.test", "www.site.test"], false);
        proxy.rewrite(&https_body(&backend, &[]));
        proxy.reload_by_signal().await;
        let s = connect(proxy.addr, pki.client(&["http/1.1"], None), "site.test")
            .await
            .unwrap();
        assert_ne!(der(&s), before);
        assert!(names_of(&s.get_ref().1.peer_certificates().unwrap()[0]).contains(&"www.site.test".to_string()));
        assert_eq!(get_over(s, "site.test", "/").await.unwrap().0, 200);
    })
    .await;
}

#[test]
fn bad_tls_material_is_reported_precisely() {
    let pki = Pki::new();
    let good = pki.leaf("good", &["good.test"], false);
    let other = pki.leaf("other", &["other.test"], false);
    let expired = pki.leaf_with("old", &["old.test"], false, |p| {
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    });
    let cases = [
        ((pki.dir.path().join("missing.pem"), good.1.clone()), "cannot read"),
        ((good.0.clone(), other.1.clone()), "does not match the certificate"),
        ((expired.0.clone(), expired.1.clone()), "expired on 2020-01-01"),
        ((good.1.clone(), good.1.clone()), "contains no certificate"),
    ];
    for ((cert, key), want) in cases {
        let text = format!(
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\n[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"127.0.0.1:2\" }}]\n[[route]]\nname = \"r\"\ncluster = \"c\"\n",
            cert.display(),
            key.display()
        );
        let f = pki.dir.path().join("t.toml");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["check", "-c"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(":4:") && err.contains("listener[0].tls.certificates[0]") && err.contains(want),
            "want {want}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_talk_to_it() {
    bounded(30, async {
        let pki = Pki::new();
        let a = pki.leaf("a", &["a.test"], false);
        let b = pki.leaf("b", &["b.test"], false);
        let backend = Backend::start("web").await;
        let proxy = Proxy::start_with(&https_body(&backend, &[]), &tls_listener(&[a, b], ""));
        let port = proxy.addr.port();
        let out = std::process::Command::new("curl")
            .args(["-s", "--http2", "-w", " %{http_version}", "--cacert"])
            .arg(&pki.ca_pem)
            .args([
                "--resolve",
                &format!("b.test:{port}:127.0.0.1"),
                &format!("https://b.test:{port}/"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            "web\n 2",
            "{text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `openssl s_client` naming `server_name`, with `extra` arguments.
        let s_client = |server_name: &str, extra: &[&str]| {
            std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-servername",
                    server_name,
                ])
                .args(extra)
                .arg("-CAfile")
                .arg(&pki.ca_pem)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        };
        let out = s_client("b.test", &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("subject=CN = b.test"), "{text}");
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
        // OpenSSL offers AES-256 first; the server's preference wins.
        assert!(text.contains("Cipher is TLS_AES_128_GCM_SHA256"), "{text}");
        // Each key-exchange group on its own (X25519 is aws-lc's, the NIST curves
        // ring's), and a group Tandem does not offer is refused.
        for (group, want) in [
            ("X25519", Some("Server Temp Key: X25519")),
            ("P-256", Some("Server Temp Key: ECDH, prime256v1")),
            ("P-384", Some("Server Temp Key: ECDH, secp384r1")),
            ("ffdhe2048", None),
        ] {
            let out = s_client("a.test", &["-groups", group]);
            let text = String::from_utf8_lossy(&out.stdout);
            match want {
                Some(want) => {
                    assert!(text.contains(want), "{group}: {text}");
                    assert!(text.contains("Verify return code: 0 (ok)"), "{group}: {text}");
                }
                None => assert!(
                    !out.status.success() && !text.contains("Server Temp Key"),
                    "{group}: {text}"
                ),
            }
        }
    })
    .await;
}
