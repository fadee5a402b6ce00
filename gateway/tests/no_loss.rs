//! No loss: many connections send sequence-numbered messages of random sizes through the
//! gateway at once while, at random points, clients vanish (FIN or RST), backends close
//! sessions, and one backend dies. Every connection that lives gets every echo exactly
//! once and in order; every connection whose backend side ended gets a close frame after
//! an in-order run of echoes (all of them when the backend closed politely).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use loadgen::client::{Connector, WsStream};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::probe::{Mode, Probe};
use support::*;

/// Messages allowed in flight per connection.
const WINDOW: usize = 16;
/// Echoes a doomed connection gets before its backend is killed.
const BEFORE_KILL: usize = 20;

/// What happens to a connection.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Sends everything, gets every echo, closes with 1000.
    Lives,
    /// The client vanishes after sending `after` messages; with RST if `reset`.
    Vanishes { after: usize, reset: bool },
    /// After `after` messages the backend closes with 4000 "done".
    BackendCloses { after: usize },
    /// Its backend is killed mid-stream.
    BackendDies,
}

/// Message `seq` of connection `conn`: both numbers, then bytes derived from them.
fn payload(conn: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(8));
    p.extend_from_slice(&conn.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let mut x = conn.wrapping_mul(0x9e37_79b9) ^ seq;
    while p.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p.push(x as u8);
    }
    p
}

/// How one connection ended, for the checks.
#[derive(Debug)]
struct Outcome {
    fate: Fate,
    sent: usize,
    echoed: usize,
    close: Option<(u16, String)>,
}

/// One connection's sender and checker: keeps up to WINDOW messages in flight, checks
/// every echo against the next expected message.
struct Conn {
    id: u32,
    ws: WebSocket<WsStream>,
    sizes: Vec<usize>,
    sent: usize,
    echoed: usize,
}

impl Conn {
    /// Fills the window up to `limit` messages sent in all.
    async fn fill(&mut self, limit: usize) -> Result<()> {
        let mut wrote = false;
        while self.sent < limit && self.sent - self.echoed < WINDOW {
            let len = self.sizes[self.sent % self.sizes.len()];
            let p = payload(self.id, self.sent as u32, len);
            self.ws
                .write_frame(Frame::binary(Payload::Owned(p)))
                .await?;
            self.sent += 1;
            wrote = true;
        }
        if wrote {
            self.ws.flush().await?;
        }
        Ok(())
    }

    /// Reads the next frame: `Ok(None)` for a checked echo, `Ok(Some(close))` at a close.
    async fn receive(&mut self) -> Result<Option<(u16, String)>> {
        loop {
            let f = next_frame(&mut self.ws).await?;
            match f.opcode {
                OpCode::Close => return Ok(Some(close_of(&f)?)),
                OpCode::Binary => {
                    let len = self.sizes[self.echoed % self.sizes.len()];
                    let want = payload(self.id, self.echoed as u32, len);
                    if f.payload[..] != want[..] {
                        let head = f.payload.get(..8).map(<[u8]>::to_vec);
                        bail!(
                            "conn {}: echo {} wrong (head {head:?}, {} bytes)",
                            self.id,
                            self.echoed,
                            f.payload.len()
                        );
                    }
                    self.echoed += 1;
                    return Ok(None);
                }
                _ if is_push(&f) => {}
                other => bail!("conn {}: unexpected {other:?}", self.id),
            }
        }
    }
}

async fn run_conn(
    connector: Arc<Connector>,
    id: u32,
    fate: Fate,
    messages: usize,
    sizes: Vec<usize>,
    ready: Arc<AtomicUsize>,
) -> Result<Outcome> {
    let mut ws = connector.connect().await?.ws;
    ws.set_auto_close(false);
    let mut c = Conn {
        id,
        ws,
        sizes,
        sent: 0,
        echoed: 0,
    };
    let close = match fate {
        Fate::Lives => {
            while c.echoed < messages {
                c.fill(messages).await?;
                if let Some(cl) = c.receive().await? {
                    bail!("conn {id}: closed {cl:?} after {} echoes", c.echoed);
                }
            }
            Some((close_cleanly(&mut c.ws).await?, String::new()))
        }
        Fate::Vanishes { after, reset } => {
            while c.sent < after {
                c.fill(after).await?;
                if let Some(cl) = c.receive().await? {
                    bail!("conn {id}: closed {cl:?} before vanishing");
                }
            }
            let stream = c.ws.into_inner();
            if reset {
                stream.get_ref().tcp().set_zero_linger()?;
            }
            drop(stream);
            return Ok(Outcome {
                fate,
                sent: after,
                echoed: c.echoed,
                close: None,
            });
        }
        Fate::BackendCloses { after } => {
            // The close request follows the last message at once, echoes outstanding.
            loop {
                c.fill(after).await?;
                if c.sent == after {
                    break;
                }
                if let Some(cl) = c.receive().await? {
                    bail!("conn {id}: closed {cl:?} after {} echoes", c.echoed);
                }
            }
            send(
                &mut c.ws,
                Frame::text(Payload::Borrowed(b"close:4000:done")),
            )
            .await?;
            let close = loop {
                if let Some(cl) = c.receive().await? {
                    break Some(cl);
                }
            };
            // The gateway passed the backend's close on; answering it ends the session.
            send(&mut c.ws, Frame::close(4000, b"done")).await?;
            close
        }
        Fate::BackendDies => {
            let mut counted = false;
            loop {
                // Once the gateway has closed, writes may fail; the close is still read.
                let _ = c.fill(usize::MAX).await;
                if let Some(cl) = c.receive().await? {
                    break Some(cl);
                }
                if !counted && c.echoed >= BEFORE_KILL {
                    counted = true;
                    ready.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    };
    Ok(Outcome {
        fate,
        sent: c.sent,
        echoed: c.echoed,
        close,
    })
}

async fn no_loss(conns: u32, messages: usize) -> Result<()> {
    let seed: u64 = match std::env::var("NO_LOSS_SEED") {
        Ok(s) => s.parse().context("NO_LOSS_SEED")?,
        Err(_) => rand::random(),
    };
    println!("no_loss: seed {seed} (set NO_LOSS_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);

    let closer = Probe::start(Mode::Accept { protocol: None }).await?;
    let doomed = Probe::start(Mode::Accept { protocol: None }).await?;
    let tb = testbed_with(&[
        ("Backend_CLOSER", closer.url()),
        ("Backend_DOOMED", doomed.url()),
    ])
    .await?;
    let mut connectors = std::collections::HashMap::new();
    for id in [
        "Backend_ABC",
        "Backend_PQR",
        "Backend_XYZ",
        "Backend_CLOSER",
        "Backend_DOOMED",
    ] {
        connectors.insert(
            id,
            Arc::new(Connector::new(&tb.connect_options(id)?).await?),
        );
    }

    // Fixed shares of each fate, in random order, at random points.
    let mut plan: Vec<u8> = (0..conns).map(|i| (i % 20) as u8).collect();
    plan.shuffle(&mut rng);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut doomed_count = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for (id, share) in (0..conns).zip(plan) {
        let echo_backend = ["Backend_ABC", "Backend_PQR", "Backend_XYZ"][id as usize % 3];
        let (fate, backend) = match share {
            0..=9 => (Fate::Lives, echo_backend),
            10..=14 => {
                let after = rng.gen_range(1..messages);
                let reset = rng.gen_bool(0.5);
                (Fate::Vanishes { after, reset }, echo_backend)
            }
            15..=17 => {
                let after = rng.gen_range(1..messages);
                (Fate::BackendCloses { after }, "Backend_CLOSER")
            }
            _ => {
                doomed_count += 1;
                (Fate::BackendDies, "Backend_DOOMED")
            }
        };
        let sizes: Vec<usize> = (0..32).map(|_| rng.gen_range(8..2048)).collect();
        let connector = connectors[backend].clone();
        let ready = ready.clone();
        tasks.spawn(async move {
            run_conn(connector, id, fate, messages, sizes, ready)
                .await
                .with_context(|| format!("conn {id} ({fate:?})"))
        });
    }

    // Kill the doomed backend once every one of its connections is streaming.
    wait_for("doomed connections to stream", DEADLINE, || {
        std::future::ready(Ok(ready.load(Ordering::SeqCst) >= doomed_count))
    })
    .await?;
    drop(doomed);

    let mut tally = std::collections::BTreeMap::<&str, usize>::new();
    let mut echoes = 0;
    while let Some(joined) = tasks.join_next().await {
        let o = joined??;
        echoes += o.echoed;
        match o.fate {
            Fate::Lives => {
                *tally.entry("lived").or_default() += 1;
                ensure!(
                    o.echoed == messages,
                    "a living connection got {} of {messages} echoes",
                    o.echoed
                );
                let close = o.close.clone().map(|c| c.0);
                ensure!(
                    close == Some(1000),
                    "a living connection's close: {:?}",
                    o.close
                );
            }
            Fate::Vanishes { .. } => {
                *tally.entry("vanished").or_default() += 1;
                ensure!(o.echoed <= o.sent);
            }
            Fate::BackendCloses { after } => {
                *tally.entry("backend closed").or_default() += 1;
                ensure!(
                    o.echoed == after,
                    "backend closed after {after}: {} echoes arrived",
                    o.echoed
                );
                ensure!(
                    o.close == Some((4000, "done".into())),
                    "close passed on as {:?}",
                    o.close
                );
            }
            Fate::BackendDies => {
                *tally.entry("backend died").or_default() += 1;
                let code = o.close.as_ref().map(|c| c.0);
                ensure!(
                    code == Some(1011),
                    "backend died: client got close {:?}",
                    o.close
                );
                ensure!(o.echoed >= BEFORE_KILL);
            }
        }
    }
    println!("no_loss: {conns} connections, {echoes} echoes checked; {tally:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surviving_connection_gets_every_message_once_in_order() -> Result<()> {
    no_loss(60, 200).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "large; run with --ignored"]
async fn every_surviving_connection_gets_every_message_once_in_order_at_scale() -> Result<()> {
    no_loss(600, 2000).await
}
