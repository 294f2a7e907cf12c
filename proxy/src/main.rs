//! The `tandem` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tandem_proxy::config::{self, Config};
use tandem_proxy::control::ctl;
use tandem_proxy::server::Server;
use tandem_proxy::shared::{ConfigSource, Loaded};
use tandem_proxy::{demo, server};

/// mimalloc (see `tandem_proxy::allocator`); the `system-alloc` feature leaves the
/// system allocator in place for heap profilers.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: tandem_proxy::allocator::Allocator = tandem_proxy::allocator::Allocator;

/// Tandem: an L4/L7 load-balancing proxy for redundant on-prem pairs.
#[derive(Parser, Debug)]
#[command(name = "tandem", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file, check that the service user may open every file
    /// it names, and print what it compiles to.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Check file permissions as this user (default: the user running check; the
        /// packaged unit runs it as `tandem`).
        #[arg(long)]
        user: Option<String>,
    },
    /// Run a local demo: three demo backends and the proxy on 127.0.0.1:8080; as root,
    /// also a VIP pair (two nodes and a witness) in network namespaces.
    Demo {
        /// Skip the VIP pair (network namespaces) even when the machine allows it.
        #[arg(long)]
        single: bool,
    },
    /// Remove every `[[vip]]` address of a configuration from its interface. Run by the
    /// systemd unit after the proxy stopped, however it stopped (a crash included), so a
    /// dead node never keeps answering for a VIP.
    ReleaseVips {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Internal: started by `tandem run` with its VIPs; removes them from their interfaces
    /// as soon as its standard input closes (the proxy ended, however it ended).
    #[command(hide = true)]
    GuardVips {
        /// INTERFACE=ADDRESS/PREFIX of each VIP.
        vips: Vec<String>,
    },
    /// Internal: started by `tandem run` with anycast groups; withdraws every route
    /// (empty fragment, BIRD reloaded) as soon as its standard input closes.
    #[command(hide = true)]
    GuardAnycast {
        /// The fragment file.
        fragment: String,
        /// BIRD's control socket.
        socket: String,
        /// The birdc program.
        birdc: String,
        /// The static protocol's name.
        protocol: String,
    },
    /// Run a Raft-only member of the pair (no proxy), so a pair keeps quorum when one
    /// node dies. Reads the `[ha]` section of the configuration file.
    Witness {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run demo backends (for demos, tests and benchmarks).
    Backend {
        /// NAME=ADDR pairs, e.g. alpha=127.0.0.1:9101.
        #[arg(required = true)]
        backends: Vec<String>,
        /// Threads serving the backends.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `tandem man | man -l -`.
    Man,
    /// Talk to a running tandem through its admin API. Answers are tables and
    /// `key: value` lines; `--json` prints the API's JSON.
    Ctl {
        /// Admin API address (default: from --config, else 127.0.0.1:9900).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Read the admin address and token from this configuration file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Admin token (default: from --config or $TANDEM_ADMIN_TOKEN).
        #[arg(long)]
        token: Option<String>,
        /// Print the admin API's JSON as it answers (one line, for scripts and jq)
        /// instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: CtlCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Show status: phase, listeners, routes, endpoints, VIPs, the pair.
    Status,
    /// Print Prometheus metrics.
    Metrics,
    /// Reload the configuration file.
    Reload,
    /// Stop accepting, finish in-flight requests, exit.
    Drain,
    /// Exit 0 when the process is ready.
    Ready,
    /// Exit 0 when the process is alive.
    Live,
    /// Show the pair's Raft group: members, leader, term, replication lag.
    Cluster {
        #[command(subcommand)]
        what: Option<ClusterCommand>,
    },
    /// Drain an endpoint (no new requests; in-flight ones finish) or return it.
    Endpoint {
        #[command(subcommand)]
        action: EndpointAction,
    },
    /// Maintenance: `on` releases this node's VIPs with priority 0 (the peer takes
    /// over at once) and keeps them released; `off` rejoins the election.
    Maintenance {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// With `on`: wait until the VIPs are released, the anycast routes withdrawn
        /// and no client connection is left, then say so (exit 1 if that takes longer
        /// than `--timeout`).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Write a lab CA and one certificate per member (DNS name `tandem-peer`) for `[ha] tls`.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "ha-certs")]
        out: PathBuf,
        /// Member names (one certificate each).
        #[arg(long, value_delimiter = ',', default_value = "node1,node2,witness")]
        members: Vec<String>,
        /// The members' node ids, in the same order: each certificate then also names
        /// `node<ID>.tandem-peer`, for `[ha] tls.verify_node_id = true`.
        #[arg(long, value_delimiter = ',')]
        ids: Vec<u64>,
        /// Give the members' certificates and keys to this user (and its group), e.g.
        /// `--owner tandem` when run as root for the packaged service.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Add a member (started with this group's peers in its [ha] section): it joins as a
    /// learner, catches up, then votes.
    Add {
        /// Its node id (never used before in this group).
        id: u64,
        /// Its peer address, IP:port.
        address: String,
    },
    /// Remove a member from the group.
    Remove {
        /// Its node id.
        id: u64,
    },
    /// Replace a member (e.g. a wiped node back under a new id): add the new one, then
    /// remove the old one.
    Replace {
        /// The member leaving.
        old: u64,
        /// The new member's node id.
        id: u64,
        /// The new member's peer address, IP:port.
        address: String,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointAction {
    /// Take no new requests on CLUSTER ADDR; `status` shows when it emptied.
    Drain {
        /// Cluster name.
        cluster: String,
        /// Endpoint address (IP:port).
        address: String,
    },
    /// Return CLUSTER ADDR to rotation.
    Undrain {
        /// Cluster name.
        cluster: String,
        /// Endpoint address (IP:port).
        address: String,
    },
}

/// Raises the open-file soft limit to the hard one (as nginx's `worker_rlimit_nofile`):
/// every connection is a descriptor, and the default soft limit (often 1024) would cap
/// the proxy far below its `max_connections`.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    // Before the heap grows: pages already faulted in as huge would stay so.
    if let Err(e) = tandem_proxy::allocator::disable_transparent_huge_pages() {
        eprintln!("tandem: cannot turn transparent huge pages off for this process: {e}");
    }
    let cli = Cli::parse();
    raise_open_file_limit();
    match cli.cmd {
        Command::Run { config } => {
            let source = ConfigSource::File(config);
            let loaded = match source.load() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            run(loaded, source, None)
        }
        Command::Check { config, user } => check(&config, user.as_deref()),
        Command::Demo { single } => {
            let loaded = match ConfigSource::Embedded("<embedded demo>", demo::DEMO_CONFIG.to_string()).load() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let backends = demo::DEMO_BACKENDS
                .iter()
                .map(|(n, a)| (n.to_string(), a.parse().expect("demo address")))
                .collect();
            if let Err(e) = demo::spawn_backends(backends, 1) {
                eprintln!("cannot start demo backends on 127.0.0.1:9101-9103: {e}");
                return ExitCode::FAILURE;
            }
            let pair = if single {
                Err("skipped (--single)".to_string())
            } else {
                tandem_proxy::demo_pair::DemoPair::start().map_err(|e| e.to_string())
            };
            let pair_part = match &pair {
                Ok(p) => {
                    let b = p.banner();
                    std::thread::spawn(|| {
                        let vip = tandem_proxy::demo_pair::VIP;
                        if tandem_proxy::demo_pair::DemoPair::wait_ready(Duration::from_secs(15)) {
                            eprintln!("  VIP pair ready: {vip} answers from the client namespace.");
                        } else {
                            eprintln!("  VIP pair: {vip} did not answer within 15 s; see its logs.");
                        }
                    });
                    b
                }
                Err(e) => format!("  VIP pair: not started — {e}.\n  The single proxy above still runs; run the demo as root on Linux to see two nodes\n  and a witness hold a floating VIP."),
            };
            let banner = [
                "",
                "Tandem demo is up.",
                "  proxy:    curl -s http://127.0.0.1:8080/                (answers 'backend alpha|beta|gamma')",
                "            curl -s 'http://127.0.0.1:8080/?delay_ms=80'  (a slow request)",
                "            curl -s 'http://127.0.0.1:8080/?status=503'   (an upstream error)",
                "  admin:    http://127.0.0.1:9900/  (status page), /status, /metrics",
                "  control:  tandem ctl status | tandem ctl metrics",
                &pair_part,
                "  stop:     Ctrl-C",
            ]
            .join("\n");
            let code = run(
                loaded,
                ConfigSource::Embedded("<embedded demo>", demo::DEMO_CONFIG.to_string()),
                Some(&banner),
            );
            drop(pair);
            code
        }
        Command::ReleaseVips { config } => {
            let cfg = match load_or_report(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut failed = false;
            for v in &cfg.vips {
                let on = v.address_interface();
                let Some(index) = tandem_ha::vip::net::interface_index(&on) else {
                    // No VRRP MAC interface: nothing was ever held there.
                    if !v.use_vmac {
                        eprintln!("tandem release-vips: vip `{}`: no interface `{on}`", v.name);
                        failed = true;
                    }
                    continue;
                };
                for &(a, p) in &v.addresses {
                    match tandem_ha::vip::net::remove_address(index, a, p) {
                        Ok(()) => println!("released {a}/{p} from {on}"),
                        Err(e) => {
                            eprintln!("tandem release-vips: {a}/{p} on {on}: {e}");
                            failed = true;
                        }
                    }
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::GuardVips { vips } => tandem_proxy::cluster::vips::guard(&vips),
        Command::GuardAnycast {
            fragment,
            socket,
            birdc,
            protocol,
        } => tandem_proxy::cluster::anycast::guard(&fragment, &socket, &birdc, &protocol),
        Command::Witness { config } => {
            let cfg = match load_or_report(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            server::init_logging(&cfg.log);
            let Some(ha) = &cfg.ha else {
                eprintln!(
                    "{}: a witness needs an [ha] section (node_id, data_dir, tls, peers)",
                    config.display()
                );
                return ExitCode::from(2);
            };
            let pair = match tandem_proxy::pair::start(ha) {
                Ok(p) => {
                    tracing::info!(node = p.id, "witness running");
                    p
                }
                Err(e) => {
                    eprintln!("tandem witness: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // A witness file with an [admin] section gets the group's admin API.
            if cfg.admin.explicit {
                match tandem_proxy::control::admin::start_witness(cfg.admin.listen, cfg.admin.token.clone(), pair) {
                    Ok(a) => tracing::info!(admin = %a, "witness admin API listening"),
                    Err(e) => {
                        eprintln!("tandem witness: admin API on {}: {e}", cfg.admin.listen);
                        return ExitCode::FAILURE;
                    }
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("signal");
                let mut int = signal(SignalKind::interrupt()).expect("signal");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            ExitCode::SUCCESS
        }
        Command::Backend { backends, threads } => {
            let mut list = Vec::new();
            for b in backends {
                let Some((name, addr)) = b.split_once('=') else {
                    eprintln!("`{b}`: write NAME=ADDR, e.g. alpha=127.0.0.1:9101");
                    return ExitCode::from(2);
                };
                let Ok(addr) = addr.parse() else {
                    eprintln!("`{addr}` is not an IP:port address");
                    return ExitCode::from(2);
                };
                list.push((name.to_string(), addr));
            }
            if let Err(e) = demo::spawn_backends(list, threads) {
                eprintln!("cannot start backends: {e}");
                return ExitCode::FAILURE;
            }
            loop {
                std::thread::park();
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tandem", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tandem man: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl {
            admin,
            config,
            token,
            json,
            what,
        } => ctl_main(admin, config, token, json, what),
    }
}

/// Reads and validates a configuration file (nothing loaded or compiled: commands that
/// only need its values), printing its problems (exit status 2) when it has any.
fn load_or_report(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load_file(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Runs a server on the process's signals until it stops.
fn run(loaded: Loaded, source: ConfigSource, banner: Option<&str>) -> ExitCode {
    server::init_logging(&loaded.config.log);
    let started = server::signal_commands().and_then(|commands| Ok((Server::start(loaded, source)?, commands)));
    let (server, commands) = match started {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tandem: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(b) = banner {
        eprintln!("{b}");
    }
    match server.serve(commands) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl_main(
    admin: Option<SocketAddr>,
    config: Option<PathBuf>,
    token: Option<String>,
    json: bool,
    what: CtlCommand,
) -> ExitCode {
    let mut addr: SocketAddr = "127.0.0.1:9900".parse().expect("literal");
    let mut tok = token.or_else(|| std::env::var("TANDEM_ADMIN_TOKEN").ok());
    if let Some(path) = config {
        match config::load_file(&path) {
            Ok(c) => {
                addr = c.admin.listen;
                if tok.is_none() {
                    tok = c.admin.token;
                }
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(a) = admin {
        addr = a;
    }
    let wait_empty = match &what {
        CtlCommand::Maintenance {
            state,
            wait: true,
            timeout,
        } if state == "on" => Some(*timeout),
        _ => None,
    };
    let command = match &what {
        CtlCommand::Status => "status",
        CtlCommand::Metrics => "metrics",
        CtlCommand::Cluster { what: None } => "cluster",
        _ => "other",
    };
    let (method, path) = match what {
        CtlCommand::Status => ("GET", "/status".to_string()),
        CtlCommand::Metrics => ("GET", "/metrics".to_string()),
        CtlCommand::Reload => ("POST", "/reload".to_string()),
        CtlCommand::Drain => ("POST", "/drain".to_string()),
        CtlCommand::Ready => ("GET", "/ready".to_string()),
        CtlCommand::Live => ("GET", "/live".to_string()),
        CtlCommand::Cluster { what: None } => ("GET", "/cluster".to_string()),
        CtlCommand::Cluster {
            what:
                Some(ClusterCommand::Certs {
                    out,
                    members,
                    ids,
                    owner,
                }),
        } => {
            let owner = match owner.as_deref().map(tandem_proxy::config::access::User::lookup) {
                None => None,
                Some(Ok(u)) => Some((u.uid, u.gids[0])),
                Some(Err(e)) => {
                    eprintln!("tandem ctl cluster certs --owner: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if !ids.is_empty() && ids.len() != members.len() {
                eprintln!(
                    "tandem ctl cluster certs: --ids names {} ids for {} members; give one id per member, in order",
                    ids.len(),
                    members.len()
                );
                return ExitCode::FAILURE;
            }
            return match ctl::write_lab_certs(&out, &members, &ids, owner) {
                Ok(()) => {
                    println!(
                        "wrote {}/ca.pem and a certificate per member: {}",
                        out.display(),
                        members.join(", ")
                    );
                    println!("use them as [ha] tls = {{ ca = \"ca.pem\", cert = \"NAME.pem\", key = \"NAME.key\" }}; keep ca.key offline");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tandem ctl cluster certs: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        CtlCommand::Cluster {
            what: Some(ClusterCommand::Add { id, address }),
        } => ("POST", format!("/cluster/add?id={id}&address={address}")),
        CtlCommand::Cluster {
            what: Some(ClusterCommand::Remove { id }),
        } => ("POST", format!("/cluster/remove?id={id}")),
        CtlCommand::Cluster {
            what: Some(ClusterCommand::Replace { old, id, address }),
        } => ("POST", format!("/cluster/replace?old={old}&id={id}&address={address}")),
        CtlCommand::Maintenance { state, .. } => {
            ("POST", format!("/maintenance?on={}", if state == "on" { 1 } else { 0 }))
        }
        CtlCommand::Endpoint { action } => match action {
            EndpointAction::Drain { cluster, address } => {
                ("POST", format!("/endpoints/drain?cluster={cluster}&address={address}"))
            }
            EndpointAction::Undrain { cluster, address } => (
                "POST",
                format!("/endpoints/undrain?cluster={cluster}&address={address}"),
            ),
        },
    };
    match ctl::call(addr, tok.as_deref(), method, &path) {
        Ok((status, body)) => {
            let shown = match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(_) if json => body,
                Ok(v) => tandem_proxy::control::ctl_view::human(command, &v),
                // Metrics (Prometheus text) and plain answers as they are.
                Err(_) => body,
            };
            print!("{shown}");
            if !shown.ends_with('\n') {
                println!();
            }
            if !(200..300).contains(&status) {
                return ExitCode::FAILURE;
            }
            match wait_empty {
                Some(limit) => wait_until_empty(addr, tok.as_deref(), limit),
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("tandem ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tandem ctl maintenance on --wait`: polls `/status` until the node is in maintenance
/// (VIPs released, anycast routes withdrawn) and no client connection is left.
fn wait_until_empty(addr: SocketAddr, token: Option<&str>, limit: std::time::Duration) -> ExitCode {
    let start = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let status = ctl::call(addr, token, "GET", "/status")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
        if let Some(s) = &status {
            let phase = s["phase"].as_str().unwrap_or("?");
            let connections = s["connections"].as_u64().unwrap_or(0);
            if phase == "maintenance" && connections == 0 {
                println!(
                    "maintenance: done after {:.1} s: VIPs released, routes withdrawn, no client connection left",
                    start.elapsed().as_secs_f64()
                );
                return ExitCode::SUCCESS;
            }
            last = format!("phase {phase}, {connections} client connection(s) left");
        }
        if start.elapsed() >= limit {
            eprintln!("tandem ctl maintenance: not empty after {limit:?}: {last}");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `tandem check`: every problem of the file (exit 2), then the files the user may not
/// open (exit 2), else warnings and the summary.
fn check(path: &std::path::Path, user: Option<&str>) -> ExitCode {
    let c = match ConfigSource::File(path.to_path_buf()).load() {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("{e}");
            let n = e.issues().len();
            if n > 0 {
                eprintln!(
                    "{n} problem{} found; configuration refused",
                    if n == 1 { "" } else { "s" }
                );
            }
            return ExitCode::from(2);
        }
    };
    for w in &c.warnings {
        eprintln!(
            "{}:{}:{}: warning: {}: {}{}",
            c.source,
            w.line,
            w.col,
            w.key,
            w.message,
            w.hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
        );
    }
    let user = match user {
        None => tandem_proxy::config::access::User::current(),
        Some(name) => match tandem_proxy::config::access::User::lookup(name) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("tandem check --user: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let problems = tandem_proxy::control::check::file_problems(&c, &user);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!(
            "{} file problem{} for user {}; configuration refused",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            user.name
        );
        return ExitCode::from(2);
    }
    print!("{}", tandem_proxy::control::check::summary(&c, &user));
    ExitCode::SUCCESS
}
