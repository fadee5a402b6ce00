//! The CPU clock reads on when every descriptor the limit allows is in use (a run of
//! many connections gets there). Its own test binary: it lowers this process's limit.

use loadgen::sys::CpuClock;

#[test]
fn the_cpu_clock_reads_with_no_descriptor_left() -> anyhow::Result<()> {
    use rlimit::Resource;
    let clock = CpuClock::open();
    let (soft, hard) = Resource::NOFILE.get()?;
    let highest = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(2);
    // Every descriptor below the new limit is taken: those already open, and files
    // opened into the gaps between them.
    Resource::NOFILE.set(highest + 1, hard)?;
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
        if filler.len() > 100_000 {
            break;
        }
    }
    let fresh = std::fs::File::open("/proc/self/stat");
    let held = clock.now();
    drop(filler);
    Resource::NOFILE.set(soft, hard)?;
    anyhow::ensure!(
        fresh.is_err(),
        "the limit was not reached: a fresh open worked"
    );
    anyhow::ensure!(held.is_some(), "no CPU time read at the limit");
    Ok(())
}
