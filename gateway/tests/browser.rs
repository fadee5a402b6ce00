//! A real browser through the gateway: headless Chromium loads a page from a loopback
//! HTTP server, opens `wss://localhost:<port>/gateway?id=Backend_ABC` with the token in a
//! `bearer.<JWT>` subprotocol entry (browsers cannot set headers), exchanges a message
//! with the demo backend, and reports the outcome back to the test's HTTP server. One
//! test talks to Python's `websockets` echo server instead, which accepts the browser's
//! `permessage-deflate` offer: compression end to end, through the gateway.
//!
//! Needs `chromium` (.ci/run installs it). Set WSGATE_SKIP_BROWSER=1 to skip where it
//! cannot be installed; otherwise a missing browser fails the test. The compression test
//! also needs `python3` with `websockets` (skipped with WSGATE_SKIP_INTEROP=1).

mod support;

use std::process::Stdio;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const BROWSER_CONFIG: &str = "[browser]\nid_query = \"id\"\ntoken_query = \"access_token\"\ntoken_protocol_prefix = \"bearer.\"\n";

fn chromium() -> Result<Option<&'static str>> {
    if std::env::var_os("WSGATE_SKIP_BROWSER").is_some() {
        return Ok(None);
    }
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {candidate}")])
            .output()?
            .status
            .success();
        if found {
            return Ok(Some(candidate));
        }
    }
    bail!("no chromium found: install it (apt-get install chromium) or set WSGATE_SKIP_BROWSER=1")
}

/// The test page. `mode`: `protocol` (token in a subprotocol entry), `readme` (the
/// README's example: a subprotocol the backend does not take, then the token entry),
/// `query` (token in the URL), `deflate` (as `protocol`, to `Backend_PY`, five round trips of a long text
/// that compresses well).
fn page(gateway_port: u16, result_port: u16, token: &str, mode: &str) -> String {
    let (backend, text, rounds) = match mode {
        "deflate" => ("Backend_PY", "'grüße aus chromium, '.repeat(200)", 5),
        _ => ("Backend_ABC", "'hello from chromium'", 1),
    };
    let url_and_protocols = match mode {
        "query" => format!("new WebSocket('wss://localhost:{gateway_port}/gateway?id={backend}&access_token={token}')"),
        "readme" => format!(
            "new WebSocket('wss://localhost:{gateway_port}/gateway?id={backend}', ['chat.v1', 'bearer.{token}'])"
        ),
        _ => format!(
            "new WebSocket('wss://localhost:{gateway_port}/gateway?id={backend}', ['bearer.{token}'])"
        ),
    };
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>wsgate browser test</title></head><body><script>
const report = (r) => fetch('http://127.0.0.1:{result_port}/result?' + encodeURIComponent(r));
const ws = {url_and_protocols};
const text = {text};
let rounds = {rounds};
ws.onopen = () => ws.send(text);
ws.onmessage = (e) => {{
  if (e.data !== text) return;
  if (--rounds > 0) {{ ws.send(text); return; }}
  // The token itself stays out of the report (and so out of test output).
  const protocol = ws.protocol.startsWith('bearer.') ? 'bearer.(token)' : ws.protocol;
  report('PASS protocol=' + protocol + ' extensions=' + ws.extensions);
  ws.close(1000, 'done');
}};
ws.onclose = (e) => {{ if (e.code !== 1000) report('FAIL close ' + e.code); }};
setTimeout(() => report('FAIL timeout'), 8000);
</script></body></html>"#
    )
}

/// Serves the page at `/` and forwards `/result?...` query strings to `results`.
async fn serve_page(listener: TcpListener, html: String, results: mpsc::UnboundedSender<String>) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        let (html, results) = (html.clone(), results.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let Ok(n) = tcp.read(&mut buf).await else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let target = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let body = if let Some(result) = target.strip_prefix("/result?") {
                let _ = results.send(result.to_owned());
                String::new()
            } else {
                html
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(response.as_bytes()).await;
        });
    }
}

/// Runs the page in Chromium against a gateway with `[browser]` as in `BROWSER_CONFIG`
/// plus `allowed_origins` built by `origins` from the page's own origin.
async fn run_browser(
    mode: &str,
    backends: &[(&str, String)],
    origins: impl FnOnce(&str) -> Vec<String>,
) -> Result<Option<String>> {
    let Some(browser) = chromium()? else {
        eprintln!("skipped: WSGATE_SKIP_BROWSER is set");
        return Ok(None);
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let page_port = listener.local_addr()?.port();
    let allowed = origins(&format!("http://127.0.0.1:{page_port}"));
    let config = format!("{BROWSER_CONFIG}allowed_origins = {allowed:?}\n");
    let tb = support::testbed_with_toml(backends, &config).await?;
    let token = support::rs256(&loadgen::token::sample_claims())?;
    let (tx, mut results) = mpsc::unbounded_channel();
    let html = page(tb.gateway_addr().port(), page_port, &token, mode);
    let server = tokio::spawn(serve_page(listener, html, tx));

    // A profile of its own per browser: two Chromiums on one profile hand over to each
    // other, and the second page never loads.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!(
        "wsgate-chromium-{}-{mode}-{run}",
        std::process::id()
    ));
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            // The dev certificate's CA is not in Chromium's store; this test is about
            // the WebSocket handshake, not certificate trust.
            "--ignore-certificate-errors",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://127.0.0.1:{page_port}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting chromium")?;
    let result = tokio::time::timeout(std::time::Duration::from_secs(45), results.recv()).await;
    let _ = child.kill().await;
    server.abort();
    let _ = std::fs::remove_dir_all(&profile);
    let result = result
        .context("the page reported nothing within 45 s")?
        .context("result channel closed")?;
    Ok(Some(result))
}

#[tokio::test]
async fn chromium_round_trip_with_the_token_in_a_subprotocol() -> Result<()> {
    if let Some(result) = run_browser("protocol", &[], |_| Vec::new()).await? {
        // The browser accepted the handshake only because the gateway answered with an
        // entry it offered.
        ensure!(result.starts_with("PASS"), "browser reported {result:?}");
        ensure!(
            result.contains("bearer."),
            "browser saw protocol {result:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn chromium_runs_the_readmes_example_against_a_backend_that_takes_no_subprotocol(
) -> Result<()> {
    if let Some(result) = run_browser("readme", &[], |_| Vec::new()).await? {
        // The backend chose none of `chat.v1`; the gateway answered the token entry.
        ensure!(result.starts_with("PASS"), "browser reported {result:?}");
        ensure!(
            result.contains("bearer."),
            "browser saw protocol {result:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn chromium_round_trip_with_the_token_in_the_query() -> Result<()> {
    if let Some(result) = run_browser("query", &[], |_| Vec::new()).await? {
        ensure!(result.starts_with("PASS"), "browser reported {result:?}");
    }
    Ok(())
}

#[tokio::test]
async fn chromium_is_let_through_from_an_allowed_origin_and_refused_from_another() -> Result<()> {
    // The page's own origin, as Chromium sends it, among the allowed ones.
    let allowed = run_browser("protocol", &[], |own| {
        vec!["https://app.example.com".into(), own.to_owned()]
    })
    .await?;
    if let Some(result) = allowed {
        ensure!(result.starts_with("PASS"), "browser reported {result:?}");
    }
    // Only another site allowed: the handshake is refused (403), which a page sees as a
    // connection that failed.
    let refused = run_browser("protocol", &[], |_| vec!["https://app.example.com".into()]).await?;
    if let Some(result) = refused {
        ensure!(
            result == "FAIL%20close%201006",
            "browser reported {result:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn chromium_and_a_compressing_backend_negotiate_permessage_deflate_through_the_gateway(
) -> Result<()> {
    if !support::python::ready()? {
        eprintln!("skipped: WSGATE_SKIP_INTEROP is set");
        return Ok(());
    }
    let server = support::python::EchoServer::start().await?;
    let backends = [("Backend_PY", server.url())];
    if let Some(result) = run_browser("deflate", &backends, |_| Vec::new()).await? {
        // The page saw every echo intact, and the extension the backend accepted.
        ensure!(result.starts_with("PASS"), "browser reported {result:?}");
        ensure!(
            result.contains("extensions%3Dpermessage-deflate"),
            "browser saw no compression: {result:?}"
        );
    }
    Ok(())
}
