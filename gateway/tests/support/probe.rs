//! A probe backend for tests: a real WebSocket server on port 0 that records the
//! handshake it receives and the frames after it, and can be told to misbehave.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the probe answers upgrades.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Accept; choose this subprotocol if given; echo data; on a text frame
    /// `close:<code>:<reason>` send that close.
    Accept { protocol: Option<String> },
    /// Answer with this HTTP status instead of 101.
    Refuse(u16),
    /// Accept TCP and never answer.
    Hang,
    /// Accept, report the first raw bytes received after the upgrade, then send
    /// `reply` as raw bytes.
    Raw { reply: Vec<u8> },
}

/// What the probe saw.
#[derive(Debug)]
pub enum Event {
    /// Request headers of an upgrade, lower-cased names.
    Handshake(Vec<(String, String)>),
    /// A frame received after the upgrade (close included).
    Frame(OpCode, Vec<u8>),
    /// The connection ended.
    Ended,
    /// Raw bytes received after the upgrade (Mode::Raw).
    Raw(Vec<u8>),
}

/// A running probe.
pub struct Probe {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    /// Starts a probe on 127.0.0.1:0.
    pub async fn start(mode: Mode) -> anyhow::Result<Probe> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, events) = mpsc::unbounded_channel();
        let held = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (mode, tx, held) = (mode.clone(), tx.clone(), held.clone());
                tokio::spawn(async move {
                    if matches!(mode, Mode::Hang) {
                        held.lock().map(|mut h| h.push(tcp)).ok();
                        return;
                    }
                    let svc = service_fn(move |req| answer(req, mode.clone(), tx.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Probe { addr, events, task })
    }

    /// The probe's URL for a backend table.
    pub fn url(&self) -> String {
        format!("ws://{}/probe", self.addr)
    }

    /// Next event within the deadline.
    pub async fn next(&mut self) -> anyhow::Result<Event> {
        tokio::time::timeout(super::DEADLINE, self.events.recv())
            .await
            .map_err(|_| anyhow::anyhow!("probe saw nothing before the deadline"))?
            .ok_or_else(|| anyhow::anyhow!("probe stopped"))
    }

    /// Next received frame, skipping other events.
    pub async fn next_frame(&mut self) -> anyhow::Result<(OpCode, Vec<u8>)> {
        loop {
            if let Event::Frame(op, data) = self.next().await? {
                return Ok((op, data));
            }
        }
    }
}

async fn answer(
    mut req: Request<hyper::body::Incoming>,
    mode: Mode,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let _ = tx.send(Event::Handshake(headers));
    let protocol = match mode {
        Mode::Refuse(status) => {
            let mut r = Response::new(Empty::new());
            *r.status_mut() =
                hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
            return Ok(r);
        }
        Mode::Accept { protocol } => protocol,
        Mode::Hang => None,
        Mode::Raw { reply } => {
            let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return Ok(Response::new(Empty::new()));
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(ws) = upgrade.await else { return };
                let mut io = ws.into_inner();
                let mut buf = vec![0u8; 4096];
                if let Ok(n) = io.read(&mut buf).await {
                    let _ = tx.send(Event::Raw(buf[..n].to_vec()));
                }
                let _ = io.write_all(&reply).await;
                let _ = io.flush().await;
                let _ = io.read(&mut buf).await;
            });
            return Ok(response);
        }
    };
    let Ok((mut response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return Ok(r);
    };
    if let Some(p) = protocol {
        if let Ok(v) = p.parse() {
            response.headers_mut().insert("sec-websocket-protocol", v);
        }
    }
    tokio::spawn(async move {
        let Ok(mut ws) = upgrade.await else { return };
        ws.set_auto_close(false);
        ws.set_auto_pong(true);
        while let Ok(frame) = ws.read_frame().await {
            let (op, data) = (frame.opcode, frame.payload.to_vec());
            let _ = tx.send(Event::Frame(op, data.clone()));
            match op {
                OpCode::Close => {
                    let _ = ws.write_frame(Frame::close_raw(Payload::Owned(data))).await;
                    break;
                }
                OpCode::Text if data.starts_with(b"close:") => {
                    let text = String::from_utf8_lossy(&data[6..]).into_owned();
                    let (code, reason) = text.split_once(':').unwrap_or((&text, ""));
                    let code: u16 = code.parse().unwrap_or(1000);
                    let _ = ws.write_frame(Frame::close(code, reason.as_bytes())).await;
                }
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    let _ = ws
                        .write_frame(Frame::new(frame.fin, op, None, Payload::Owned(data)))
                        .await;
                }
                _ => {}
            }
        }
        let _ = tx.send(Event::Ended);
    });
    Ok(response)
}
