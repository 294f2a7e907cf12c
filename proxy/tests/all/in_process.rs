//! Two nodes in one process: a server runs from a configuration value, keeps its state
//! (counters, the filters' shared data and metrics, its phase) to itself, and stops by
//! its command channel.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_proxy::server::{Command, Server};
use tandem_proxy::shared::ConfigSource;

use crate::common::{bounded, free_port, Backend, Client};
use crate::wasm::{cluster, filter, modules};

/// The value of the metric line starting with `line_start` at `admin`, if present.
fn metric(admin: SocketAddr, line_start: &str) -> Option<f64> {
    let (_, text) = tandem_proxy::control::ctl::call(admin, None, "GET", "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_keep_their_state_apart() {
    tokio::task::spawn_blocking(modules).await.unwrap();
    bounded(60, async {
        let b = Backend::start("backend").await;
        let mut nodes = Vec::new();
        for name in ["a", "b"] {
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let text = format!(
                "[server]\nworkers = 1\ndrain_timeout = \"1s\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
                 [log]\nlevel = \"warn\"\naccess_log = \"off\"\n\n\
                 [[listener]]\nname = \"web\"\nlisten = \"{listen}\"\n\n{}{}\
                 [[route]]\nname = \"r\"\ncluster = \"backend\"\nfilters = [\"abi\"]\n",
                filter("abi", "abi_probe", ""),
                cluster("backend", &[b.addr], ""),
            );
            let source = ConfigSource::Embedded("in-process", text);
            let server = tokio::task::spawn_blocking(move || {
                let loaded = source.load().expect("the configuration loads");
                Server::start(loaded, source).expect("the server starts")
            })
            .await
            .unwrap();
            assert_eq!(server.admin, admin);
            let (commands, rx) = tokio::sync::mpsc::unbounded_channel();
            let node = server.node.clone();
            let serving = std::thread::spawn(move || server.serve(rx));
            nodes.push((
                name,
                listen,
                Handle {
                    admin,
                    node,
                    commands,
                    serving,
                },
            ));
        }
        let (a, b_node) = (&nodes[0], &nodes[1]);

        // Traffic through the first node only.
        let mut c = Client::h1(a.1).await;
        for i in 0..5 {
            let r = c.get("in.process", &format!("/plain?i={i}"), &[]).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        let requests = "tandem_route_responses_total{route=\"r\",code=\"2xx\"}";
        let logged = "tandem_wasm_metric{filter=\"abi\",name=\"logged\",type=\"counter\"}";
        let (a_admin, b_admin) = (a.2.admin, b_node.2.admin);
        let (a_req, b_req, a_logged, b_logged) = tokio::task::spawn_blocking(move || {
            (
                metric(a_admin, requests),
                metric(b_admin, requests),
                metric(a_admin, logged),
                metric(b_admin, logged),
            )
        })
        .await
        .unwrap();
        assert_eq!(a_req, Some(5.0), "the first node counts its requests");
        assert_eq!(b_req.unwrap_or(0.0), 0.0, "the second node saw none");
        assert!(a_logged.is_some_and(|n| n >= 5.0), "{a_logged:?}");
        assert!(
            b_logged.is_none_or(|n| n == 0.0),
            "a filter's metrics are its node's: {b_logged:?}"
        );

        // One node drains; the other keeps serving.
        // One node is told to stop; the other keeps serving.
        let [(_, _, a), (_, b_listen, b)]: [_; 2] = nodes.try_into().map_err(|_| ()).unwrap();
        a.commands.send(Command::Stop).unwrap();
        let a_node = a.node.clone();
        tokio::task::spawn_blocking(move || a.serving.join().unwrap().expect("the first node stops cleanly"))
            .await
            .unwrap();
        assert_eq!(a_node.shared.phase(), "draining");
        let mut c = Client::h1(b_listen).await;
        let r = c.get("in.process", "/plain", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(b.node.shared.phase(), "serving");
        // Dropping the sender stops the other.
        let Handle { serving, commands, .. } = b;
        drop(commands);
        tokio::task::spawn_blocking(move || serving.join().unwrap().expect("the second node stops cleanly"))
            .await
            .unwrap();
        assert_eq!(b.node.shared.phase(), "draining");
    })
    .await;
}

/// A node serving on its own thread, and the sender of its commands.
struct Handle {
    admin: SocketAddr,
    node: tandem_proxy::control::Node,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    serving: std::thread::JoinHandle<Result<(), tandem_proxy::server::RunError>>,
}
