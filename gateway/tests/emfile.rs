//! Out of file descriptors: the gateway binary under `prlimit --nofile=96:96`. It caps
//! sessions to what its descriptors allow, refuses the rest with 503, and when idle
//! connections use up every descriptor its accept loop backs off instead of spinning,
//! answers waiting clients once descriptors free up, and admits new sessions again.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use demo_services::{Backend, ServiceOptions};
use loadgen::client::{ConnectError, Connected, Connector};
use support::process::{GatewayProc, ProcOptions};
use support::*;
use tokio::net::TcpStream;

const NOFILE: u64 = 96;
/// (96 - 64 reserved) / 2 descriptors per session.
const CAPACITY: usize = 16;

/// Connects, retrying while the gateway answers 503.
async fn connect_when_free(connector: &Connector) -> Result<Connected> {
    let started = Instant::now();
    loop {
        match connector.connect().await {
            Ok(c) => return Ok(c),
            Err(ConnectError::Refused { status: 503, .. }) if started.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("no session slot freed: {e}"),
        }
    }
}

#[tokio::test]
async fn out_of_descriptors_the_gateway_backs_off_refuses_cleanly_and_recovers() -> Result<()> {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("prlimit (util-linux) is needed for this test");
    }
    let backend = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), backend.url())],
        extra_toml: "[timeouts]\ntls_handshake = \"5s\"\n".into(),
        nofile: Some(NOFILE),
        ..ProcOptions::default()
    })
    .await?;
    ensure!(
        gw.log().contains(&format!("capacity={CAPACITY}")),
        "the gateway did not fold its fd limit into max_connections:\n{}",
        gw.log()
    );
    let connector = Arc::new(Connector::new(&gw.connect_options("Backend_ABC")?).await?);

    // Up to the capacity: every session works.
    let mut sessions = Vec::new();
    for i in 0..CAPACITY {
        let mut c = connector
            .connect()
            .await
            .with_context(|| format!("session {i} of {CAPACITY}"))?;
        echo(&mut c.ws, format!("s{i}").as_bytes()).await?;
        sessions.push(c);
    }
    // Past it: a clean 503.
    match connector.connect().await {
        Err(ConnectError::Refused {
            status: 503,
            reason,
        }) => ensure!(
            reason.contains("limit"),
            "503 without the reason: {reason:?}"
        ),
        Err(e) => bail!("over capacity: expected 503, got {e}"),
        Ok(_) => bail!("over capacity: a session was admitted"),
    }

    // Use up every descriptor with connections that never start TLS.
    let open = gw.stats()?.fds;
    let flood = (NOFILE as usize).saturating_sub(open) + 16;
    let mut idle = Vec::with_capacity(flood);
    for _ in 0..flood {
        idle.push(TcpStream::connect(gw.addr).await?);
    }
    wait_for("accept to fail (EMFILE)", DEADLINE, || {
        std::future::ready(Ok(gw.log().contains("accept failed")))
    })
    .await
    .with_context(|| format!("{} fds open; log:\n{}", open, gw.log()))?;
    ensure!(
        gw.log().contains("Too many open files"),
        "accept failed, but not for EMFILE:\n{}",
        gw.log()
    );

    // A client arriving now waits in the listen backlog...
    let waiting_since = Instant::now();
    let waiting = {
        let connector = connector.clone();
        tokio::spawn(async move { connector.connect().await })
    };
    // ...while the gateway, out of descriptors, must not spin on accept.
    let window = Duration::from_secs(2);
    let cpu_before = gw.stats()?.cpu_ticks;
    let started = Instant::now();
    tokio::time::sleep(window).await; // a measurement window, not a synchronisation
    let cpu_ticks = gw.stats()?.cpu_ticks - cpu_before;
    let measured = started.elapsed();
    println!(
        "EMFILE: gateway CPU {} ms over {:?} while out of descriptors",
        cpu_ticks * 10,
        measured
    );
    ensure!(
        cpu_ticks * 10 < 300,
        "gateway used {} ms of CPU in {measured:?} while out of descriptors (spinning?)",
        cpu_ticks * 10
    );

    // The gateway drops the stalled handshakes at its TLS timeout; the waiting client
    // is then answered: every slot is still taken, so 503.
    match tokio::time::timeout(Duration::from_secs(15), waiting).await {
        Err(_) => bail!("a client arriving while out of descriptors hung"),
        Ok(joined) => match joined? {
            Err(ConnectError::Refused { status: 503, .. }) => println!(
                "EMFILE: a client arriving while out of descriptors got 503 after {:?}",
                waiting_since.elapsed()
            ),
            Err(e) => bail!("waiting client: expected 503, got {e}"),
            Ok(_) => bail!("waiting client was admitted past the capacity"),
        },
    }
    drop(idle);

    // Sessions end; new clients take their places.
    for mut c in sessions.drain(..4) {
        ensure!(close_cleanly(&mut c.ws).await? == 1000);
    }
    for i in 0..4 {
        let mut c = connect_when_free(&connector).await?;
        echo(&mut c.ws, format!("new{i}").as_bytes()).await?;
        sessions.push(c);
    }
    for (i, c) in sessions.iter_mut().enumerate() {
        echo(&mut c.ws, format!("end{i}").as_bytes()).await?;
    }
    Ok(())
}

#[tokio::test]
async fn health_checks_that_find_no_descriptor_eject_no_instance() -> Result<()> {
    // Probes that could not get a socket used to count against the instances probed:
    // every healthy instance ejected, and the backends blamed in logs and metrics.
    use support::probe::{Mode, Probe};
    let backend = Probe::start(Mode::Accept { protocol: None }).await?;
    let mut gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), backend.url())],
        nofile: Some(200),
        rust_log: Some("info,gateway::pool=debug".into()),
        ..ProcOptions::default()
    })
    .await?;
    // Ten pools of 60 instances, each probed every second, all at once: more sockets
    // than the descriptors left, even when the pools' rounds do not start together (on
    // a loaded machine five pools' rounds did not overlap enough). Added by a reload,
    // once the gateway serves.
    let urls: Vec<String> = (0..60)
        .map(|i| format!("\"{}?i={i}\"", backend.url()))
        .collect();
    let pools: String = (0..10)
        .map(|p| {
            format!(
                "\n[backends.P{p}]\nurls = [{}]\nhealth_interval = \"1s\"\nhealth_check = \"tcp\"\n",
                urls.join(", ")
            )
        })
        .collect();
    let file = std::fs::read_to_string(gw.config_path())?;
    std::fs::write(gw.config_path(), file + &pools)?;
    gw.hangup()?;
    wait_for("a probe without a descriptor", DEADLINE, || {
        std::future::ready(Ok(gw.log().contains("health check skipped")))
    })
    .await
    .with_context(|| gw.log())?;
    ensure!(
        !gw.log().contains("backend instance ejected"),
        "healthy instances were ejected:\n{}",
        gw.log()
    );
    gw.terminate()?;
    gw.wait_exit(DEADLINE).await?;
    Ok(())
}
