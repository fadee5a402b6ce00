//! A bad Config.toml stops the real binary at start-up with exit code 64 and one line
//! naming the file, the key and the problem.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

fn run_with(config: &str) -> Result<(i32, String)> {
    let dir = tempdir()?;
    let path = dir.join("Config.toml");
    std::fs::write(&path, config)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // A config taken by mistake starts a gateway that serves until stopped: it is
    // stopped after a deadline, and the test fails on its exit code instead of hanging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait()? {
            break status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            break -1;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((code, stderr))
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "wsgate-cfg-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn certs() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../certs")
        .display()
        .to_string()
}

fn check(config: &str, needles: &[&str]) -> Result<()> {
    let (code, stderr) = run_with(config)?;
    ensure!(code == 64, "exit code {code}, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected one line, got: {stderr}");
    for n in needles {
        ensure!(
            lines[0].contains(n),
            "{:?} does not mention {n:?}",
            lines[0]
        );
    }
    Ok(())
}

#[test]
fn missing_file() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", "/nonexistent/Config.toml"])
        .output()?;
    ensure!(out.status.code() == Some(64));
    ensure!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/Config.toml"));
    Ok(())
}

#[test]
fn syntax_error() -> Result<()> {
    check("[server\nlisten = \"0.0.0.0:1\"\n", &["Config.toml:1"])
}

#[test]
fn unknown_key() -> Result<()> {
    check(
        "[server]\nlistn = \"0.0.0.0:1\"\n[backends]\nA = \"ws://x:1/\"\n",
        &["Config.toml:2", "listn"],
    )
}

#[test]
fn bad_url() -> Result<()> {
    check(
        "[backends]\nBackend_ABC = \"http://localhost:8081/x\"\n",
        &["Config.toml:2", "backends.Backend_ABC", "ws://"],
    )
}

#[test]
fn bad_pool_entries_name_the_backend_and_key() -> Result<()> {
    check(
        "[backends]\nA = \"ws://a:1/\"\nB = { urls = [\"ws://b:1/\"], balance = \"fastest\" }\n",
        &["Config.toml:3", "backends.B.balance", "least_conn"],
    )?;
    check(
        "[backends]\nA = \"ws://a:1/\"\n\n[backends.B]\nurls = [\"ws://b:1/\"]\nbalance = \"hash\"\nhash_key = \"claim\"\n",
        &["Config.toml:7", "backends.B.hash_key", "claim:NAME"],
    )?;
    check(
        "[backends]\nA = \"ws://a:1/\"\n\n[backends.B]\ndns = \"b.svc:8081\"\nweight = 3\n",
        &["Config.toml:6", "backends.B.weight", "unknown key"],
    )?;
    check(
        "[backends]\nB = { dns = \"b.svc\", path = \"/x\" }\n",
        &["Config.toml:2", "backends.B.dns", "host:port"],
    )
}

#[test]
fn unreadable_cert() -> Result<()> {
    let c = certs();
    let config = format!(
        "[tls]\ncert = \"/nonexistent/server.crt\"\nkey = \"{c}/server.key\"\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
    );
    check(
        &config,
        &["Config.toml:2", "tls.cert", "/nonexistent/server.crt"],
    )
}

#[test]
fn bad_tls_settings() -> Result<()> {
    let c = certs();
    for (line, expect) in [
        (
            r#"cipher_suites = ["TLS_AES_128_GCM_SHA256", "TLS_RSA_WITH_RC4_128_MD5"]"#,
            ["tls.cipher_suites", "TLS_RSA_WITH_RC4_128_MD5"],
        ),
        (
            "session_tickets = 9",
            ["tls.session_tickets", "more than 8"],
        ),
    ] {
        let config = format!(
            "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n{line}\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
        );
        check(&config, &["Config.toml:4", expect[0], expect[1]])?;
    }
    Ok(())
}

#[test]
fn a_bad_certificate_of_tls_certs_is_named_by_its_place() -> Result<()> {
    let c = certs();
    let config = |certs: &str| {
        format!(
            "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n{certs}\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
        )
    };
    // The dev client certificate names no host: no server name could pick it.
    check(
        &config(&format!(
            "certs = [{{ cert = \"{c}/client.crt\", key = \"{c}/client.key\" }}]"
        )),
        &["Config.toml:4", "tls.certs[0].cert", "names no DNS host"],
    )?;
    check(
        &config(&format!(
            "certs = [{{ cert = \"{c}/server.crt\", key = \"{c}/server.key\" }}, {{ cert = \"{c}/server.crt\", key = \"{c}/client.key\" }}]"
        )),
        &["Config.toml:4", "tls.certs[1].key", "does not match the certificate"],
    )?;
    // Written as tables, the line is the key's own.
    check(
        &config(&format!(
            "[[tls.certs]]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n[[tls.certs]]\ncert = \"/nonexistent/b.crt\"\nkey = \"{c}/server.key\""
        )),
        &["Config.toml:8", "tls.certs[1].cert", "/nonexistent/b.crt"],
    )
}

#[test]
fn a_request_id_header_the_gateway_cannot_write_is_refused() -> Result<()> {
    let c = certs();
    for (name, extra, expect) in [
        ("Authorization", "", "gateway writes itself"),
        ("X Id", "", "not a valid header name"),
        (
            "X-Auth-Subject",
            "[auth.forward_claims]\nX-Auth-Subject = \"sub\"\n",
            "also a header",
        ),
    ] {
        let config = format!(
            "[server]\nrequest_id_header = {name:?}\n[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n{extra}[backends]\nA = \"ws://localhost:1/\"\n"
        );
        check(
            &config,
            &["Config.toml:2", "server.request_id_header", expect],
        )?;
    }
    Ok(())
}

#[test]
fn client_certificate_settings_that_cannot_work_are_refused() -> Result<()> {
    let c = certs();
    for (lines, expect) in [
        (
            "client_cert_header = \"X-Client-Cert\"".to_owned(),
            ["tls.client_cert_header", "needs tls.client_ca"],
        ),
        (
            "client_cert = \"optional\"".to_owned(),
            ["tls.client_cert", "needs tls.client_ca"],
        ),
        (
            format!("client_ca = \"{c}/ca.crt\"\nclient_cert_header = \"Host\""),
            ["tls.client_cert_header", "gateway writes itself"],
        ),
        (
            format!("client_ca = \"{c}/ca.crt\"\nclient_cert_header = \"X Cert\""),
            ["tls.client_cert_header", "not a valid header name"],
        ),
        (
            format!("client_crl = \"{c}/ca.crt\""),
            ["tls.client_crl", "needs tls.client_ca"],
        ),
        (
            format!("client_ca = \"{c}/ca.crt\"\nclient_crl = \"{c}/ca.crt\""),
            ["tls.client_crl", "no X509 CRL"],
        ),
        (
            "client_ca = \"/nonexistent/ca.crt\"".to_owned(),
            ["tls.client_ca", "/nonexistent/ca.crt"],
        ),
        (
            format!("client_ca = \"{c}/ca.crt\"\nclient_cert = \"sometimes\""),
            ["tls.client_cert", "sometimes"],
        ),
    ] {
        let config = format!(
            "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n{lines}\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
        );
        check(&config, &expect)?;
    }
    Ok(())
}

#[test]
fn wrong_key_type() -> Result<()> {
    let c = certs();
    let config = format!(
        "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n[auth]\nalgorithms = [\"RS256\"]\npublic_key = \"{c}/jwt-es256-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
    );
    check(&config, &["auth.public_key", "RSA"])
}

#[test]
fn help_documents_the_flags() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success());
    for flag in ["--config", "--log-level", "--log-format"] {
        ensure!(text.contains(flag), "--help lacks {flag}");
    }
    Ok(())
}

#[test]
fn check_config_into_a_closed_pipe_is_no_panic() -> Result<()> {
    // `gateway check-config | head -1`, with head gone before the first write.
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Config.toml");
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check-config")
        .arg("--config")
        .arg(&repo_config)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && !stderr.contains("panicked"),
        "{} {stderr}",
        out.status
    );
    Ok(())
}

#[test]
fn check_config_prints_the_effective_config() -> Result<()> {
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Config.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check-config")
        .arg("--config")
        .arg(&repo_config)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.contains("Backend_PQR = \"ws://localhost:8082/backend/pqr\""),
        "{text}"
    );
    ensure!(
        text.contains("idle = \"2m\""),
        "defaults are filled in: {text}"
    );
    let cert_line = text
        .lines()
        .find(|l| l.starts_with("cert = "))
        .unwrap_or_default();
    ensure!(
        cert_line.contains("/certs/server.crt\"") && cert_line.starts_with("cert = \"/"),
        "{cert_line}"
    );
    ensure!(
        !text.contains("PRIVATE KEY"),
        "check-config must not print key material"
    );

    let (code, stderr) = run_with("[backends]\nA = \"ftp://x/\"\n")?;
    ensure!(
        code == 64 && stderr.contains("backends.A"),
        "{code} {stderr}"
    );
    Ok(())
}

/// A minimal valid config with `extra` appended.
fn base_with(extra: &str) -> String {
    let c = certs();
    format!(
        "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n{extra}"
    )
}

#[test]
fn settings_that_would_fail_every_client_or_crash_later_are_refused_at_start() -> Result<()> {
    let c = certs();
    // The ECDSA certificate with only RSA key-exchange suites: no handshake could work.
    let rsa_only = format!(
        "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\ncipher_suites = [\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
    );
    check(&rsa_only, &["tls.cipher_suites", "ECDSA", "TLS 1.3"])?;
    // The private key where the public one goes: no signature would ever verify.
    let private = format!(
        "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n[auth]\npublic_key = \"{c}/jwt-private.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
    );
    check(&private, &["auth.public_key", "private key"])?;
    // A handshake timeout of 0 would drop every client (as would a request-head or backend
    // bound of 0, or of a nanosecond); a duration too long for the clock would panic at
    // the first connection.
    check(
        &base_with("[timeouts]\ntls_handshake = \"0s\"\n"),
        &["Config.toml:9", "timeouts.tls_handshake", "at least 100ms"],
    )?;
    check(
        &base_with("[timeouts]\nheader_read = \"0s\"\n"),
        &["timeouts.header_read", "at least 100ms"],
    )?;
    check(
        &base_with("[timeouts]\nbackend_connect = \"1ns\"\n"),
        &["timeouts.backend_connect", "at least 100ms"],
    )?;
    // A close timeout of 0 answers every close before the other side can; an idle of a
    // nanosecond was silently none.
    check(
        &base_with("[timeouts]\nclose = \"0s\"\n"),
        &["timeouts.close", "at least 100ms"],
    )?;
    check(
        &base_with("[timeouts]\nidle = \"1ns\"\n"),
        &["timeouts.idle", "\"0s\" (none) or at least 100ms"],
    )?;
    // A spread as long as the drain would leave its last sessions no time to close.
    check(
        &base_with("[timeouts]\ndrain = \"10s\"\ndrain_spread = \"10s\"\n"),
        &["timeouts.drain_spread", "shorter than drain (10s)"],
    )?;
    // An admin secret that cannot be read, or is too short to be one, stops the start.
    check(
        &base_with("[admin]\ntoken_file = \"no-such-admin-token\"\n"),
        &["admin.token_file", "cannot read", "no-such-admin-token"],
    )?;
    check(
        &base_with("[admin]\nread_token_file = \"reader\"\n"),
        &["admin.read_token_file", "needs token_file"],
    )?;
    // A subject claim of no name would silently count no one.
    check(
        &base_with("").replace("[auth]\n", "[auth]\nsubject_claim = \"\"\n"),
        &["auth.subject_claim", "must name a claim"],
    )?;
    // A leeway beyond the Unix time would make every token expired.
    check(
        &base_with("").replace("[auth]\n", "[auth]\nleeway_secs = 2000000000\n"),
        &["auth.leeway_secs", "at most 86400"],
    )?;
    // The admin listener on the clients' port would fail only at the bind, after check-config said OK.
    check(
        &base_with("[server]\nlisten = \"0.0.0.0:9443\"\n[admin]\nlisten = \"127.0.0.1:9443\"\n"),
        &["admin.listen", "overlaps server.listen"],
    )?;
    // A backend on port 0 can never be connected to.
    check(
        &base_with("").replace("ws://localhost:1/", "ws://127.0.0.1:0/x"),
        &["backends.A", "port 0"],
    )?;
    check(
        &base_with("[timeouts]\nmax_session = \"500000000000y\"\n"),
        &["Config.toml:9", "timeouts.max_session", "at most 100 years"],
    )?;
    check(
        &base_with("[backends.B]\nurls = [\"ws://localhost:1/\"]\neject = \"500000000000y\"\n"),
        &["backends.B.eject", "at most 100 years"],
    )?;
    // The size that is wrong is the one named, on its line.
    check(
        &base_with("[limits]\nmax_message_size = 10\nmax_frame_size = 0\n"),
        &["Config.toml:10", "limits.max_frame_size"],
    )
}

#[test]
fn a_misspelt_log_level_is_refused_rather_than_silencing_the_logs() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--log-level",
            "warnn",
            "--config",
            "/nonexistent/Config.toml",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(stderr.contains("not a level"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--log-level",
            "warn,gateway=debug",
            "--config",
            "/nonexistent/Config.toml",
        ])
        .output()?;
    ensure!(
        out.status.code() == Some(64),
        "directives are taken (then the missing file stops it): {:?}",
        out.status
    );
    Ok(())
}

#[test]
fn a_password_in_a_url_is_refused_without_being_repeated() -> Result<()> {
    // Neither a backend nor a key-set server is sent credentials from its URL, and URLs
    // are logged: a password there would only leak.
    // Nor when another problem with the URL is found first.
    let jwks =
        |url: &str| base_with("").replace("[auth]\n", &format!("[auth]\njwks_url = {url:?}\n"));
    let backend = |url: &str| base_with("").replace("ws://localhost:1/", url);
    for config in [
        backend("ws://user:s3cr3t@localhost:1/"),
        backend("http://user:s3cr3t@localhost:1/"),
        backend("wss://user:s3cr3t@localhost:1/"),
        backend("ws://user:s3cr3t@localhost:99999/"),
        // A password with a character that ends the authority, left unescaped.
        backend("ws://user:s3cr3t#x@127.0.0.1:1/x"),
        backend("ws://user:1234#s3cr3t@127.0.0.1:1/x"),
        backend("ws://user:s3cr3t?x@127.0.0.1:1/x"),
        jwks("http://user:s3cr3t#x@127.0.0.1:1/jwks"),
        base_with("[backends.D]\ndns = \"user:s3cr3t@localhost:1\"\n"),
        jwks("http://user:s3cr3t@127.0.0.1:1/jwks"),
        jwks("ftp://user:s3cr3t@127.0.0.1:1/jwks"),
        jwks("user:s3cr3t@127.0.0.1/jwks"),
    ] {
        let (code, stderr) = run_with(&config)?;
        ensure!(code == 64, "exit code {code}, stderr: {stderr}");
        ensure!(
            !stderr.contains("s3cr3t"),
            "the password was repeated: {stderr}"
        );
    }
    Ok(())
}

/// A 1024-bit RSA public key: too small for the verifier, which takes 2048 to 8192 bits.
const RSA_1024: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC/gE+pk2v53z1sk+KwF9qIDzhO
hwcfoYOkEYvVLQc0qxwTxoKzszz85szySwGHTdm/QY+FiznrRnoNmFpbPA0B7nC9
vRPn5P6KBzD9YLndiCD+vk05e9s2IR4ZHMLFIYnQTkM4R2YrHF2rjQ55kgfjXSGD
doAzM3/ksLrAHKso6QIDAQAB
-----END PUBLIC KEY-----
";

#[test]
fn a_public_key_the_algorithms_cannot_verify_with_is_refused_at_start() -> Result<()> {
    // Both used to start, then refuse every token as "invalid token signature".
    let dir = tempdir()?;
    let small = dir.join("rsa-1024.pem");
    std::fs::write(&small, RSA_1024)?;
    let c = certs();
    let with_key = |algorithms: &str, key: &str| {
        format!(
            "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n[auth]\nalgorithms = {algorithms}\npublic_key = \"{key}\"\n[backends]\nA = \"ws://localhost:1/\"\n"
        )
    };
    let small_rsa = with_key("[\"RS256\"]", &small.display().to_string());
    let p256_for_es384 = with_key("[\"ES384\"]", &format!("{c}/jwt-es256-public.pem"));
    let p256_for_es256 = with_key(
        "[\"ES256\", \"ES384\"]",
        &format!("{c}/jwt-es256-public.pem"),
    );
    let checked = (|| {
        check(&small_rsa, &["auth.public_key", "2048 to 8192 bits"])?;
        check(&p256_for_es384, &["auth.public_key", "P-256", "ES384"])?;
        // A P-256 key fits when ES256 is among the algorithms.
        let config = dir.join("Config.toml");
        std::fs::write(&config, &p256_for_es256)?;
        let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()?;
        ensure!(
            out.status.success(),
            "refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    checked
}

#[test]
fn a_cut_certificate_an_encrypted_key_and_a_certificate_as_key_are_named() -> Result<()> {
    // The parser's own words were a list of byte values, or "no items found".
    let dir = tempdir()?;
    let c = certs();
    let crt = std::fs::read_to_string(format!("{c}/server.crt"))?;
    let cut = dir.join("cut.crt");
    std::fs::write(&cut, &crt[..crt.len() / 2])?;
    let encrypted = dir.join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBAA==\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )?;
    // OpenSSL's traditional form (`openssl ec -aes256`).
    let traditional = dir.join("traditional.key");
    std::fs::write(
        &traditional,
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nMIIBAA==\n-----END EC PRIVATE KEY-----\n",
    )?;
    let with = |cert: &str, key: &str| {
        format!(
            "[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n"
        )
    };
    let key = format!("{c}/server.key");
    let checked = (|| {
        check(
            &with(&cut.display().to_string(), &key),
            &["tls.cert", "-----END CERTIFICATE-----", "cut short"],
        )?;
        check(
            &with(&format!("{c}/server.crt"), &encrypted.display().to_string()),
            &["tls.key", "encrypted private key"],
        )?;
        check(
            &with(
                &format!("{c}/server.crt"),
                &traditional.display().to_string(),
            ),
            &["tls.key", "encrypted private key"],
        )?;
        check(
            &with(&format!("{c}/server.crt"), &format!("{c}/server.crt")),
            &["tls.key", "a certificate, not a private key"],
        )
    })();
    let _ = std::fs::remove_dir_all(&dir);
    checked
}

#[test]
fn a_key_file_with_its_lines_joined_is_refused_without_quoting_the_key() -> Result<()> {
    // The PEM parser's error quoted its END marker or BEGIN line, which in such a file
    // runs on into the key: the private key went to the log and to /reload's answer.
    let dir = tempdir()?;
    let c = certs();
    let key = std::fs::read_to_string(format!("{c}/server.key"))?;
    let lines: Vec<&str> = key.lines().collect();
    let secret = lines
        .get(1)
        .context("a one-line key file")?
        .get(..24)
        .context("a short key line")?
        .to_owned();
    // `echo $KEY`: every line break a space.
    let flat = dir.join("flat.key");
    std::fs::write(&flat, format!("{}\n", lines.join(" ")))?;
    // The BEGIN line run into the first line of the key.
    let joined = dir.join("joined.key");
    std::fs::write(&joined, key.replacen("-----\n", "-----", 1))?;
    let checked = (|| {
        for file in [&flat, &joined] {
            let config = format!(
                "[tls]\ncert = \"{c}/server.crt\"\nkey = \"{}\"\n[auth]\npublic_key = \"{c}/jwt-public.pem\"\n[backends]\nA = \"ws://localhost:1/\"\n",
                file.display()
            );
            let (code, stderr) = check_config_of(&config)?;
            ensure!(code == 64, "{}: exit {code}", file.display());
            ensure!(stderr.contains("tls.key"), "{stderr}");
            ensure!(
                !stderr.contains(&secret),
                "the key is in the error: {stderr}"
            );
        }
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    checked
}

/// `gateway check-config` on `config`: its exit code and stderr. Unlike a start, it ends
/// whether the config is good or not.
fn check_config_of(config: &str) -> Result<(i32, String)> {
    let dir = tempdir()?;
    let path = dir.join("Config.toml");
    std::fs::write(&path, config)?;
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A claim sent under a header the gateway writes itself, or under one of the connection's
/// own, would give every backend request two `Host` or `Sec-WebSocket-Key` lines (which a
/// strict backend refuses for every client) or let whoever sets the claim frame the
/// request: such names are refused, in any spelling a CGI-style server folds together.
#[test]
fn a_claim_under_a_header_the_gateway_writes_itself_is_refused() -> Result<()> {
    for name in [
        "Host",
        "sec-websocket-key",
        "Transfer-Encoding",
        "Connection",
        "Cookie",
        "Authorization",
        "X_Forwarded_For",
    ] {
        let (code, stderr) = check_config_of(&base_with(&format!(
            "[auth.forward_claims]\n{name} = \"sub\"\n"
        )))?;
        ensure!(code == 64, "{name}: exit code {code}, stderr: {stderr}");
        ensure!(
            stderr.contains(&format!("auth.forward_claims.{name}"))
                && stderr.contains("a header the gateway writes itself"),
            "{name}: {stderr}"
        );
    }
    // The headers the README suggests pass.
    let (code, stderr) = check_config_of(&base_with(
        "[auth.forward_claims]\nX-Auth-Subject = \"sub\"\nX-Auth-Scopes = \"scp\"\n",
    ))?;
    ensure!(
        code == 0,
        "claim headers refused: exit code {code}, {stderr}"
    );
    Ok(())
}
