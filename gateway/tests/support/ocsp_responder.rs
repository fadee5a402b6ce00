//! An OCSP responder on a loopback port: each GET (RFC 6960 appendix A) is answered by
//! `openssl ocsp` in responder mode, signing as the test's CA, or as the test tells it
//! to: a revoked status, a refusal, another signer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::process::temp_dir;
use super::test_ca::{Issued, TestCa};

/// How the responder answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// "good", signed with the CA's key.
    Good,
    /// "revoked", signed with the CA's key.
    Revoked,
    /// "good", signed by `cert_file`/`key_file` (a delegated responder, or a stranger).
    SignedBy {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// An HTTP 500.
    Fail,
}

/// The running responder.
pub struct OcspResponder {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OcspResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What signs "good" and "revoked" answers, and where the index goes.
struct Signer {
    ca_file: PathBuf,
    key_file: PathBuf,
    dir: PathBuf,
}

impl OcspResponder {
    /// Starts answering for `ca`'s certificates.
    pub async fn start(ca: &TestCa) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let signer = Arc::new(Signer {
            ca_file: ca.ca_file()?,
            key_file: ca.key_file()?,
            dir: temp_dir("ocsp-responder")?,
        });
        let answer = Arc::new(Mutex::new(Answer::Good));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (answer, requests) = (answer.clone(), requests.clone());
            async move {
                let mut n = 0u64;
                while let Ok((mut tcp, _)) = listener.accept().await {
                    n += 1;
                    requests.fetch_add(1, Ordering::SeqCst);
                    let how = answer.lock().map(|a| a.clone()).unwrap_or(Answer::Fail);
                    let signer = signer.clone();
                    tokio::spawn(async move {
                        let reply = match respond(&mut tcp, &signer, &how, n).await {
                            Ok(der) => {
                                let mut head = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                    der.len()
                                )
                                .into_bytes();
                                head.extend(der);
                                head
                            }
                            Err(_) => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                        };
                        let _ = tcp.write_all(&reply).await;
                        let _ = tcp.shutdown().await;
                    });
                }
            }
        });
        Ok(Self {
            addr,
            answer,
            requests,
            task,
        })
    }

    /// Its URL, as a certificate's authorityInfoAccess names it.
    pub fn url(&self) -> String {
        format!("http://{}/ocsp", self.addr)
    }

    /// Answers `answer` from now on.
    pub fn answer(&self, answer: Answer) {
        if let Ok(mut a) = self.answer.lock() {
            *a = answer;
        }
    }

    /// Requests taken so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// [`Answer::SignedBy`] of `cert`.
    pub fn signed_by(cert: &Issued) -> Answer {
        Answer::SignedBy {
            cert_file: cert.cert_file.clone(),
            key_file: cert.key_file.clone(),
        }
    }
}

/// Reads a GET for an OCSP request from `tcp` and answers it as `how` says: the DER.
async fn respond(
    tcp: &mut tokio::net::TcpStream,
    signer: &Signer,
    how: &Answer,
    n: u64,
) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tcp.read(&mut buf).await?;
        ensure!(read > 0, "closed before the request's end");
        head.extend_from_slice(&buf[..read]);
    }
    let head = String::from_utf8(head)?;
    let path = head
        .strip_prefix("GET /ocsp/")
        .and_then(|rest| rest.split(' ').next())
        .context("not a GET of /ocsp/…")?;
    let encoded = path
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    let request = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    let (status, cert_file, key_file) = match how {
        Answer::Fail => bail!("told to fail"),
        Answer::Good => ("V", &signer.ca_file, &signer.key_file),
        Answer::Revoked => ("R", &signer.ca_file, &signer.key_file),
        Answer::SignedBy {
            cert_file,
            key_file,
        } => ("V", cert_file, key_file),
    };
    let req_file = signer.dir.join(format!("{n}.req"));
    let resp_file = signer.dir.join(format!("{n}.resp"));
    let index = signer.dir.join(format!("{n}.index"));
    std::fs::write(&req_file, request)?;
    // openssl answers by serial number: the one asked about, read from the request.
    let text = tokio::process::Command::new("openssl")
        .args(["ocsp", "-reqin"])
        .arg(&req_file)
        .arg("-req_text")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&text.stdout);
    let serial = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial Number: "))
        .context("no serial number in the request")?;
    let revoked_at = if status == "R" { "250601000000Z" } else { "" };
    std::fs::write(
        &index,
        format!("{status}\t491231235959Z\t{revoked_at}\t{serial}\tunknown\t/CN=test\n"),
    )?;
    let out = tokio::process::Command::new("openssl")
        .arg("ocsp")
        .arg("-index")
        .arg(&index)
        .arg("-CA")
        .arg(&signer.ca_file)
        .arg("-rsigner")
        .arg(cert_file)
        .arg("-rkey")
        .arg(key_file)
        .arg("-reqin")
        .arg(&req_file)
        .args(["-ndays", "1", "-respout"])
        .arg(&resp_file)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "openssl ocsp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::fs::read(&resp_file)?)
}
