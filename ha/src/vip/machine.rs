//! The VRRPv3 state machine (RFC 5798 §6.4) for one virtual router, driven by events
//! and returning the actions to take; time is passed in, so it is tested without sleeping.
//!
//! ```text
//!  Initialize ──start (priority 255)──▶ Master
//!  Initialize ──start──▶ Backup ──Master_Down timer──▶ Master
//!  Master ──advert with higher priority (or equal and higher address)──▶ Backup
//!  Master ──shutdown: advert with priority 0──▶ Initialize
//!  Backup ──advert with priority 0──▶ Master_Down timer = Skew_Time
//! ```

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::packet::Advert;

/// Where the router is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or shut down.
    Initialize,
    /// Another router owns the VIPs.
    Backup,
    /// This router owns the VIPs.
    Master,
    /// Its interface is down (no carrier, or its address is gone): it holds nothing and
    /// sends nothing until the link is back.
    Fault,
}

impl State {
    /// The state as metrics and the sync group publish it: 0 initialize, 1 backup,
    /// 2 master, 3 fault.
    pub fn code(self) -> u8 {
        match self {
            State::Initialize => 0,
            State::Backup => 1,
            State::Master => 2,
            State::Fault => 3,
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority.
    SendAdvert(u8),
    /// Add the VIPs and announce them (gratuitous ARP).
    TakeVips,
    /// Remove the VIPs.
    ReleaseVips,
    /// Announce the VIPs again (another master was heard).
    Garp,
}

/// One virtual router's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// VRID.
    pub vrid: u8,
    /// This node's priority (1–255; 255 = owner).
    pub priority: u8,
    /// Advertisement interval in centiseconds.
    pub interval_cs: u16,
    /// Take over from a lower-priority master.
    pub preempt: bool,
    /// How long after a start preemption waits.
    pub preempt_delay: Duration,
    /// This node's address (tie-break).
    pub address: IpAddr,
}

/// The machine.
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: RouterConfig,
    state: State,
    master_adver_cs: u16,
    deadline: Option<Instant>,
    /// Preemption is allowed from then on (set at start).
    preempt_from: Option<Instant>,
}

fn cs(n: u32) -> Duration {
    Duration::from_millis(u64::from(n) * 10)
}

impl Machine {
    /// A router in Initialize.
    pub fn new(cfg: RouterConfig) -> Machine {
        Machine {
            master_adver_cs: cfg.interval_cs,
            cfg,
            state: State::Initialize,
            deadline: None,
            preempt_from: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When `on_timer` is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Skew_Time = ((256 − priority) × Master_Adver_Interval) / 256, in centiseconds.
    pub fn skew_cs(&self) -> u32 {
        ((256 - u32::from(self.cfg.priority)) * u32::from(self.master_adver_cs)) / 256
    }

    /// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
    pub fn master_down(&self) -> Duration {
        cs(3 * u32::from(self.master_adver_cs) + self.skew_cs())
    }

    fn become_master(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Master;
        self.deadline = Some(now + cs(u32::from(self.cfg.interval_cs)));
        vec![Action::SendAdvert(self.cfg.priority), Action::TakeVips]
    }

    fn become_backup(&mut self, now: Instant) {
        self.state = State::Backup;
        self.deadline = Some(now + self.master_down());
    }

    /// Postpones a backup's Master_Down check to `at` (the fence said not yet).
    pub fn defer(&mut self, at: Instant) {
        if self.state == State::Backup {
            self.deadline = Some(at);
        }
    }

    /// The master lost its lease to another node: back to backup without a priority-0
    /// advert (the new holder is already master).
    pub fn step_down(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Master {
            return Vec::new();
        }
        self.become_backup(now);
        vec![Action::ReleaseVips]
    }

    /// Startup event.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.preempt_from = Some(now + self.cfg.preempt_delay);
        if self.cfg.priority == 255 {
            return self.become_master(now);
        }
        self.master_adver_cs = self.cfg.interval_cs;
        self.become_backup(now);
        Vec::new()
    }

    /// The timer fired.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            State::Backup => self.become_master(now),
            State::Master => {
                self.deadline = Some(now + cs(u32::from(self.cfg.interval_cs)));
                vec![Action::SendAdvert(self.cfg.priority)]
            }
            State::Initialize | State::Fault => Vec::new(),
        }
    }

    /// The interface went down: the VIPs go, nothing is sent until [`Machine::recover`].
    pub fn fault(&mut self) -> Vec<Action> {
        let was = self.state;
        self.state = State::Fault;
        self.deadline = None;
        if was == State::Master {
            vec![Action::ReleaseVips]
        } else {
            Vec::new()
        }
    }

    /// The interface is usable again: back to backup (the election decides again; a
    /// router that becomes master announces the VIPs).
    pub fn recover(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Fault {
            return Vec::new();
        }
        self.start(now)
    }

    /// An advertisement for this VRID arrived from `src`.
    pub fn on_advert(&mut self, now: Instant, src: IpAddr, a: &Advert) -> Vec<Action> {
        if a.vrid != self.cfg.vrid {
            return Vec::new();
        }
        match self.state {
            State::Initialize | State::Fault => Vec::new(),
            State::Backup => {
                let preempting = self.cfg.preempt && self.preempt_from.is_none_or(|t| now >= t);
                if a.priority == 0 {
                    self.deadline = Some(now + cs(self.skew_cs()));
                } else if !preempting || a.priority >= self.cfg.priority {
                    self.master_adver_cs = a.interval_cs.max(1);
                    self.deadline = Some(now + self.master_down());
                }
                Vec::new()
            }
            State::Master => {
                if a.priority == 0 {
                    self.deadline = Some(now + cs(u32::from(self.cfg.interval_cs)));
                    return vec![Action::SendAdvert(self.cfg.priority)];
                }
                let wins =
                    a.priority > self.cfg.priority || (a.priority == self.cfg.priority && src > self.cfg.address);
                if wins {
                    self.master_adver_cs = a.interval_cs.max(1);
                    self.become_backup(now);
                    // One last advert as master: the winner may not have heard us yet
                    // (its advert reached us first after a heal or a link flap); hearing
                    // a lower master, it announces the VIPs again, so clients that
                    // cached our MAC follow it now rather than at its next refresh.
                    vec![Action::SendAdvert(self.cfg.priority), Action::ReleaseVips]
                } else {
                    // Another master is out there: make sure clients follow us.
                    vec![Action::Garp]
                }
            }
        }
    }

    /// Changes this router's priority (tracking). A master advertises the new value
    /// at once, so a higher-priority backup with preemption takes over.
    pub fn set_priority(&mut self, priority: u8) -> Vec<Action> {
        if priority == self.cfg.priority || priority == 0 {
            return Vec::new();
        }
        self.cfg.priority = priority;
        match self.state {
            State::Master => vec![Action::SendAdvert(priority)],
            _ => Vec::new(),
        }
    }

    /// The priority in use.
    pub fn priority(&self) -> u8 {
        self.cfg.priority
    }

    /// Shutdown (or maintenance): release at once with priority 0.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let was = self.state;
        self.state = State::Initialize;
        self.deadline = None;
        if was == State::Master {
            vec![Action::SendAdvert(0), Action::ReleaseVips]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg(priority: u8, last: u8, preempt: bool) -> RouterConfig {
        RouterConfig {
            vrid: 51,
            priority,
            interval_cs: 10,
            preempt,
            preempt_delay: Duration::ZERO,
            address: Ipv4Addr::new(10, 99, 0, last).into(),
        }
    }

    fn advert(priority: u8) -> Advert {
        Advert {
            vrid: 51,
            priority,
            interval_cs: 10,
            addrs: vec![Ipv4Addr::new(10, 99, 0, 100).into()],
        }
    }

    #[test]
    fn master_down_matches_rfc_and_keepalived() {
        let m = Machine::new(cfg(100, 2, true));
        // Skew = (156 × 10) / 256 = 6 cs; 3 × 10 + 6 = 36 cs (keepalived measured 361–364 ms).
        assert_eq!(m.master_down(), Duration::from_millis(360));
    }

    #[test]
    fn election_by_priority_and_preemption() {
        let t0 = Instant::now();
        let (a_ip, b_ip) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2));
        let mut a = Machine::new(cfg(150, 1, true));
        let mut b = Machine::new(cfg(100, 2, true));
        assert!(a.start(t0).is_empty() && b.start(t0).is_empty());
        // A's master-down timer is shorter (less skew): it wins.
        assert!(a.deadline().unwrap() < b.deadline().unwrap());
        let acts = a.on_timer(a.deadline().unwrap());
        assert_eq!(acts, vec![Action::SendAdvert(150), Action::TakeVips]);
        b.on_advert(t0 + Duration::from_millis(370), a_ip.into(), &advert(150));
        assert_eq!(b.state(), State::Backup);
        // A leaves with priority 0: B takes over after only its skew.
        assert_eq!(a.shutdown(), vec![Action::SendAdvert(0), Action::ReleaseVips]);
        let t1 = t0 + Duration::from_secs(1);
        b.on_advert(t1, a_ip.into(), &advert(0));
        assert_eq!(b.deadline().unwrap() - t1, Duration::from_millis(60));
        assert_eq!(
            b.on_timer(b.deadline().unwrap()),
            vec![Action::SendAdvert(100), Action::TakeVips]
        );
        // A returns with the higher priority: it preempts B.
        let t2 = t1 + Duration::from_secs(1);
        a.start(t2);
        b.on_advert(t2, a_ip.into(), &advert(150));
        assert_eq!(b.state(), State::Backup, "a higher-priority advert makes B yield");
        // A master hearing a lower master re-announces instead of yielding.
        let mut m = Machine::new(cfg(150, 1, true));
        m.start(t2);
        m.on_timer(m.deadline().unwrap());
        assert_eq!(m.on_advert(t2, b_ip.into(), &advert(100)), vec![Action::Garp]);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn without_preemption_a_higher_backup_waits() {
        let t0 = Instant::now();
        let mut a = Machine::new(cfg(150, 1, false));
        a.start(t0);
        // A lower-priority master keeps advertising: A keeps resetting its timer.
        for k in 1..10 {
            let now = t0 + Duration::from_millis(100 * k);
            a.on_advert(now, Ipv4Addr::new(10, 99, 0, 2).into(), &advert(100));
            assert!(a.deadline().unwrap() > now + Duration::from_millis(300));
        }
        assert_eq!(a.state(), State::Backup);
    }

    #[test]
    fn equal_priorities_break_ties_by_address() {
        let t0 = Instant::now();
        let mut low = Machine::new(cfg(100, 1, true));
        low.start(t0);
        low.on_timer(low.deadline().unwrap());
        assert_eq!(
            low.on_advert(t0, Ipv4Addr::new(10, 99, 0, 2).into(), &advert(100)),
            vec![Action::SendAdvert(100), Action::ReleaseVips]
        );
        let mut high = Machine::new(cfg(100, 2, true));
        high.start(t0);
        high.on_timer(high.deadline().unwrap());
        assert_eq!(
            high.on_advert(t0, Ipv4Addr::new(10, 99, 0, 1).into(), &advert(100)),
            vec![Action::Garp]
        );
    }

    #[test]
    fn a_master_that_loses_says_so_once_and_a_faulted_router_holds_and_sends_nothing() {
        let t0 = Instant::now();
        let mut b = Machine::new(cfg(100, 2, true));
        b.start(t0);
        b.on_timer(b.deadline().unwrap());
        // B loses to A's higher advert: one last advert with its own priority (A, still
        // master, hears a lower master and announces), then the VIPs go.
        assert_eq!(
            b.on_advert(t0, Ipv4Addr::new(10, 99, 0, 1).into(), &advert(150)),
            vec![Action::SendAdvert(100), Action::ReleaseVips]
        );
        // FAULT from master releases; adverts and timers are ignored until recovery.
        let mut a = Machine::new(cfg(150, 1, true));
        a.start(t0);
        a.on_timer(a.deadline().unwrap());
        assert_eq!(a.fault(), vec![Action::ReleaseVips]);
        assert_eq!((a.state(), a.deadline()), (State::Fault, None));
        assert!(a
            .on_advert(t0, Ipv4Addr::new(10, 99, 0, 2).into(), &advert(0))
            .is_empty());
        assert!(a.on_timer(t0).is_empty());
        assert_eq!(a.fault(), Vec::new(), "a second fault changes nothing");
        // Recovery: backup, and master again after Master_Down (announcing the VIPs).
        assert!(a.recover(t0).is_empty());
        assert_eq!(a.state(), State::Backup);
        assert!(a.on_timer(a.deadline().unwrap()).contains(&Action::TakeVips));
    }

    #[test]
    fn preemption_waits_for_the_preempt_delay_after_a_start() {
        let t0 = Instant::now();
        let mut a = Machine::new(RouterConfig {
            preempt_delay: Duration::from_secs(1),
            ..cfg(150, 1, true)
        });
        a.start(t0);
        // Within the delay a lower master holds A back, as without preemption.
        let now = t0 + Duration::from_millis(500);
        a.on_advert(now, Ipv4Addr::new(10, 99, 0, 2).into(), &advert(100));
        assert!(a.deadline().unwrap() > now + Duration::from_millis(300));
        // After it, lower adverts are ignored: Master_Down fires and A takes over.
        let later = t0 + Duration::from_millis(1100);
        let before = a.deadline();
        a.on_advert(later, Ipv4Addr::new(10, 99, 0, 2).into(), &advert(100));
        assert_eq!(a.deadline(), before);
        assert!(a.on_timer(a.deadline().unwrap()).contains(&Action::TakeVips));
    }

    #[test]
    fn the_owner_starts_as_master() {
        let mut o = Machine::new(cfg(255, 1, true));
        assert_eq!(o.start(Instant::now()), vec![Action::SendAdvert(255), Action::TakeVips]);
    }
}
