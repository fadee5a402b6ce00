//! What the generator needs from the OS: enough file descriptors, its own CPU time, and
//! source addresses to spread connections over when one would run out of ports.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Connections placed on one source address before another is used: below the default
/// ephemeral range (32768–60999, 28,232 ports) with room for other sockets.
pub const CONNS_PER_SOURCE: usize = 20_000;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// CPU time this process has used so far.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CpuTime {
    /// In user mode.
    pub user: Duration,
    /// In the kernel on the process's behalf.
    pub system: Duration,
}

impl CpuTime {
    /// The time used since `earlier`.
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    /// User plus system time.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }
}

/// Reads this process's CPU time (all threads) from `/proc/self/stat`, through a file
/// opened once: a run that has used every descriptor its limit allows still reads it (a
/// fresh open then fails, and the figure would be lost).
#[derive(Debug)]
pub struct CpuClock {
    stat: Option<std::fs::File>,
}

impl CpuClock {
    /// Opens `/proc/self/stat`; without it (no procfs) every reading is `None`.
    pub fn open() -> Self {
        Self {
            stat: std::fs::File::open("/proc/self/stat").ok(),
        }
    }

    /// The CPU time used so far; `None` where the file is missing or reads oddly.
    pub fn now(&self) -> Option<CpuTime> {
        use std::os::unix::fs::FileExt;
        let stat = self.stat.as_ref()?;
        // procfs builds the text afresh for a read from offset 0.
        let mut buf = [0u8; 4096];
        let n = stat.read_at(&mut buf, 0).ok()?;
        parse_stat(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// Reads utime and stime (fields 14 and 15, in clock ticks of 1/100 s: Linux reports
/// `USER_HZ`, which is 100 on every mainstream architecture).
fn parse_stat(stat: &str) -> Option<CpuTime> {
    const TICKS_PER_SEC: u64 = 100;
    // The command name (field 2) may hold spaces and parentheses: start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SEC);
    Some(CpuTime {
        user: ticks(utime),
        system: ticks(stime),
    })
}

/// How source addresses are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAddrs {
    /// The system's choice, unless there are more than [`CONNS_PER_SOURCE`] connections to
    /// an IPv4 loopback target: then 127.0.0.1, 127.0.0.2, ... as many as needed.
    Auto,
    /// Always the system's choice.
    System,
    /// These addresses, round-robin.
    List(Vec<IpAddr>),
}

impl std::str::FromStr for SourceAddrs {
    type Err = String;

    /// `auto`, `system`, a range `127.0.0.1-127.0.0.20`, or a comma-separated list.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => return Ok(SourceAddrs::Auto),
            "system" | "none" => return Ok(SourceAddrs::System),
            _ => {}
        }
        let mut list = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part.split_once('-') {
                let bad = |x: &str| format!("{x:?} is not an IPv4 address");
                let a: Ipv4Addr = a.trim().parse().map_err(|_| bad(a))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| bad(b))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a >= 65_536 {
                    return Err(format!("bad address range {part:?}"));
                }
                list.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
            } else {
                list.push(
                    part.parse()
                        .map_err(|_| format!("{part:?} is not an IP address"))?,
                );
            }
        }
        if list.is_empty() {
            return Err("no source address given".to_owned());
        }
        Ok(SourceAddrs::List(list))
    }
}

/// The source addresses for `conns` connections (empty: the system's choice).
///
/// Loopback source addresses only reach a loopback target, so a list of them with another
/// target is refused.
pub fn plan_source_addrs(
    spec: &SourceAddrs,
    conns: usize,
    target_is_v4_loopback: bool,
) -> Result<Vec<IpAddr>, String> {
    match spec {
        SourceAddrs::System => Ok(Vec::new()),
        SourceAddrs::List(list) => {
            if list.iter().any(|a| a.is_loopback()) && !target_is_v4_loopback {
                return Err(
                    "loopback source addresses need an IPv4 loopback target (127.0.0.1)".to_owned(),
                );
            }
            Ok(list.clone())
        }
        SourceAddrs::Auto => {
            if conns <= CONNS_PER_SOURCE || !target_is_v4_loopback {
                return Ok(Vec::new());
            }
            let n = conns.div_ceil(CONNS_PER_SOURCE).min(254) as u8;
            Ok((1..=n)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_command_name() {
        let stat = "1234 (my (weird) cmd) S 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20 0 4 0";
        let t = parse_stat(stat).expect("parses");
        assert_eq!(t.user, Duration::from_millis(2500));
        assert_eq!(t.system, Duration::from_millis(1300));
        let clock = CpuClock::open();
        let (Some(a), Some(b)) = (clock.now(), clock.now()) else {
            panic!("this process's own stat is readable, and again through the same file");
        };
        assert!(b.total() >= a.total());
    }

    #[test]
    fn source_address_specs() -> Result<(), String> {
        assert_eq!("auto".parse::<SourceAddrs>()?, SourceAddrs::Auto);
        let SourceAddrs::List(l) = "127.0.0.1-127.0.0.3, ::1".parse::<SourceAddrs>()? else {
            return Err("expected a list".into());
        };
        assert_eq!(l.len(), 4);
        assert!("127.0.0.5-127.0.0.1".parse::<SourceAddrs>().is_err());
        assert!("x".parse::<SourceAddrs>().is_err());
        Ok(())
    }

    #[test]
    fn auto_spreads_only_when_needed() -> Result<(), String> {
        assert!(plan_source_addrs(&SourceAddrs::Auto, 10_000, true)?.is_empty());
        assert!(plan_source_addrs(&SourceAddrs::Auto, 50_000, false)?.is_empty());
        let addrs = plan_source_addrs(&SourceAddrs::Auto, 50_000, true)?;
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        let list = SourceAddrs::List(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert!(plan_source_addrs(&list, 1, false).is_err());
        Ok(())
    }
}
