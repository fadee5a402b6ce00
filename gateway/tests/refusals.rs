//! Every refusal before the upgrade: its status and a body that names the reason; and
//! the gateway keeps serving good clients afterwards.

mod support;

use anyhow::{ensure, Result};
use fastwebsockets::{Frame, Payload};
use support::*;

fn without_auth(opts: &mut loadgen::client::ConnectOptions) {
    opts.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
}

#[tokio::test]
async fn each_bad_request_gets_its_status_and_reason() -> Result<()> {
    let tb = testbed().await?;
    let now = jsonwebtoken::get_current_timestamp();
    let bearer = |t: String| format!("Bearer {t}");

    let mut cases: Vec<(&str, loadgen::client::ConnectOptions, u16, &str)> = Vec::new();
    let base = || tb.connect_options("Backend_ABC");

    let mut o = base()?;
    without_auth(&mut o);
    cases.push(("no token", o, 401, "missing bearer token"));

    let mut o = base()?;
    o.set_header("Authorization", "Bearer not.a.jwt");
    cases.push(("malformed", o, 401, "malformed"));

    let mut o = base()?;
    o.set_header("Authorization", "Basic dXNlcjpwYXNz");
    cases.push(("not bearer", o, 401, "bearer"));

    let mut o = base()?;
    o.set_header("Authorization", bearer(tampered_token()?));
    cases.push(("bad signature", o, 401, "signature"));

    let mut o = base()?;
    o.set_header(
        "Authorization",
        bearer(rs256(&claims_with(|c| {
            c.insert("exp".into(), (now - 120).into());
            c.insert("iat".into(), (now - 3720).into());
        }))?),
    );
    cases.push(("expired", o, 401, "expired"));

    let mut o = base()?;
    o.set_header(
        "Authorization",
        bearer(rs256(&claims_with(|c| {
            c.insert("iss".into(), "someone-else".into());
        }))?),
    );
    cases.push(("wrong issuer", o, 401, "issuer"));

    let mut o = base()?;
    o.set_header(
        "Authorization",
        bearer(rs256(&claims_with(|c| {
            c.insert("aud".into(), serde_json::json!(["other.org"]));
        }))?),
    );
    cases.push(("wrong audience", o, 401, "audience"));

    let mut o = base()?;
    o.set_header(
        "Authorization",
        bearer(rs256(&claims_with(|c| {
            c.insert("iss".into(), serde_json::json!(["someone-else", "wso2"]));
        }))?),
    );
    cases.push(("issuer as an array holding it", o, 401, "issuer"));

    let mut o = base()?;
    o.headers.push(("ID".into(), "Backend_PQR".into()));
    cases.push(("two ID lines", o, 400, "repeated ID"));

    let mut o = base()?;
    o.headers
        .push(("Authorization".into(), "Basic dXNlcjpwYXNz".into()));
    cases.push(("two Authorization lines", o, 400, "repeated Authorization"));

    let mut o = base()?;
    o.set_header("Authorization", bearer(alg_none_token()?));
    cases.push(("alg none", o, 401, "token"));

    let mut o = base()?;
    o.set_header("Authorization", bearer(hs256_with_public_key_token()?));
    cases.push(("HS256 with the public key", o, 401, "token"));

    let mut o = base()?;
    o.set_header(
        "Authorization",
        bearer(rs256(&claims_with(|c| {
            c.insert("scp".into(), "read write".into());
        }))?),
    );
    cases.push(("no admin scope", o, 403, "scope"));

    let mut o = base()?;
    o.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("id"));
    cases.push(("missing ID", o, 400, "ID"));

    let mut o = base()?;
    o.set_header("ID", "Backend_NOPE");
    cases.push(("unknown ID", o, 404, "unknown backend"));

    let mut o = base()?;
    o.url = o.url.replace("/gateway", "/elsewhere");
    cases.push(("wrong path", o, 404, "path"));

    for (what, opts, status, needle) in &cases {
        let (got, reason) = refused(opts).await?;
        ensure!(
            got == *status,
            "{what}: expected {status}, got {got} ({reason})"
        );
        ensure!(
            reason.to_lowercase().contains(&needle.to_lowercase()),
            "{what}: reason {reason:?} does not mention {needle:?}"
        );
        ensure!(!reason.contains("eyJ"), "{what}: the reason leaks a token");
    }

    // A good client still works after all of that.
    let mut c = connect_ok(&tb, "Backend_ABC").await?;
    send(
        &mut c.ws,
        Frame::binary(Payload::Borrowed(b"after refusals")),
    )
    .await?;
    ensure!(next_non_push(&mut c.ws).await?.payload[..] == b"after refusals"[..]);
    Ok(())
}

#[tokio::test]
async fn plain_get_without_upgrade_is_400() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tb = testbed().await?;
    let mut tls = tls_connect(&tb).await?;
    tls.write_all(b"GET /gateway HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    ensure!(text.starts_with("HTTP/1.1 400"), "{text}");
    ensure!(text.contains("not a WebSocket upgrade"), "{text}");
    Ok(())
}

#[tokio::test]
async fn backend_down_refusing_or_silent_is_502_or_504() -> Result<()> {
    // A port with nothing listening: bind, learn the port, close.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let refusing = probe::Probe::start(probe::Mode::Refuse(500)).await?;
    let silent = probe::Probe::start(probe::Mode::Hang).await?;
    let tb = testbed_with_toml(
        &[
            ("Backend_DEAD", format!("ws://{dead}/x")),
            ("Backend_REFUSES", refusing.url()),
            ("Backend_SILENT", silent.url()),
        ],
        "[timeouts]\nbackend_connect = \"500ms\"\n",
    )
    .await?;
    let (s, r) = refused(&tb.connect_options("Backend_DEAD")?).await?;
    ensure!(s == 502 && r.contains("backend"), "{s} {r}");
    let (s, r) = refused(&tb.connect_options("Backend_REFUSES")?).await?;
    ensure!(s == 502 && r.contains("500"), "{s} {r}");
    let (s, r) = refused(&tb.connect_options("Backend_SILENT")?).await?;
    ensure!(s == 504, "{s} {r}");
    Ok(())
}

#[tokio::test]
async fn a_backends_101_must_be_unambiguous_and_its_interim_answers_are_waited_out() -> Result<()> {
    const UPGRADED: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let ok_101 = |extra: &str| {
        format!("HTTP/1.1 101 Switching Protocols\r\n{UPGRADED}Sec-WebSocket-Accept: {{accept}}\r\n{extra}\r\n")
    };
    // (answer, the 502's reason, or None: a 101 reaches the client)
    let cases: Vec<(String, Option<&str>)> = vec![
        (
            format!("HTTP/1.0 101 Switching Protocols\r\n{UPGRADED}Sec-WebSocket-Accept: {{accept}}\r\n\r\n"),
            Some("HTTP/1.0"),
        ),
        (
            ok_101("Sec-WebSocket-Accept: c3B1cmlvdXM=\r\n"),
            Some("more than one Sec-WebSocket-Accept"),
        ),
        (
            ok_101("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: superchat\r\n"),
            Some("more than one Sec-WebSocket-Protocol"),
        ),
        (
            ok_101("Sec-WebSocket-Protocol:\r\n"),
            Some("not one name"),
        ),
        // A refusal whose body never comes is a 502 at once, not a 504 when the connect
        // times out: its status is all the gateway needs.
        (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\n".into(),
            Some("backend answered HTTP 503"),
        ),
        // An interim answer before the 101 is passed over (RFC 9110 section 15.2).
        (
            format!("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n{}", ok_101("")),
            None,
        ),
        // An empty extensions header lists none.
        (ok_101("Sec-WebSocket-Extensions: \r\n"), None),
        // A head over 16 KiB is refused however TCP cuts it (here: one write).
        (
            ok_101(&format!("X-Big: {}\r\n", "b".repeat(20_000))),
            Some("response head too large"),
        ),
        // 90 headers are not too many.
        (ok_101(&"Set-Cookie: a=1\r\n".repeat(90)), None),
    ];
    let mut probes = Vec::new();
    let mut routes = Vec::new();
    for (i, (answer, _)) in cases.iter().enumerate() {
        let probe = probe::Probe::start(probe::Mode::Answer(answer.clone())).await?;
        routes.push((format!("B{i}"), probe.url()));
        probes.push(probe);
    }
    let routes: Vec<(&str, String)> = routes
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let tb = testbed_with_toml(&routes, "[timeouts]\nbackend_connect = \"20s\"\n").await?;
    for (i, (answer, expected)) in cases.iter().enumerate() {
        let mut opts = tb.connect_options(&format!("B{i}"))?;
        opts.protocols = Some("chat, superchat".into());
        match expected {
            Some(reason) => {
                let (status, got) = refused(&opts).await?;
                ensure!(
                    status == 502 && got.contains(reason),
                    "{answer:?}: {status} {got:?}, expected 502 naming {reason:?}"
                );
            }
            None => {
                let c = loadgen::client::connect(&opts)
                    .await
                    .map_err(|e| anyhow::anyhow!("{answer:?}: {e}"))?;
                ensure!(c.extensions.is_none() && c.protocol.is_none(), "{answer:?}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_backend_can_require_scopes_of_its_own_beyond_the_global_ones() -> Result<()> {
    let mut probe =
        support::probe::Probe::start(support::probe::Mode::Accept { protocol: None }).await?;
    // A pool entry with its own scopes, beside the testbed's plain entries.
    let tb = testbed_with_toml(
        &[],
        &format!(
            "Backend_BILLING = {{ urls = [\"{}\"], required_scopes = [\"billing\", \"write\"] }}\n",
            probe.url()
        ),
    )
    .await?;
    let with_scopes = |scp: &str| -> Result<loadgen::client::ConnectOptions> {
        let mut o = tb.connect_options("Backend_BILLING")?;
        let token = rs256(&claims_with(|c| {
            c.insert("scp".into(), scp.into());
        }))?;
        o.set_header("Authorization", format!("Bearer {token}"));
        Ok(o)
    };
    for (scp, lacking) in [
        ("admin", "billing"),
        ("admin billing", "write"),
        ("billing write", "admin"),
    ] {
        let (status, reason) = refused(&with_scopes(scp)?).await?;
        ensure!(
            status == 403 && reason.contains(lacking),
            "scopes {scp:?}: {status} {reason:?}, expected 403 naming {lacking}"
        );
    }
    let mut c = loadgen::client::connect(
        &with_scopes("admin billing write")?.header("X-Marker", "the one with every scope"),
    )
    .await?;
    send(&mut c.ws, Frame::binary(Payload::Borrowed(b"paid"))).await?;
    ensure!(next_frame(&mut c.ws).await?.payload[..] == b"paid"[..]);
    // The refused ones never reached the backend: the first upgrade it saw is this one.
    let support::probe::Event::Handshake(headers) = probe.next().await? else {
        anyhow::bail!("the backend's first event is not a handshake")
    };
    ensure!(
        support::probe::values(&headers, "x-marker") == ["the one with every scope"],
        "the backend's first upgrade was another: {headers:?}"
    );
    // The other backends ask only for the global scope.
    let mut o = tb.connect_options("Backend_ABC")?;
    let token = rs256(&claims_with(|c| {
        c.insert("scp".into(), "admin".into());
    }))?;
    o.set_header("Authorization", format!("Bearer {token}"));
    loadgen::client::connect(&o).await?;
    Ok(())
}

#[tokio::test]
async fn origins_outside_allowed_origins_get_403_and_clients_without_one_pass() -> Result<()> {
    let tb = testbed_with_toml(
        &[],
        "[browser]\nallowed_origins = [\"https://App.Example.com:443/\", \"http://localhost:8080\", \"https://*.apps.example.com\"]\n",
    )
    .await?;
    let with_origin = |origin: &str| -> Result<loadgen::client::ConnectOptions> {
        Ok(tb.connect_options("Backend_ABC")?.header("Origin", origin))
    };
    // Listed (compared as browsers send them: lower case, default port left out), and
    // subdomains of a wildcard entry.
    for origin in [
        "https://app.example.com",
        "http://localhost:8080",
        "https://team-a.apps.example.com",
        "https://x.team-b.Apps.example.com",
    ] {
        let mut c = loadgen::client::connect(&with_origin(origin)?).await?;
        echo(&mut c.ws, origin.as_bytes()).await?;
    }
    // Another site, another port or scheme of a listed one, and the opaque `null`.
    for origin in [
        "https://evil.example",
        "http://app.example.com",
        "http://localhost:8081",
        "null",
        "https://apps.example.com",
        "https://team-a.apps.example.com:8443",
        "https://team-a.apps.example.com.evil",
    ] {
        let (status, body) = refused(&with_origin(origin)?).await?;
        ensure!(
            status == 403 && body.trim() == "origin not allowed",
            "{origin}: {status} {body}"
        );
    }
    // Two Origin lines, a listed one first: only the first used to be checked.
    let two = with_origin("https://app.example.com")?.header("Origin", "https://evil.example");
    let (status, body) = refused(&two).await?;
    ensure!(
        status == 403 && body.trim() == "origin not allowed",
        "two origins: {status} {body}"
    );
    // No Origin at all: not a browser, not this check's business.
    let mut c = connect_ok(&tb, "Backend_ABC").await?;
    echo(&mut c.ws, b"no origin").await?;
    Ok(())
}

#[tokio::test]
async fn a_token_in_a_cookie_is_taken_from_allowed_origins_and_not_passed_on() -> Result<()> {
    use support::probe::{Event, Mode, Probe};
    let mut probe = Probe::start(Mode::Accept { protocol: None }).await?;
    let tb = testbed_with_toml(
        &[("Backend_PROBE", probe.url())],
        "[browser]\nallowed_origins = [\"https://app.example.com\"]\ntoken_cookie = \"wsgate_token\"\n",
    )
    .await?;
    let token = rs256(&loadgen::token::sample_claims())?;
    let cookie_client = |origin: &str| -> Result<loadgen::client::ConnectOptions> {
        let mut o = tb.connect_options("Backend_PROBE")?;
        without_auth(&mut o);
        Ok(o.header("Origin", origin).header(
            "Cookie",
            format!("theme=dark; wsgate_token={token}; lang=en"),
        ))
    };
    let mut c = loadgen::client::connect(&cookie_client("https://app.example.com")?).await?;
    echo(&mut c.ws, b"via cookie").await?;
    // The backend got the other cookies, not the token's.
    let headers = loop {
        if let Event::Handshake(h) = probe.next().await? {
            break h;
        }
    };
    let cookies: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    ensure!(
        cookies == ["theme=dark; lang=en"],
        "backend got {cookies:?}"
    );
    ensure!(
        !headers.iter().any(|(_, v)| v.contains(&token)),
        "the token reached the backend"
    );
    // The same cookie from a page elsewhere is refused before the token is looked at.
    let (status, body) = refused(&cookie_client("https://evil.example")?).await?;
    ensure!(status == 403 && body.contains("origin"), "{status} {body}");
    Ok(())
}
