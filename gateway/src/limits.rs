//! Connection limits: a total cap (a slot per connection), an optional cap per
//! client IP, and an optional rate of new connections per client IP. A slot is held for
//! the connection's whole life, session included. And an optional cap on the sessions of
//! one token subject, whose place is held from the token check to the session's end.
//!
//! An IPv6 client is counted by its network, not its full address (`[limits]
//! ipv6_prefix`, a /64 unless set): a host is commonly given a whole /64 and can pick a
//! fresh address in it for every connection, which would make a per-address limit no
//! limit at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota};

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from this address.
    PerIp,
    /// This address opened `max_connection_rate_per_ip` connections in the last second.
    Rate,
    /// `max_sessions_per_subject` sessions are open with tokens of this subject.
    PerSubject,
}

impl LimitHit {
    /// The one-line reason given with the 503.
    pub fn reason(self) -> &'static str {
        match self {
            LimitHit::Total => "over the connection limit",
            LimitHit::PerIp => "over the per-address connection limit",
            LimitHit::Rate => "over the per-address connection rate",
            LimitHit::PerSubject => "over the per-subject session limit",
        }
    }

    /// What the client is answered: 503, or 429 for the rate.
    pub fn refusal(self) -> crate::refusal::Refusal {
        match self {
            LimitHit::Rate => crate::refusal::Refusal::TooManyRequests(self.reason()),
            _ => crate::refusal::Refusal::Unavailable(self.reason()),
        }
    }
}

/// A connection's place under the limits, as the listener hands it to a worker.
#[derive(Debug)]
pub enum Admission {
    /// Decided at accept from the connection's peer address: its slot, or the limit it
    /// hit (it is answered 503).
    Decided(Result<Slot, LimitHit>),
    /// Decided once the PROXY protocol header has named the client
    /// (`[server] proxy_protocol`): the per-address cap is about clients, and every
    /// connection comes from the balancer's address.
    AfterProxyHeader,
}

/// Open connections per client address.
type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Open sessions (and connects under way) per token subject.
type SubjectCounts = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// Hands out connection slots. Its counts of open connections outlive it: a limiter
/// rebuilt by a reload ([`ConnLimiter::reconfigured`]) goes on counting the connections
/// the old one let in.
#[derive(Debug)]
pub struct ConnLimiter {
    max_total: usize,
    total: Arc<AtomicUsize>,
    /// 0: no per-address cap (the counts are kept all the same, for a reload that sets one).
    max_per_ip: usize,
    per_ip: IpCounts,
    rate: Option<Arc<Rate>>,
    /// Leading bits of an IPv6 address that name the client.
    ipv6_prefix: u8,
    /// 0: no per-subject cap (counted all the same, as `per_ip` is).
    max_per_subject: usize,
    per_subject: SubjectCounts,
}

/// IPv6 clients are counted per /64 unless `[limits] ipv6_prefix` says otherwise.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The address the per-address limits count `ip` under: an IPv4 address as it is (also
/// one written as an IPv4-mapped IPv6 address, as a dual-stack listener sees IPv4
/// clients), an IPv6 address cut to its first `ipv6_prefix` bits.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// New connections per address and second, and how often the addresses not seen lately
/// are forgotten.
#[derive(Debug)]
struct Rate {
    per_second: NonZeroU32,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU32,
}

/// Every this many rate checks, addresses whose allowance is whole again are dropped, so
/// the table holds only the addresses of the last second or so.
const RATE_SWEEP_EVERY: u32 = 4096;

/// A place counted under `key` in a map of counts (connections per address, sessions per
/// subject); dropping it takes the count down, and the key out at zero.
#[derive(Debug)]
pub struct Counted<K: std::hash::Hash + Eq> {
    key: K,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: std::hash::Hash + Eq> Counted<K> {
    /// What this place is counted under.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: std::hash::Hash + Eq> Drop for Counted<K> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock() {
            if let Some(n) = counts.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.key);
                }
            }
        }
    }
}

/// A held place among one subject's sessions; dropping it frees the place.
pub type SubjectSlot = Counted<Arc<str>>;

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _ip: Counted<IpAddr>,
    _total: TotalSlot,
}

#[derive(Debug)]
struct TotalSlot(Arc<AtomicUsize>);

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnLimiter {
    /// `max_total` connections in all, at most `max_per_ip` from one address (0: no
    /// per-address cap), and at most `rate_per_ip` new ones per second from one address
    /// (0: no rate).
    pub fn new(max_total: usize, max_per_ip: usize, rate_per_ip: u32) -> Self {
        Self {
            max_total,
            total: Arc::default(),
            max_per_ip,
            per_ip: IpCounts::default(),
            rate: NonZeroU32::new(rate_per_ip).map(|n| Arc::new(Rate::new(n))),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            max_per_subject: 0,
            per_subject: SubjectCounts::default(),
        }
    }

    /// At most `max` sessions per token subject (0: no cap).
    pub fn with_max_per_subject(mut self, max: usize) -> Self {
        self.max_per_subject = max;
        self
    }

    /// Counts IPv6 clients by their first `bits` bits (128: by full address).
    pub fn with_ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// The limits `[limits]` asks for.
    pub fn from_config(limits: &crate::config::LimitsConfig) -> Self {
        Self::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_connection_rate_per_ip,
        )
        .with_ipv6_prefix(limits.ipv6_prefix)
        .with_max_per_subject(limits.max_sessions_per_subject)
    }

    /// The limits `[limits]` asks for, counting the connections this limiter let in (and
    /// keeping its rate allowances when the rate is the same). Connections over a lowered
    /// cap stay open; new ones wait until enough have closed.
    pub fn reconfigured(&self, limits: &crate::config::LimitsConfig) -> Self {
        let rate = match (
            &self.rate,
            NonZeroU32::new(limits.max_connection_rate_per_ip),
        ) {
            (Some(old), Some(n)) if old.per_second == n => Some(old.clone()),
            (_, n) => n.map(|n| Arc::new(Rate::new(n))),
        };
        Self {
            max_total: limits.max_connections,
            total: self.total.clone(),
            max_per_ip: limits.max_connections_per_ip,
            per_ip: self.per_ip.clone(),
            rate,
            ipv6_prefix: limits.ipv6_prefix,
            max_per_subject: limits.max_sessions_per_subject,
            per_subject: self.per_subject.clone(),
        }
    }

    /// A place for a session of a token whose subject is `subject`, if the per-subject
    /// cap allows it.
    pub fn try_subject(&self, subject: &str) -> Result<SubjectSlot, LimitHit> {
        let mut map = self.per_subject.lock().map_err(|_| LimitHit::PerSubject)?;
        let subject: Arc<str> = match map.get_key_value(subject) {
            Some((kept, _)) => kept.clone(),
            None => Arc::from(subject),
        };
        let n = map.entry(subject.clone()).or_insert(0);
        if self.max_per_subject > 0 && *n >= self.max_per_subject {
            return Err(LimitHit::PerSubject);
        }
        *n += 1;
        drop(map);
        Ok(Counted {
            key: subject,
            counts: self.per_subject.clone(),
        })
    }

    /// A slot for a connection from `ip`, if the rate and both caps allow it.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<Slot, LimitHit> {
        let ip = client_key(ip, self.ipv6_prefix);
        if let Some(rate) = &self.rate {
            if rate.checks.fetch_add(1, Ordering::Relaxed) % RATE_SWEEP_EVERY == 0 {
                rate.limiter.retain_recent();
                rate.limiter.shrink_to_fit();
            }
            rate.limiter.check_key(&ip).map_err(|_| LimitHit::Rate)?;
        }
        let open = self.total.fetch_add(1, Ordering::AcqRel);
        let total = TotalSlot(self.total.clone());
        if open >= self.max_total {
            return Err(LimitHit::Total);
        }
        let mut map = self.per_ip.lock().map_err(|_| LimitHit::PerIp)?;
        let n = map.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            return Err(LimitHit::PerIp);
        }
        *n += 1;
        drop(map);
        Ok(Slot {
            _ip: Counted {
                key: ip,
                counts: self.per_ip.clone(),
            },
            _total: total,
        })
    }
}

impl Rate {
    fn new(per_second: NonZeroU32) -> Self {
        Self {
            per_second,
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second)),
            checks: AtomicU32::new(0),
        }
    }
}

/// Descriptors kept back for listeners, logs, DNS and the like.
const FD_RESERVE: u64 = 64;

/// How many proxied sessions this process's open-file limit allows: each costs two
/// descriptors (client and backend sockets). `None` when the limit cannot be read.
pub fn fd_session_capacity() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return None;
    }
    let soft: u64 = soft.parse().ok()?;
    usize::try_from(soft.saturating_sub(FD_RESERVE) / 2).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str, bits: u8| client_key(ip(s), bits);
        assert_eq!(key("2001:db8:1:2:aaaa::1", 64), ip("2001:db8:1:2::"));
        assert_eq!(key("2001:db8:1:2:aaaa::1", 48), ip("2001:db8:1::"));
        assert_eq!(key("2001:db8:1:2:aaaa::1", 128), ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(key("2001:db8:1:2:aaaa::1", 0), ip("::"));
        assert_eq!(key("2001:db8:1:2:aaaa::1", 57), ip("2001:db8:1:0::"));
        assert_eq!(key("2001:db8:1:ff:aaaa::1", 57), ip("2001:db8:1:80::"));
        // IPv4 is never cut, also when a dual-stack socket shows it IPv4-mapped.
        assert_eq!(key("203.0.113.9", 64), ip("203.0.113.9"));
        assert_eq!(key("::ffff:203.0.113.9", 64), ip("203.0.113.9"));
        assert_eq!(key("::1", 64), ip("::"));
    }

    #[test]
    fn subject_places_are_counted_across_a_reload_and_freed_when_dropped() {
        let l = ConnLimiter::new(10, 0, 0).with_max_per_subject(2);
        let held = [l.try_subject("alice"), l.try_subject("alice")];
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(l.try_subject("alice").err(), Some(LimitHit::PerSubject));
        assert!(l.try_subject("bob").is_ok());
        // A reload that raises the cap counts the sessions already open.
        let limits = crate::config::LimitsConfig {
            max_sessions_per_subject: 3,
            ..Default::default()
        };
        let raised = l.reconfigured(&limits);
        let third = raised.try_subject("alice");
        assert!(third.is_ok());
        assert_eq!(
            raised.try_subject("alice").err(),
            Some(LimitHit::PerSubject)
        );
        drop(held);
        drop(third);
        assert!(l.per_subject.lock().is_ok_and(|m| m.is_empty()));
        // Without a cap, any number.
        let open = ConnLimiter::new(10, 0, 0);
        let many: Vec<_> = (0..50).map(|_| open.try_subject("alice")).collect();
        assert!(many.iter().all(Result::is_ok));
    }

    #[test]
    fn one_ipv6_network_shares_the_caps_unless_the_prefix_is_128() {
        let (a, b, other) = (ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8:0:1::1"));
        let l = ConnLimiter::new(10, 1, 0);
        let _a = l.try_acquire(a);
        assert_eq!(l.try_acquire(b).err(), Some(LimitHit::PerIp));
        assert!(l.try_acquire(other).is_ok());
        let by_address = ConnLimiter::new(10, 1, 0).with_ipv6_prefix(128);
        let _a = by_address.try_acquire(a);
        assert!(by_address.try_acquire(b).is_ok());
        let rate = ConnLimiter::new(10, 0, 2);
        assert!(rate.try_acquire(a).is_ok() && rate.try_acquire(b).is_ok());
        assert_eq!(rate.try_acquire(a).err(), Some(LimitHit::Rate));
    }

    #[test]
    fn caps_total_and_per_ip_and_frees_on_drop() {
        let l = ConnLimiter::new(3, 2, 0);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = l.try_acquire(a);
        let s2 = l.try_acquire(a);
        assert!(s1.is_ok() && s2.is_ok());
        assert_eq!(l.try_acquire(a).err(), Some(LimitHit::PerIp));
        let s3 = l.try_acquire(b);
        assert!(s3.is_ok());
        assert_eq!(l.try_acquire(b).err(), Some(LimitHit::Total));
        drop(s1);
        assert!(l.try_acquire(a).is_ok());
    }

    #[test]
    fn caps_the_rate_per_address_in_bursts_of_the_rate() {
        let l = ConnLimiter::new(100, 0, 3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let held: Vec<_> = (0..3).map(|_| l.try_acquire(a)).collect();
        assert!(held.iter().all(Result::is_ok), "a burst of the rate passes");
        assert_eq!(l.try_acquire(a).err(), Some(LimitHit::Rate));
        assert!(
            l.try_acquire(b).is_ok(),
            "another address has its own allowance"
        );
        drop(held);
        assert_eq!(
            l.try_acquire(a).err(),
            Some(LimitHit::Rate),
            "closing connections gives no new ones: it is a rate"
        );
    }

    #[test]
    fn a_reconfigured_limiter_counts_the_connections_the_old_one_let_in() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let old = ConnLimiter::new(10, 0, 0);
        let held = [old.try_acquire(a), old.try_acquire(a), old.try_acquire(b)];
        assert!(held.iter().all(Result::is_ok));
        let limits = |total, per_ip| crate::config::LimitsConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            max_connection_rate_per_ip: 0,
            ..crate::config::LimitsConfig::default()
        };
        let lowered = old.reconfigured(&limits(3, 0));
        assert_eq!(lowered.try_acquire(b).err(), Some(LimitHit::Total));
        let per_ip = lowered.reconfigured(&limits(10, 2));
        assert_eq!(per_ip.try_acquire(a).err(), Some(LimitHit::PerIp));
        let third = per_ip.try_acquire(b);
        assert!(third.is_ok(), "b has one of its two");
        assert_eq!(per_ip.try_acquire(b).err(), Some(LimitHit::PerIp));
        // Slots taken under the old limiter free places under the new one.
        drop(held);
        drop(third);
        let again: Vec<_> = (0..2).map(|_| per_ip.try_acquire(a)).collect();
        assert!(again.iter().all(Result::is_ok));
    }
}
