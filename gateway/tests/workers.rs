//! `[server] workers` and `threading`: connections are handed to the worker threads in
//! turn and stay there (or all go to one shared runtime); a drain closes the sessions on
//! every worker with 1001; a gateway that is dropped takes its workers' sessions with it.

mod support;

use anyhow::{ensure, Context, Result};
use demo_services::{Backend, ServiceOptions};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use loadgen::client::{connect, WsStream};
use support::process::{client_options, GatewayProc, ProcOptions};
use support::*;

const WORKERS: usize = 3;
const PER_WORKER: usize = 3;

async fn open_client(opts: &loadgen::client::ConnectOptions) -> Result<WebSocket<WsStream>> {
    let mut ws = connect(opts).await?.ws;
    ws.set_auto_close(false);
    echo(&mut ws, b"hello").await?;
    Ok(ws)
}

/// Names of the process's threads that start with `prefix` (from /proc/<pid>/task).
fn threads_named(pid: u32, prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm"))?;
        if comm.starts_with(prefix) {
            names.push(comm.trim().to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Opens `clients` sessions on a gateway started with `server_toml`, checks the threads
/// named `thread_prefix` and the per-worker counts in /metrics, then SIGTERM: every
/// session gets 1001 and the process exits cleanly.
async fn serve_then_drain(
    server_toml: &str,
    clients: usize,
    thread_prefix: &str,
    threads: &[&str],
    counts: &[(&str, usize)],
) -> Result<()> {
    let backend = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let mut gw = GatewayProc::start(ProcOptions {
        backends: vec![("Backend_ABC".into(), backend.url())],
        server_toml: server_toml.to_owned(),
        // The clients answer the shutdown's close themselves; keep the drain short anyway.
        extra_toml: "[timeouts]\nclose = \"2s\"\ndrain = \"5s\"\n".into(),
        ..ProcOptions::default()
    })
    .await?;
    // The workers are started beside the listener: wait (bounded) until all have run.
    let pid = gw.pid();
    let started = wait_for("every worker thread", DEADLINE, || async move {
        Ok(threads_named(pid, thread_prefix)? == threads)
    })
    .await;
    let names = threads_named(pid, thread_prefix)?;
    ensure!(
        started.is_ok() && names == threads,
        "threads: {names:?}, expected {threads:?}"
    );

    let opts = gw.connect_options("Backend_ABC")?;
    let mut open = Vec::new();
    for _ in 0..clients {
        open.push(open_client(&opts).await?);
    }
    let page = gw.metrics().await?;
    for (worker, n) in counts {
        let line = format!("wsgate_worker_connections_total{{worker=\"{worker}\"}} {n}");
        ensure!(
            page.lines().any(|l| l == line),
            "no '{line}' in /metrics:\n{}",
            page.lines()
                .filter(|l| l.starts_with("wsgate_worker"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Every session still flows, whichever worker holds it.
    for ws in &mut open {
        echo(ws, b"again").await?;
    }

    // SIGTERM: every session, on every worker, gets 1001 and the process exits cleanly.
    gw.terminate()?;
    for ws in &mut open {
        let f = tokio::time::timeout(DEADLINE, next_non_push(ws))
            .await
            .context("no close before the deadline")??;
        ensure!(f.opcode == OpCode::Close, "got {:?}, not a close", f.opcode);
        let (code, _) = close_of(&f)?;
        ensure!(code == 1001, "drain close code {code}");
        let _ = send(ws, Frame::close(1001, b"")).await;
    }
    let status = gw.wait_exit(DEADLINE).await?;
    ensure!(status.success(), "gateway exited with {status}");
    Ok(())
}

#[tokio::test]
async fn connections_go_to_the_workers_in_turn_and_all_drain() -> Result<()> {
    serve_then_drain(
        &format!("workers = {WORKERS}"),
        WORKERS * PER_WORKER,
        "wsgate-worker",
        &["wsgate-worker-0", "wsgate-worker-1", "wsgate-worker-2"],
        &[("0", PER_WORKER), ("1", PER_WORKER), ("2", PER_WORKER)],
    )
    .await
}

#[tokio::test]
async fn shared_threading_runs_one_runtime_and_drains() -> Result<()> {
    serve_then_drain(
        &format!("workers = {WORKERS}\nthreading = \"shared\""),
        WORKERS * PER_WORKER,
        "wsgate-",
        &["wsgate-shared", "wsgate-shared", "wsgate-shared"],
        &[("shared", WORKERS * PER_WORKER)],
    )
    .await
}

#[tokio::test]
async fn dropping_the_gateway_ends_its_workers_sessions() -> Result<()> {
    drop_ends_sessions("per_worker").await
}

#[tokio::test]
async fn dropping_the_gateway_ends_its_shared_runtimes_sessions() -> Result<()> {
    drop_ends_sessions("shared").await
}

/// A gateway (with `threading`) serving four sessions is dropped: every session ends.
async fn drop_ends_sessions(threading: &str) -> Result<()> {
    // The backend outlives the gateway, so only the gateway's end can end the sessions.
    let backend = demo_services::spawn_for_test(ServiceOptions {
        backend: Backend::Abc,
        push_interval: None,
    })
    .await?;
    let toml = format!(
        "[server]\nworkers = 2\nthreading = \"{threading}\"\n[backends]\nBackend_ABC = \"{}\"\n",
        backend.url()
    );
    let config = gateway::Config::from_toml_str(&toml, &loadgen::testbed::repo_root())?;
    let gw = gateway::Gateway::new(config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("wss://localhost:{}/gateway", listener.local_addr()?.port());
    let serving = tokio::spawn(gw.serve(listener, std::future::pending()));

    let opts = client_options(&url, "Backend_ABC")?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(open_client(&opts).await?);
    }
    serving.abort();
    let _ = serving.await;
    for ws in &mut clients {
        let _ = send(ws, Frame::binary(Payload::Borrowed(b"anyone?"))).await;
        let ended = loop {
            match tokio::time::timeout(DEADLINE, ws.read_frame()).await {
                Err(_) => break false,
                Ok(Ok(f)) if f.opcode == OpCode::Binary => {} // answered before the end
                Ok(_) => break true,                          // close frame or stream error
            }
        };
        ensure!(ended, "a session outlived its gateway");
    }
    Ok(())
}
