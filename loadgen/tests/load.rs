//! Load mode against the real gateway and demo backends, in-process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use loadgen::cli::Cli;
use loadgen::load::{LoadOptions, LoadRun};
use loadgen::{Testbed, TestbedOptions};

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_the_gateway_is_lossless_and_reports_json() -> anyhow::Result<()> {
    // Short pushes, so the run also proves pushes are recognised and not counted as errors.
    let tb = Testbed::start(TestbedOptions {
        push_interval: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await?;
    let (json, html) = (temp_file("load.json"), temp_file("load.html"));
    let certs = tb.certs_dir();
    let args = [
        "loadgen".into(),
        "--url".into(),
        tb.url(),
        "--backend".into(),
        "all".into(),
        "--conns".into(),
        "30".into(),
        "--inflight".into(),
        "4".into(),
        "--duration".into(),
        "3s".into(),
        "--ca".into(),
        certs.join("ca.crt").display().to_string(),
        "--jwt-key".into(),
        certs.join("jwt-private.pem").display().to_string(),
        "--json".into(),
        json.display().to_string(),
        "--report".into(),
        html.display().to_string(),
        "--no-progress".into(),
    ];
    let cli = Cli::try_parse_from(args)?;
    let code = tokio::time::timeout(Duration::from_secs(60), loadgen::cli::run(cli)).await?;

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let _ = std::fs::remove_file(&json);
    let page = std::fs::read_to_string(&html)?;
    let _ = std::fs::remove_file(&html);
    assert_eq!(code, ExitCode::SUCCESS, "report: {report:#}");

    assert_eq!(report["version"], 2);
    assert_eq!(report["mode"], "closed");
    assert_eq!(report["inflight"], 4);
    assert_eq!(report["size"], 128);
    assert!(report["duration_s"].as_f64().unwrap_or(0.0) >= 2.9);
    let total = &report["total"];
    assert_eq!(total["backend"], "total");
    assert_eq!(total["connections"]["requested"], 30);
    assert_eq!(
        total["connections"]["opened"], 30,
        "every connection opens: {total:#}"
    );
    assert_eq!(total["connections"]["failed"], 0);
    assert_eq!(total["connections"]["dropped"], 0);
    assert!(total["messages"]["echoed"].as_u64().unwrap_or(0) > 0);
    assert!(total["messages"]["msgs_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(
        total["messages"]["pushes"].as_u64().unwrap_or(0) > 0,
        "pushes seen and ignored"
    );
    assert_eq!(
        total["errors"]["total"], 0,
        "no integrity errors: {:#}",
        total["errors"]
    );
    for key in [
        "missing",
        "duplicate",
        "reordered",
        "corrupted",
        "unexpected",
    ] {
        assert_eq!(total["errors"][key], 0, "{key}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(total["rtt_us"][key].as_u64().unwrap_or(0) > 0, "rtt {key}");
    }
    assert!(
        total["connections"]["connect_ms"]["p99"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    let backends = report["backends"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = backends
        .iter()
        .filter_map(|b| b["backend"].as_str())
        .collect();
    assert_eq!(names, ["Backend_ABC", "Backend_PQR", "Backend_XYZ"]);
    for b in &backends {
        assert_eq!(b["connections"]["opened"], 10);
        assert!(b["messages"]["echoed"].as_u64().unwrap_or(0) > 0);
    }
    let cpu = &report["loadgen"];
    assert!(cpu["cpu_s"].as_f64().is_some() && cpu["nofile_limit"].as_u64().unwrap_or(0) > 0);
    // The gateway follows the client's order, and loadgen offers a browser's: AES-128-GCM.
    assert_eq!(
        report["tls_suites"],
        serde_json::json!([{ "suite": "TLS13_AES_128_GCM_SHA256", "connections": 30 }]),
        "every connection's suite, counted"
    );
    assert_eq!(report["tls_resumed"], 0, "no resumption without --resume");

    assert!(page.contains("<svg") && page.contains("Backend_PQR") && page.contains("polyline"));
    Ok(())
}

/// Runs load mode against a fresh testbed with `opts`, aimed at its gateway (URL, CA and
/// a minted token set here); bounded at 60 s.
async fn run_load(opts: LoadOptions) -> anyhow::Result<LoadRun> {
    let tb = Testbed::start(TestbedOptions::default()).await?;
    let certs = tb.certs_dir();
    let opts = LoadOptions {
        url: tb.url(),
        ca: Some(certs.join("ca.crt")),
        token: loadgen::token::TokenSource::Mint(certs.join("jwt-private.pem")),
        ..opts
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        loadgen::load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
    )
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_and_refusals_are_reported() -> anyhow::Result<()> {
    let run = run_load(LoadOptions {
        backends: vec!["Backend_XYZ".into(), "Backend_NOPE".into()],
        conns: 6,
        duration: Duration::from_secs(1),
        rate: Some(600.0),
        ..Default::default()
    })
    .await?;
    let r = &run.report;
    assert_eq!(r.mode, "open");
    let xyz = &r.backends[0].connections;
    assert_eq!((xyz.requested, xyz.opened, xyz.failed), (3, 3, 0));
    let nope = &r.backends[1].connections;
    assert_eq!((nope.requested, nope.opened, nope.failed), (3, 0, 3));
    assert_eq!(nope.failures.len(), 1, "grouped: {:?}", nope.failures);
    assert_eq!(nope.failures[0].count, 3);
    assert!(
        nope.failures[0].reason.starts_with("HTTP 404"),
        "{}",
        nope.failures[0].reason
    );
    // About 600 msg/s for 1 s, all echoed.
    let m = &r.total.messages;
    assert!(m.echoed > 300 && m.echoed == m.sent, "{m:?}");
    assert_eq!(r.total.errors.total, 0);
    // Refused connections fail the run, as integrity errors do.
    assert_eq!(
        r.verdict().as_deref(),
        Some("FAIL: 3 of 6 connections never opened")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reuses_tls_sessions_across_the_runs_connections() -> anyhow::Result<()> {
    let run = run_load(LoadOptions {
        backends: vec!["Backend_ABC".into()],
        conns: 5,
        // One handshake at a time: each connection finds the ticket the one before got.
        connect_concurrency: 1,
        duration: Duration::from_millis(300),
        resume: true,
        ..Default::default()
    })
    .await?;
    let r = &run.report;
    assert_eq!(r.total.connections.opened, 5);
    assert_eq!(r.tls_resumed, 4, "all but the first connection resumed");
    let mut text = Vec::new();
    loadgen::report::write_table(r, &mut text)?;
    let text = String::from_utf8(text)?;
    assert!(
        text.contains("TLS sessions resumed: 4 of 5 connections"),
        "{text}"
    );
    assert!(r.passed());
    Ok(())
}

/// An echo server (plain `ws://`) that answers each upgrade `delay` after the connection
/// came: a slow handshake.
async fn slow_upgrade_echo(delay: Duration) -> anyhow::Result<std::net::SocketAddr> {
    use fastwebsockets::{Frame, OpCode, Payload};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut ws = loadgen::testbed::accept_ws(stream).await?;
                loop {
                    let frame = ws.read_frame().await?;
                    match frame.opcode {
                        OpCode::Close => return anyhow::Ok(()),
                        OpCode::Binary | OpCode::Text => {
                            let echo = Payload::Owned(frame.payload.to_vec());
                            ws.write_frame(Frame::new(true, frame.opcode, None, echo))
                                .await?;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_phase_is_measured_not_rounded_to_the_progress_tick() -> anyhow::Result<()> {
    // One connection whose handshake takes 120 ms: the phase ends with it. It was found
    // over at the next 100 ms progress tick and reported as 200 ms.
    let addr = slow_upgrade_echo(Duration::from_millis(120)).await?;
    let opts = LoadOptions {
        url: format!("ws://{addr}/echo"),
        backends: vec!["Backend_ABC".into()],
        conns: 1,
        duration: Duration::from_millis(100),
        token: loadgen::token::TokenSource::None,
        ca: None,
        ..Default::default()
    };
    let run = tokio::time::timeout(
        Duration::from_secs(30),
        loadgen::load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
    )
    .await??;
    let r = &run.report;
    assert_eq!(r.total.connections.opened, 1);
    let phase_ms = r.connect_phase_s * 1e3;
    let connect_ms = r.total.connections.connect_ms.max.unwrap_or(f64::NAN);
    // The phase holds the connection's own connect time (to the histogram's precision)
    // and little else.
    assert!(
        phase_ms + 1.0 >= connect_ms && phase_ms - connect_ms < 40.0,
        "connect phase {phase_ms:.1} ms for a {connect_ms:.1} ms connect"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_spread_the_connections_over_that_many_token_subjects() -> anyhow::Result<()> {
    // A gateway that lets each subject hold two sessions: one subject per two connections
    // gets all six in, two subjects only four.
    let tb = Testbed::start(TestbedOptions {
        extra_toml: "[limits]\nmax_sessions_per_subject = 2\n".into(),
        ..Default::default()
    })
    .await?;
    let certs = tb.certs_dir();
    for (subjects, opened) in [(3, 6), (2, 4)] {
        let opts = LoadOptions {
            url: tb.url(),
            ca: Some(certs.join("ca.crt")),
            token: loadgen::token::TokenSource::Mint(certs.join("jwt-private.pem")),
            backends: vec!["Backend_ABC".into()],
            conns: 6,
            subjects: Some(subjects),
            duration: Duration::from_millis(300),
            ..Default::default()
        };
        let run = tokio::time::timeout(
            Duration::from_secs(60),
            loadgen::load::run(&opts, tokio::sync::mpsc::unbounded_channel().1),
        )
        .await??;
        let c = &run.report.total.connections;
        assert_eq!(c.opened, opened, "{subjects} subjects: {c:?}");
        if opened < 6 {
            let failures = &run.report.backends[0].connections.failures;
            assert!(
                failures.iter().all(|f| f.reason.contains("503")),
                "{failures:?}"
            );
        }
    }
    // Only a minting source can make them.
    let given = LoadOptions {
        url: tb.url(),
        token: loadgen::token::TokenSource::Given("abc".into()),
        subjects: Some(2),
        ..Default::default()
    };
    let err = loadgen::load::run(&given, tokio::sync::mpsc::unbounded_channel().1)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(
        err.as_deref().is_some_and(|e| e.contains("--subjects")),
        "{err:?}"
    );
    Ok(())
}
