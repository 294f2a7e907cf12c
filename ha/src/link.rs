//! Standing links: one connection from this member to each other configured member,
//! kept open and checked with a ping every [`PING_EVERY`], for the calls that cannot
//! wait for a connection to be made — lease asks and renewals, and their relays. Only
//! those: a link carries one call at a time, so bulk batches (the publisher's) go on
//! connections of their own, and a call that finds the link busy does too; a renewal
//! never waits behind another call, and the pings keep saying who answers.
//!
//! A fresh connection per call (TCP and a TLS login) costs a few milliseconds on an idle
//! machine and tens on a loaded one, which a fenced takeover pays twice (the ask and,
//! through the witness, its relay). A plain pool of idle connections is worse: one kept
//! from before a cut sits behind TCP's retransmission backoff after the heal, and a call
//! sent on it waits past a lease's life. A link is used only while *fresh* (a reply
//! came back on it within [`FRESH`]); a ping that goes unanswered for [`PING_TIMEOUT`]
//! drops its connection, and the next attempt opens a new one. Callers fall back to a
//! connection of their own while the link is not fresh.
//!
//! A link's pings also say which members are within reach right now ([`Links::heard`]),
//! which Raft traffic alone does not tell a follower about the other followers, and
//! which are known to be down ([`Links::refused`]: their host answers but nothing
//! listens). Each `Pong` carries the replier's own view ([`LinkView`]), kept as that
//! member's last report ([`Links::report`]). A VIP holder whose lease ran out decides from
//! these whether the group can still grant the lease to another node (see
//! [`crate::lease::LeaseClient::others_may_grant`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::client::PeerClient;
use crate::protocol::LinkView;
use crate::protocol::{Reply, Request};
use crate::types::NodeId;
use crate::wire::WireError;

/// How often a link checks its connection.
pub const PING_EVERY: Duration = Duration::from_millis(25);

/// A ping unanswered this long drops the link's connection.
pub const PING_TIMEOUT: Duration = Duration::from_millis(200);

/// A link carries calls only while a reply came back on it this recently.
pub const FRESH: Duration = Duration::from_millis(100);

/// Pause after a failed connection attempt (a stopped peer refuses at once).
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// A refusal says the member is down only while it is this recent (a refused link is
/// retried every [`RETRY_AFTER`] plus a tick, so a running refusal stays fresh).
pub const REFUSED_FRESH: Duration = Duration::from_millis(500);

/// A member's last report of its links, and when it came.
#[derive(Debug, Clone)]
pub struct Report {
    /// When the `Pong` carrying it arrived.
    pub at: Instant,
    /// The member's links as it saw them then.
    pub views: Vec<LinkView>,
}

/// A call waiting for its link.
struct Job {
    req: Request,
    within: Duration,
    answer: oneshot::Sender<Option<Reply>>,
}

/// The sending side of one member's link, and what its task found out.
struct Link {
    jobs: mpsc::Sender<Job>,
    state: LinkState,
}

/// The shared state of one link, written by its task.
#[derive(Clone)]
struct LinkState {
    /// When the last reply came back on it (ms since [`Links::epoch`]; 0: never).
    heard_ms: Arc<AtomicU64>,
    /// A call is on it now: another one goes on a connection of its own rather than
    /// wait behind it.
    busy: Arc<AtomicBool>,
    /// When its last connection attempt was refused (ms since [`Links::epoch`]; 0: the
    /// last outcome was not a refusal).
    refused_ms: Arc<AtomicU64>,
    /// The member's last report of its own links.
    report: Arc<Mutex<Option<Report>>>,
    epoch: Instant,
}

impl LinkState {
    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }
}

/// This member's links to the others; empty until [`Network::start_links`].
#[derive(Default)]
pub struct Links {
    by_id: OnceLock<HashMap<NodeId, Link>>,
    epoch: OnceLock<Instant>,
}

impl Links {
    /// Opens and keeps a link to every member in `peers` but `me`, each on a client
    /// `connect` makes; the returned tasks end when aborted or when their jobs' senders
    /// are gone.
    pub fn start(
        &self,
        me: NodeId,
        peers: &[crate::types::Peer],
        connect: impl Fn(NodeId, &str) -> PeerClient,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let epoch = self.epoch();
        let mut tasks = Vec::new();
        let mut by_id = HashMap::new();
        for p in peers.iter().filter(|p| p.id != me) {
            let (jobs, rx) = mpsc::channel(64);
            let state = LinkState {
                heard_ms: Arc::default(),
                busy: Arc::default(),
                refused_ms: Arc::default(),
                report: Arc::default(),
                epoch,
            };
            let client = connect(p.id, &p.address.to_string());
            tasks.push(tokio::spawn(keep(client, rx, state.clone())));
            by_id.insert(p.id, Link { jobs, state });
        }
        if self.by_id.set(by_id).is_err() {
            tasks.iter().for_each(|t| t.abort());
            return Vec::new();
        }
        tasks
    }

    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    /// How long ago a reply last came back on the link to `id` (`None`: no link, or
    /// never).
    pub fn heard(&self, id: NodeId) -> Option<Duration> {
        let link = self.by_id.get()?.get(&id)?;
        let ms = link.state.heard_ms.load(Relaxed);
        (ms != 0).then(|| self.epoch().elapsed().saturating_sub(Duration::from_millis(ms)))
    }

    /// Whether the last connection attempt to `id` was refused within [`REFUSED_FRESH`]:
    /// its host answers and nothing listens, so the member is not running.
    pub fn refused(&self, id: NodeId) -> bool {
        let Some(link) = self.by_id.get().and_then(|m| m.get(&id)) else {
            return false;
        };
        let ms = link.state.refused_ms.load(Relaxed);
        ms != 0 && self.epoch().elapsed().saturating_sub(Duration::from_millis(ms)) <= REFUSED_FRESH
    }

    /// Member `id`'s last report of its own links (`None`: none came yet, or it pings
    /// with `Hello`, an older release).
    pub fn report(&self, id: NodeId) -> Option<Report> {
        let link = self.by_id.get()?.get(&id)?;
        link.state.report.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This member's links as a `Pong` reports them.
    pub fn views(&self) -> Vec<LinkView> {
        let Some(by_id) = self.by_id.get() else {
            return Vec::new();
        };
        by_id
            .keys()
            .map(|&id| LinkView {
                id,
                heard_ms: self.heard(id).map(|d| d.as_millis().min(u32::MAX as u128) as u32),
                refused: self.refused(id),
            })
            .collect()
    }

    /// Sends `req` on the link to `id` if that link is fresh; `None` if it is not (the
    /// caller makes a connection of its own) or no reply came within `within`.
    pub(crate) async fn call(&self, id: NodeId, req: Request, within: Duration) -> Result<Option<Reply>, Request> {
        let Some(link) = self.by_id.get().and_then(|m| m.get(&id)) else {
            return Err(req);
        };
        if self.heard(id).is_none_or(|d| d > FRESH) || link.state.busy.load(Relaxed) {
            return Err(req);
        }
        let (answer, reply) = oneshot::channel();
        if let Err(e) = link.jobs.try_send(Job { req, within, answer }) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            return Err(job.req);
        }
        Ok(tokio::time::timeout(within, reply)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten())
    }
}

/// Runs one link: answers jobs, pings between them, reconnects after a failure.
async fn keep(mut client: PeerClient, mut jobs: mpsc::Receiver<Job>, link: LinkState) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = Pinger::default();
    let mut retry_at = Instant::now();
    loop {
        let (req, within, answer) = tokio::select! {
            job = jobs.recv() => match job {
                // Its caller gave up waiting: it may have gone another way meanwhile.
                Some(j) if j.answer.is_closed() => continue,
                Some(j) => (j.req, j.within, Some(j.answer)),
                None => return,
            },
            _ = tick.tick() => {
                if Instant::now() < retry_at {
                    continue;
                }
                (ping.request(), PING_TIMEOUT, None)
            }
        };
        let was_connected = client.connected();
        link.busy.store(answer.is_some(), Relaxed);
        let outcome = match tokio::time::timeout(within, client.call(&req)).await {
            Ok(r) => r,
            // The dropped call took its connection with it.
            Err(_) => Err(WireError::Io(std::io::ErrorKind::TimedOut.into())),
        };
        link.busy.store(false, Relaxed);
        match &outcome {
            Ok(reply) => {
                link.heard_ms.store(link.now_ms(), Relaxed);
                link.refused_ms.store(0, Relaxed);
                if let Reply::Pong(views) = reply {
                    let report = Report {
                        at: Instant::now(),
                        views: views.clone(),
                    };
                    *link.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
                }
            }
            Err(WireError::Io(e)) if !was_connected && e.kind() == std::io::ErrorKind::ConnectionRefused => {
                link.refused_ms.store(link.now_ms(), Relaxed);
            }
            Err(_) => link.refused_ms.store(0, Relaxed),
        }
        if outcome.is_err() && !was_connected && !client.connected() {
            retry_at = Instant::now() + RETRY_AFTER;
        }
        if answer.is_none() {
            ping.answered(&outcome, was_connected);
        }
        if let Some(a) = answer {
            let _ = a.send(outcome.ok());
        }
    }
}

/// Which request a link pings with. A peer of an older release does not know `Ping`:
/// it closes the connection on it (and counts a malformed frame). After three such
/// closes in a row on connections opened for the ping, the link pings with `Hello`
/// (answered through the peer's Raft core) until that connection is lost, say when the
/// peer restarts on a newer release.
#[derive(Default)]
struct Pinger {
    refused: u8,
    hello: bool,
}

impl Pinger {
    fn request(&self) -> Request {
        if self.hello {
            Request::Hello
        } else {
            Request::Ping
        }
    }

    fn answered(&mut self, outcome: &Result<Reply, WireError>, was_connected: bool) {
        match outcome {
            Ok(_) => self.refused = 0,
            Err(_) if self.hello => *self = Pinger::default(),
            Err(WireError::Io(e)) if !was_connected && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.refused += 1;
                self.hello = self.refused >= 3;
            }
            Err(_) => self.refused = 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eof() -> Result<Reply, WireError> {
        Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()))
    }

    #[test]
    fn a_peer_that_closes_on_ping_three_times_is_pinged_with_hello_until_the_link_breaks() {
        let mut p = Pinger::default();
        assert!(matches!(p.request(), Request::Ping));
        // A restart of the peer (a close on a kept connection) does not count.
        p.answered(&eof(), true);
        p.answered(&eof(), false);
        p.answered(&Ok(Reply::Pong(Vec::new())), false);
        p.answered(&eof(), false);
        p.answered(&eof(), false);
        assert!(matches!(p.request(), Request::Ping));
        p.answered(&eof(), false);
        assert!(matches!(p.request(), Request::Hello));
        p.answered(&Ok(Reply::Hello { initialized: true }), true);
        assert!(matches!(p.request(), Request::Hello));
        // The link breaks (the peer restarts, perhaps on a newer release): Ping again.
        p.answered(&eof(), true);
        assert!(matches!(p.request(), Request::Ping));
    }
}
