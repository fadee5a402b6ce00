//! Demo mode against the real gateway and demo backends, in-process.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loadgen::demo::{self, DemoEnd, DemoError, DemoOptions};
use loadgen::token::TokenSource;
use loadgen::{Testbed, TestbedOptions};

fn options(tb: &Testbed, backend: &str) -> DemoOptions {
    DemoOptions {
        url: tb.url(),
        backend: backend.to_owned(),
        ca: Some(tb.certs_dir().join("ca.crt")),
        insecure: false,
        client_cert: None,
        token: TokenSource::Mint(tb.certs_dir().join("jwt-private.pem")),
        interval: Duration::from_millis(100),
        count: Some(2),
        connect_timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_both_directions() -> anyhow::Result<()> {
    let tb = Testbed::start(TestbedOptions {
        push_interval: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await?;
    let mut out = Vec::new();
    let end = tokio::time::timeout(
        Duration::from_secs(30),
        demo::run(
            &options(&tb, "Backend_ABC"),
            &mut out,
            std::future::pending(),
        ),
    )
    .await??;
    let text = String::from_utf8(out)?;
    assert_eq!(end, DemoEnd::Finished { sent: 2 }, "{text}");
    let first = demo::request_message(1);
    let second = demo::request_message(2);
    assert!(
        text.contains(&format!("Client >> Backend_ABC: {first}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Client >> Backend_ABC: {second}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Backend_ABC >> Client: {second}\n")),
        "the echo: {text}"
    );
    assert!(
        text.contains(r#"Backend_ABC >> Client: {"message":"Hello from ABC Backend"}"#),
        "a push: {text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_reported_with_status_and_reason() -> anyhow::Result<()> {
    let tb = Testbed::start(TestbedOptions::default()).await?;
    let mut out = Vec::new();
    match demo::run(
        &options(&tb, "Backend_NOPE"),
        &mut out,
        std::future::pending(),
    )
    .await
    {
        Err(e @ DemoError::Refused { status: 404, .. }) => {
            let line = e.to_string();
            assert!(
                line.starts_with("the gateway refused the connection to Backend_NOPE: HTTP 404: "),
                "{line}"
            );
            assert!(
                line.len() > "the gateway refused the connection to Backend_NOPE: HTTP 404: ".len(),
                "a reason: {line}"
            );
        }
        other => anyhow::bail!("expected a 404 refusal, got {other:?}"),
    }
    let mut bad_token = options(&tb, "Backend_PQR");
    bad_token.token = TokenSource::Given("not.a.token".into());
    match demo::run(&bad_token, &mut out, std::future::pending()).await {
        Err(DemoError::Refused {
            status: 401,
            reason,
            ..
        }) => assert!(!reason.is_empty()),
        other => anyhow::bail!("expected a 401 refusal, got {other:?}"),
    }
    assert!(out.is_empty(), "nothing printed for a refused connection");
    Ok(())
}

/// An output that the test can read while the demo writes to it.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_closes_cleanly() -> anyhow::Result<()> {
    let tb = Testbed::start(TestbedOptions::default()).await?;
    let mut opts = options(&tb, "Backend_XYZ");
    opts.count = None;
    let out = SharedBuf::default();
    let seen = out.clone();
    // "Ctrl-C" once the first echo is printed.
    let stop = async move {
        while !seen.text().contains("Backend_XYZ >> Client: ") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut writer = out.clone();
    let end = tokio::time::timeout(Duration::from_secs(30), demo::run(&opts, &mut writer, stop))
        .await??;
    assert!(
        matches!(end, DemoEnd::Interrupted { sent } if sent >= 1),
        "{end:?}: {}",
        out.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_backend_closes_the_demo_with_its_code() -> anyhow::Result<()> {
    let mut tb = Testbed::start(TestbedOptions::default()).await?;
    let mut opts = options(&tb, "Backend_ABC");
    opts.count = None;
    let out = SharedBuf::default();
    let mut writer = out.clone();
    let session =
        tokio::spawn(async move { demo::run(&opts, &mut writer, std::future::pending()).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !out.text().contains("Backend_ABC >> Client: ") {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no echo: {}",
            out.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(tb.kill_backend("Backend_ABC"));
    let end = tokio::time::timeout(Duration::from_secs(20), session).await???;
    match end {
        DemoEnd::ClosedByServer {
            code: 1011 | 1014, ..
        } => {}
        other => anyhow::bail!("expected 1011/1014 from the gateway, got {other:?}"),
    }
    assert!(
        out.text().contains("Backend_ABC closed the connection: 10"),
        "{}",
        out.text()
    );
    Ok(())
}
