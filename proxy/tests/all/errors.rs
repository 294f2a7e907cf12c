//! Upstream failures become 502/504 with a short body saying which, a header, a
//! metric and an access-log reason; the proxy keeps serving.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_timeout_and_reset_are_told_apart() {
    bounded(30, async {
        let good = Backend::start("good").await;
        let dead = format!("127.0.0.1:{}", free_port());
        // A backend that reads the request and closes without answering.
        let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rude_addr = rude.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = rude.accept().await else { continue };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                drop(s);
            }
        });
        let body = format!(
            "[[cluster]]\nname = \"good\"\nendpoints = [{{ address = \"{}\" }}]\n\n\
[[cluster]]\nname = \"dead\"\nendpoints = [{{ address = \"{dead}\" }}]\n\n\
[[cluster]]\nname = \"rude\"\nendpoints = [{{ address = \"{rude_addr}\" }}]\n\n\
[[route]]\nname = \"dead\"\npath_prefix = \"/dead\"\ncluster = \"dead\"\n\n\
[[route]]\nname = \"rude\"\npath_prefix = \"/rude\"\ncluster = \"rude\"\n\n\
[[route]]\nname = \"slow\"\npath_prefix = \"/slow\"\ncluster = \"good\"\ntimeout = \"200ms\"\n\n\
[[route]]\nname = \"good\"\ncluster = \"good\"\n",
            good.addr
        );
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;

        let r = c.get("x", "/dead", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (502, "upstream connect error\n"));
        assert_eq!(r.headers["x-tandem-error"], "connect-failure");

        let started = std::time::Instant::now();
        let r = c.get("x", "/slow?delay_ms=2000", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (504, "upstream request timeout\n"));
        assert_eq!(r.headers["x-tandem-error"], "timeout");
        assert!(started.elapsed() < Duration::from_millis(1500));

        let r = c.get("x", "/rude", &[]).await.unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.headers["x-tandem-error"], "upstream-reset");

        // The same client connection still works.
        let r = c.get("x", "/", &[]).await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "good\n"));

        let dead_fail = format!("tandem_endpoint_connect_failures_total{{cluster=\"dead\",endpoint=\"{dead}\"}}");
        assert_eq!(proxy.metric(&dead_fail), 1.0);
        assert_eq!(
            proxy.metric("tandem_route_responses_total{route=\"slow\",code=\"5xx\"}"),
            1.0
        );

        // Access log reasons (written asynchronously).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = proxy.access_log();
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4, "{log}");
        let reasons: Vec<&str> = lines.iter().map(|l| l["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, ["connect-failure", "timeout", "upstream-reset", "ok"]);
        // The error underneath: the refused connect and the closed connection say
        // what happened; a timeout has nothing underneath; a success has no error.
        let errors: Vec<&str> = lines.iter().map(|l| l["error"].as_str().unwrap_or("")).collect();
        assert!(errors[0].to_lowercase().contains("refused"), "{log}");
        assert_eq!(errors[1], "", "{log}");
        assert!(
            errors[2].contains("closed") || errors[2].contains("reset") || errors[2].contains("eof"),
            "{log}"
        );
        assert!(lines[3]["error"].is_null(), "{log}");
        let ok = &lines[3];
        assert_eq!(ok["status"], 200);
        assert_eq!(ok["route"], "good");
        assert_eq!(ok["cluster"], "good");
        assert_eq!(ok["endpoint"], good.addr.to_string());
        assert_eq!(ok["attempts"], 1);
        assert_eq!(ok["bytes"], 5);
        assert_eq!(ok["method"], "GET");
        assert_eq!(ok["path"], "/");
        assert_eq!(ok["request_id"].as_str().unwrap().len(), 36);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced_transparently() {
    bounded(30, async {
        // A backend that closes every connection after one response (without saying so).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            loop {
                let Ok((mut s, _)) = l.accept().await else { continue };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    drop(s);
                });
            }
        });
        let body = format!("[[cluster]]\nname = \"c\"\nendpoints = [{{ address = \"{addr}\" }}]\n\n[[route]]\nname = \"r\"\ncluster = \"c\"\n");
        let proxy = Proxy::start(&body);
        let mut c = Client::h1(proxy.addr).await;
        for _ in 0..20 {
            let r = c.get("x", "/", &[]).await.unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
