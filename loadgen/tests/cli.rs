//! The `loadgen` binary refuses options that cannot work, with one clear line and exit
//! code 64 (from the parser, or checked before the run), instead of panicking mid-run or
//! reporting figures that mean nothing.

use std::process::Command;

fn loadgen(args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A target where nothing listens (port 1), with a token given: a run that got past its
/// checks fails there, at once.
const NOBODY: [&str; 4] = ["--url", "ws://127.0.0.1:1/gateway", "--token", "x"];

/// `loadgen` against [`NOBODY`] with `extra` flags.
fn loadgen_at_nobody(extra: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let args: Vec<&str> = NOBODY.iter().chain(extra).copied().collect();
    loadgen(&args)
}

#[test]
fn options_that_cannot_work_are_refused_before_anything_runs() -> anyhow::Result<()> {
    for (extra, code, needle) in [
        (&["demo", "--interval", "0s"][..], 64, "above 0s"),
        (&["demo", "--bogus"][..], 64, "--bogus"),
        (&["--conns", "abc"][..], 64, "--conns"),
        (&["--connect-rate", "1e-300"][..], 64, "--connect-rate"),
        (&["--rate", "1e-300"][..], 64, "--rate"),
        (&["--echo-timeout", "0s"][..], 64, "--echo-timeout"),
        (&["--duration", "0s"][..], 64, "--duration"),
        (&["--connect-timeout", "0s"][..], 64, "--connect-timeout"),
    ] {
        let (got, stderr) = if extra[0] == "demo" {
            loadgen(extra)?
        } else {
            loadgen_at_nobody(extra)?
        };
        anyhow::ensure!(
            got == Some(code) && stderr.contains(needle),
            "{extra:?}: exit {got:?}, stderr {stderr:?}"
        );
        anyhow::ensure!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    let (got, _) = loadgen(&["--help"])?;
    anyhow::ensure!(got == Some(0), "--help: exit {got:?}");
    Ok(())
}

#[test]
fn a_jwt_key_that_is_not_an_rsa_key_is_a_usage_error() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("loadgen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("not-a-key.pem");
    std::fs::write(
        &key,
        "-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n",
    )?;
    let key = key.to_string_lossy().into_owned();
    let (got, stderr) = loadgen(&[
        "--url",
        "ws://127.0.0.1:1/gateway",
        "--jwt-key",
        &key,
        "--duration",
        "1s",
    ])?;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(got == Some(64), "exit {got:?}: {stderr}");
    anyhow::ensure!(stderr.contains("not-a-key.pem"), "{stderr}");
    Ok(())
}

#[test]
fn a_jwt_key_that_is_not_a_private_key_is_a_usage_error_that_says_so() -> anyhow::Result<()> {
    // jsonwebtoken took the public key or the certificate and failed at signing:
    // "signature error".
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs");
    let url = "ws://127.0.0.1:1/gateway";
    for (file, says) in [
        ("jwt-public.pem", "holds a public key"),
        ("server.crt", "holds a CERTIFICATE, not a key"),
    ] {
        let key = certs.join(file).to_string_lossy().into_owned();
        let want = format!("{file} {says}: --jwt-key needs the RSA private key");
        for args in [
            &["--url", url, "--jwt-key", &key, "--duration", "1s"][..],
            &["demo", "--url", url, "--jwt-key", &key, "--count", "1"][..],
        ] {
            let (got, stderr) = loadgen(args)?;
            anyhow::ensure!(got == Some(64), "{args:?}: exit {got:?}: {stderr}");
            anyhow::ensure!(
                stderr.contains(&want) && stderr.trim().lines().count() == 1,
                "{args:?}: {stderr:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn an_unwritable_report_path_is_refused_before_the_run() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (got, stderr) =
        loadgen_at_nobody(&["--duration", "20s", "--json", "/nonexistent/dir/out.json"])?;
    anyhow::ensure!(got == Some(64), "exit {got:?}: {stderr}");
    anyhow::ensure!(stderr.contains("/nonexistent/dir/out.json"), "{stderr}");
    anyhow::ensure!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "found out only after the run"
    );
    Ok(())
}

#[test]
fn a_run_where_nothing_opened_reports_at_once_not_after_its_duration() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Every connect is refused at once.
    let (got, stderr) = loadgen_at_nobody(&["--conns", "3", "--duration", "30s", "--no-progress"])?;
    let took = started.elapsed();
    anyhow::ensure!(got == Some(1), "exit {got:?}: {stderr}");
    anyhow::ensure!(
        took < std::time::Duration::from_secs(15),
        "waited {took:?} for connections that had all failed"
    );
    Ok(())
}

#[test]
fn sizes_and_counts_that_cannot_work_are_usage_errors() -> anyhow::Result<()> {
    for (args, says) in [
        (
            &[
                "--url",
                "ws://127.0.0.1:1/gateway",
                "--size",
                "99999999999999",
            ][..],
            "--size must be between",
        ),
        (
            &[
                "--url",
                "ws://127.0.0.1:1/gateway",
                "--size",
                "18446744073709551615",
            ][..],
            "--size must be between",
        ),
        (
            &["demo", "--url", "ws://127.0.0.1:1/gateway", "--count", "0"][..],
            "--count",
        ),
        (
            &[
                "demo",
                "--url",
                "ws://127.0.0.1:1/gateway",
                "--connect-timeout",
                "0s",
            ][..],
            "--connect-timeout",
        ),
    ] {
        let (got, stderr) = loadgen(args)?;
        anyhow::ensure!(
            got == Some(64) && stderr.contains(says),
            "{args:?}: exit {got:?}: {stderr}"
        );
    }
    Ok(())
}

/// Sends `child` a Ctrl-C (again every `repeat`, if given) until it exits, for up to
/// 10 s; returns its exit status and what it printed.
fn interrupt(
    child: &mut std::process::Child,
    repeat: Option<std::time::Duration>,
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let pid = child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut next_signal = Instant::now();
    let status = loop {
        if Instant::now() >= next_signal {
            anyhow::ensure!(Command::new("kill")
                .args(["-INT", &pid])
                .status()?
                .success());
            next_signal = repeat.map_or(deadline, |r| Instant::now() + r);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("loadgen still running 10 s after its Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    Ok((status, out))
}

#[test]
fn a_ctrl_c_while_connections_are_being_opened_still_ends_in_a_report() -> anyhow::Result<()> {
    // A server that takes connections and never answers: each connect would wait out its
    // 30 s timeout, and at 2 per second opening 20 would take 10 s.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("ws://{}/gateway", listener.local_addr()?);
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--url",
            &url,
            "--token",
            "x",
            "--conns",
            "20",
            "--connect-rate",
            "2",
        ])
        .args(["--connect-timeout", "30s", "--duration", "5s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The first connection has arrived: loadgen is in its connect phase.
    let (_first, _) = listener.accept()?;
    let (status, report) = interrupt(&mut child, None)?;
    // Killed by the signal, it would have no exit code and no report; one that waited
    // for the connect under way would still be running at the deadline above.
    anyhow::ensure!(
        status.code() == Some(130),
        "not the interrupted exit code: {status}"
    );
    anyhow::ensure!(
        report.contains("INTERRUPTED: stopped by Ctrl-C") && report.contains("0 of 20"),
        "the report does not say it was interrupted: {report:?}"
    );
    Ok(())
}

#[test]
fn a_ctrl_c_while_closing_abandons_the_connections_still_closing() -> anyhow::Result<()> {
    let (status, report) = abandoned_run(false)?;
    // The connection was abandoned still waiting for its echo: dropped as such, and the
    // run interrupted, not failed for the echo it never waited out.
    anyhow::ensure!(status.code() == Some(130), "exit status {status}");
    anyhow::ensure!(
        report.contains("abandoned while closing") && report.contains("INTERRUPTED"),
        "{report:?}"
    );
    // Its unanswered message is lost at close, in the table as in the JSON.
    anyhow::ensure!(report.contains("messages lost at close: "), "{report:?}");
    Ok(())
}

#[test]
fn what_an_abandoned_connection_counted_stays_in_the_report() -> anyhow::Result<()> {
    // Its one echo came back corrupted: that integrity error must survive the abandon.
    let (status, report) = abandoned_run(true)?;
    anyhow::ensure!(status.code() == Some(1), "exit status {status}");
    anyhow::ensure!(
        report.contains("FAIL: integrity errors; INTERRUPTED")
            && report.contains("abandoned while closing"),
        "{report:?}"
    );
    Ok(())
}

/// One loadgen connection to a server that upgrades, then echoes nothing (but the first
/// message, corrupted, if `corrupt_first`) and never answers a close: loadgen would wait
/// out its 60 s drain, then its close wait. It is sent Ctrl-C until it ends: the first
/// stops the sending (if the run has not ended by itself), the next, during the drain,
/// abandons the connection still closing.
fn abandoned_run(corrupt_first: bool) -> anyhow::Result<(std::process::ExitStatus, String)> {
    use fastwebsockets::{Frame, OpCode, Payload};
    use std::time::Duration;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("ws://{}/gateway", listener.local_addr()?);
    let (upgraded_tx, upgraded_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        rt.block_on(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut ws) = loadgen::testbed::accept_ws(tcp).await else {
                return;
            };
            ws.set_auto_close(false);
            ws.set_auto_pong(false);
            let mut corrupt = corrupt_first;
            while let Ok(frame) = ws.read_frame().await {
                if corrupt && matches!(frame.opcode, OpCode::Binary | OpCode::Text) {
                    corrupt = false;
                    let mut payload = frame.payload.to_vec();
                    let mid = payload.len() / 2;
                    payload[mid] ^= 0x5A;
                    let echo = Frame::new(true, frame.opcode, None, Payload::Owned(payload));
                    if ws.write_frame(echo).await.is_err() {
                        break;
                    }
                    let _ = upgraded_tx.send(());
                } else if !corrupt_first {
                    let _ = upgraded_tx.send(());
                }
            }
        });
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &url, "--token", "x", "--conns", "1"])
        .args(["--duration", "1s", "--drain-timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The first message has come (and its corrupted echo gone back).
    upgraded_rx.recv_timeout(Duration::from_secs(10))?;
    let ended = interrupt(&mut child, Some(Duration::from_millis(200)));
    let _ = server.join();
    ended
}

#[test]
fn an_inflight_beyond_its_caps_is_a_usage_error() -> anyhow::Result<()> {
    // Each connection's bookkeeping and write buffer grow with --inflight (× --size): a
    // huge one was taken as is, and the allocations with it.
    for (extra, says) in [
        (
            &["--inflight", "65537"][..],
            "--inflight must be between 1 and 65536",
        ),
        (
            &["--inflight", "18446744073709551615"][..],
            "--inflight must be between 1 and 65536",
        ),
        (
            &["--inflight", "0"][..],
            "--inflight must be between 1 and 65536",
        ),
        (
            // 64 KiB × 16,385: 1 GiB and 64 KiB.
            &["--size", "65536", "--inflight", "16385"][..],
            "--size × --inflight must be at most 1 GiB",
        ),
    ] {
        let (got, stderr) = loadgen_at_nobody(extra)?;
        anyhow::ensure!(
            got == Some(64) && stderr.contains(says) && stderr.trim().lines().count() == 1,
            "{extra:?}: exit {got:?}, stderr {stderr:?}"
        );
    }
    // At the caps themselves the run goes on (and fails at the unreachable target).
    for extra in [
        &["--inflight", "65536"][..],
        &["--size", "16384", "--inflight", "65536"][..],
    ] {
        let (got, stderr) =
            loadgen_at_nobody(&[extra, &["--conns", "1", "--no-progress"]].concat())?;
        anyhow::ensure!(got == Some(1), "{extra:?}: exit {got:?}, stderr {stderr:?}");
    }
    Ok(())
}

#[test]
fn a_ctrl_c_while_the_demo_is_connecting_exits_130_at_once() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    // A server that takes the connection and never answers the upgrade: the demo would
    // wait out its 30 s connect timeout, deaf to Ctrl-C.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("ws://{}/gateway", listener.local_addr()?);
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["demo", "--url", &url, "--token", "x"])
        .args(["--connect-timeout", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Its connection has arrived: the demo is connecting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let _conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    anyhow::bail!("the demo never connected");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                let _ = child.kill();
                return Err(e.into());
            }
        }
    };
    let (status, _) = interrupt(&mut child, None)?;
    anyhow::ensure!(status.code() == Some(130), "exit status {status}");
    Ok(())
}

#[test]
fn a_demo_whose_last_echo_never_comes_says_which_and_exits_1() -> anyhow::Result<()> {
    use fastwebsockets::{Frame, OpCode, Payload};
    use std::time::{Duration, Instant};
    // A server that echoes the first message and not the second (it answers the close).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("ws://{}/gateway", listener.local_addr()?);
    let server = std::thread::spawn(move || {
        rt.block_on(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut ws) = loadgen::testbed::accept_ws(tcp).await else {
                return;
            };
            let mut texts = 0;
            while let Ok(frame) = ws.read_frame().await {
                match frame.opcode {
                    OpCode::Text => {
                        texts += 1;
                        if texts == 1 {
                            let echo = Frame::text(Payload::Owned(frame.payload.to_vec()));
                            if ws.write_frame(echo).await.is_err() {
                                break;
                            }
                        }
                    }
                    OpCode::Close => break,
                    _ => {}
                }
            }
        });
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["demo", "--url", &url, "--token", "x"])
        .args(["--count", "2", "--interval", "100ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The demo waits 5 s for the last echo, then closes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("the demo still runs 30 s on");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = server.join();
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out)?;
    }
    anyhow::ensure!(status.code() == Some(1), "exit status {status}: {out}");
    anyhow::ensure!(
        out.contains("No echo from Backend_ABC for message 2 of 2 (id 2) within 5s"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_usage_error_leaves_no_empty_report_files_behind() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("loadgen-cli-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (json, html) = (dir.join("run.json"), dir.join("run.html"));
    let kept = dir.join("kept.json");
    std::fs::write(&kept, "earlier run")?;
    let paths: Vec<String> = [&json, &html, &kept]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // Checked writable before the run, then refused for a bad option.
    let first = loadgen_at_nobody(&[
        "--json",
        &paths[0],
        "--report",
        &paths[1],
        "--inflight",
        "0",
    ]);
    let second = loadgen_at_nobody(&["--json", &paths[2], "--size", "1"]);
    let left = (json.exists(), html.exists());
    let kept_text = std::fs::read_to_string(&kept);
    let _ = std::fs::remove_dir_all(&dir);
    let (got, stderr) = first?;
    anyhow::ensure!(got == Some(64), "exit {got:?}: {stderr}");
    anyhow::ensure!(left == (false, false), "files left behind: {left:?}");
    let (got, stderr) = second?;
    anyhow::ensure!(got == Some(64), "exit {got:?}: {stderr}");
    anyhow::ensure!(
        kept_text? == "earlier run",
        "an existing file is left as it was"
    );
    Ok(())
}

#[test]
fn backend_lists_that_make_no_sense_are_usage_errors() -> anyhow::Result<()> {
    // Duplicates doubled a backend's share of connections, `all` in a list was sent as
    // an ID (404s), and an empty ID was dropped or left "no backend given".
    for (backend, says) in [
        (
            "Backend_ABC,Backend_ABC",
            "--backend lists Backend_ABC twice",
        ),
        (
            "Backend_ABC, Backend_PQR,Backend_ABC",
            "--backend lists Backend_ABC twice",
        ),
        (
            "all,Backend_ABC",
            "--backend all already names every backend",
        ),
        (
            "Backend_ABC,ALL",
            "--backend all already names every backend",
        ),
        ("", "--backend has an empty ID"),
        (" ", "--backend has an empty ID"),
        ("Backend_ABC,,Backend_PQR", "--backend has an empty ID"),
    ] {
        let (got, stderr) = loadgen_at_nobody(&["--backend", backend])?;
        anyhow::ensure!(
            got == Some(64) && stderr.contains(says) && stderr.trim().lines().count() == 1,
            "{backend:?}: exit {got:?}, stderr {stderr:?}"
        );
    }
    for (backend, says) in [
        ("", "the backend ID is empty"),
        ("Backend_ABC,Backend_PQR", "the demo talks to one backend"),
    ] {
        let (got, stderr) = loadgen(&["demo", "--url", NOBODY[1], "--backend", backend])?;
        anyhow::ensure!(
            got == Some(64) && stderr.contains(says),
            "demo {backend:?}: exit {got:?}, stderr {stderr:?}"
        );
    }
    for backend in ["all", " all ", "Backend_ABC,Backend_PQR"] {
        let (got, stderr) = loadgen_at_nobody(&["--backend", backend, "--no-progress"])?;
        anyhow::ensure!(
            got == Some(1),
            "{backend:?}: exit {got:?}, stderr {stderr:?}"
        );
    }
    Ok(())
}
