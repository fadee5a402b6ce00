//! The loop of one open load connection: read, check, generate, write, in one task.
//!
//! Each pass reads whatever has arrived and handles every complete frame in it, appends
//! the messages that became due (closed loop: refill to K in flight; open loop:
//! everything whose intended time has passed) to one write buffer, and writes that buffer
//! with a single call per burst followed by a flush: one TLS record and one syscall for
//! many messages. Reads, writes, the phase signal and one timer are awaited together;
//! each of those operations is cancel-safe, so nothing is lost when another one wins.
//!
//! A session outlives its stream when the run reconnects: [`Session::drive`] returns when
//! a stream ends, [`Session::server_close`] says whether the server ended it, and
//! [`Session::reset_stream`] prepares the session for the next stream.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::conn::{describe_close, is_push, End, Phase, Plan, Shared};
use crate::track::Tracker;
use crate::wire::{self, opcode, MaskGen};

/// Bytes of unsent data above which an open-loop connection stops generating (it catches
/// up later with the original intended times, so the stall shows in the latencies).
const MAX_BACKLOG: usize = 1 << 20;
/// Round-trip samples buffered per connection before they go into the shared histograms.
const SAMPLE_BATCH: usize = 256;

/// Sending state of a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Waiting for the run to start (answering pings, counting pushes).
    Idle,
    /// Generating messages.
    Sending,
    /// No more messages; waiting for outstanding (and overtaken) echoes until the deadline.
    Draining(Instant),
    /// Close sent; waiting for the server's until the deadline.
    Closing(Instant),
}

/// The per-connection loop's state.
pub(crate) struct Session<'a> {
    shared: &'a Shared,
    plan: Plan,
    phase: watch::Receiver<Phase>,
    /// The run's phase sender is gone: no phase change will come.
    phase_gone: bool,
    state: State,
    /// What was sent and what came back: integrity errors and round-trip times.
    pub(crate) tracker: Tracker,
    /// Masking keys for the frames we send (client frames must be masked).
    masks: MaskGen,
    /// Open loop: ns between intended sends (0: closed loop).
    interval_ns: u64,
    /// Open loop: intended time of the next message, ns since the epoch.
    next_due_ns: u64,
    /// Bytes to write; `out[written..]` is still unsent.
    out: Vec<u8>,
    written: usize,
    /// Everything was handed to the stream, but it may still hold bytes (TLS).
    need_flush: bool,
    /// Payload of a fragmented message being reassembled, and its opcode.
    fragments: Vec<u8>,
    fragment_opcode: u8,
    /// Round-trip times (µs) not yet moved into the shared histograms.
    pub(crate) samples: Vec<u64>,
    /// Valid echoes received.
    pub(crate) echoed: u64,
    /// Backend pushes received (recognised and ignored).
    pub(crate) pushes: u64,
    /// Counts already published to the live counters.
    published_sent: u64,
    published_echoed: u64,
    /// Set when the server ended the last stream before we closed it: the close code
    /// (`1001`), `eof` or `reset`/`io error`. Taken by [`Session::take_server_close`].
    server_close: Option<String>,
}

/// What the connection's loop waits for.
enum Event {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Phase(bool),
    Timer,
}

impl<'a> Session<'a> {
    pub(crate) fn new(shared: &'a Shared, plan: Plan, phase: watch::Receiver<Phase>) -> Self {
        Self {
            shared,
            plan,
            phase,
            phase_gone: false,
            state: State::Idle,
            tracker: Tracker::new(plan.id, shared.size),
            masks: MaskGen::new(),
            interval_ns: 0,
            next_due_ns: 0,
            out: Vec::with_capacity((shared.size + 14) * shared.inflight.clamp(1, 64)),
            written: 0,
            need_flush: false,
            fragments: Vec::new(),
            fragment_opcode: opcode::BINARY,
            samples: Vec::with_capacity(SAMPLE_BATCH),
            echoed: 0,
            pushes: 0,
            published_sent: 0,
            published_echoed: 0,
            server_close: None,
        }
    }

    /// How the server ended the last stream, if it did (a close frame's code, `eof`,
    /// `reset`, `io error`); `None` when we ended it.
    pub(crate) fn take_server_close(&mut self) -> Option<String> {
        self.server_close.take()
    }

    /// Whether the session still has work for a new stream: the run has not stopped and
    /// this session has not started draining or closing.
    pub(crate) fn wants_stream(&self) -> bool {
        matches!(self.state, State::Idle | State::Sending) && !self.phase.borrow().stopped()
    }

    /// The phase receiver, to wait on while reconnecting.
    pub(crate) fn phase_mut(&mut self) -> &mut watch::Receiver<Phase> {
        &mut self.phase
    }

    /// Forgets the last stream: unanswered messages are lost at close (returned), unsent
    /// bytes are dropped, and an open loop resumes from now (messages due while there was
    /// no stream are not sent, so they show in neither the latencies nor the counts).
    pub(crate) fn reset_stream(&mut self) -> u64 {
        let lost = self.tracker.lose_at_close();
        self.out.clear();
        self.written = 0;
        self.need_flush = false;
        self.fragments.clear();
        self.next_due_ns = self.next_due_ns.max(self.now_ns());
        lost
    }

    fn now_ns(&self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }

    fn epoch_plus(&self, ns: u64) -> Instant {
        self.shared.epoch + Duration::from_nanos(ns)
    }

    /// Runs the connection until it closes; returns how it ended.
    pub(crate) async fn drive<S>(&mut self, stream: S) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let max_frame = self.shared.size.max(1 << 20);
        let mut rbuf = BytesMut::with_capacity(4096.max(self.shared.size + 14));
        let timer =
            tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::pin!(timer);
        let mut timer_at: Option<Instant> = None;
        // A stream that starts mid-run (a reconnect) resumes an open loop from now: the
        // messages due while there was no stream are not sent (see `reset_stream`).
        self.next_due_ns = self.next_due_ns.max(self.now_ns());
        self.apply_phase();

        loop {
            self.generate();
            if let State::Draining(_) = self.state {
                // Overtaken messages too: their echo may still come, within the drain.
                if self.tracker.awaited() == 0 {
                    self.start_close(1000, b"done");
                }
            }
            // Re-arm only for an earlier deadline: a timer that fires early just finds
            // nothing to do and is re-armed, which costs less than a reset per burst.
            match (self.next_deadline(), timer_at) {
                (Some(d), Some(t)) if d >= t => {}
                (Some(d), _) => {
                    timer.as_mut().reset(d.into());
                    timer_at = Some(d);
                }
                (None, _) => timer_at = None,
            }
            if rbuf.capacity() - rbuf.len() < 4096 {
                rbuf.reserve(4096);
            }
            let pending = &self.out[self.written..];
            let want_write = !pending.is_empty() || self.need_flush;
            let event = tokio::select! {
                biased;
                r = rd.read_buf(&mut rbuf) => Event::Read(r),
                w = write_or_flush(&mut wr, pending), if want_write => Event::Wrote(w),
                c = self.phase.changed(), if !self.phase_gone => Event::Phase(c.is_ok()),
                () = &mut timer, if timer_at.is_some() => Event::Timer,
            };
            match event {
                Event::Read(Ok(0)) => {
                    return match self.state {
                        State::Closing(_) => End::Clean,
                        _ => {
                            self.server_close = Some("eof".to_owned());
                            End::Dropped("connection closed without a close frame".to_owned())
                        }
                    };
                }
                Event::Read(Ok(_)) => {
                    if let Some(end) = self.on_bytes(&mut rbuf, max_frame) {
                        // Best effort, bounded: get our close reply out before leaving.
                        let rest = &self.out[self.written..];
                        let _ = tokio::time::timeout(self.shared.close_timeout, async {
                            wr.write_all(rest).await?;
                            wr.flush().await
                        })
                        .await;
                        return end;
                    }
                    self.publish();
                }
                Event::Read(Err(e)) => {
                    self.server_close = Some(io_close_label(&e));
                    return End::Dropped(format!("read: {e}"));
                }
                Event::Wrote(Ok(n)) => self.on_written(n),
                Event::Wrote(Err(e)) => {
                    self.server_close = Some(io_close_label(&e));
                    return End::Dropped(format!("write: {e}"));
                }
                Event::Phase(alive) => {
                    if alive {
                        self.apply_phase();
                        if *self.phase.borrow() == Phase::Abandon {
                            return End::Dropped(crate::conn::ABANDONED.to_owned());
                        }
                    } else {
                        self.phase_gone = true;
                        self.stop_sending();
                    }
                }
                Event::Timer => {
                    timer_at = None;
                    if let Some(end) = self.on_timer() {
                        return end;
                    }
                }
            }
        }
    }

    /// Adopts the current phase.
    fn apply_phase(&mut self) {
        let phase = *self.phase.borrow_and_update();
        match (phase, self.state) {
            (Phase::Run { interval_ns }, State::Idle) => {
                self.state = State::Sending;
                self.interval_ns = interval_ns;
                if interval_ns > 0 {
                    // Spread the connections' schedules over one interval (golden-ratio
                    // sequence), so they do not all send at the same instant.
                    let frac = (u64::from(self.plan.id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11)
                        as f64
                        / (1u64 << 53) as f64;
                    self.next_due_ns = self.now_ns() + (interval_ns as f64 * frac) as u64;
                }
            }
            (Phase::Stop | Phase::Abandon, _) => self.stop_sending(),
            _ => {}
        }
    }

    fn stop_sending(&mut self) {
        if matches!(self.state, State::Idle | State::Sending) {
            self.state = State::Draining(Instant::now() + self.shared.drain_timeout);
        }
    }

    /// Appends the messages now due to the write buffer.
    fn generate(&mut self) {
        if self.state != State::Sending {
            return;
        }
        let size = self.shared.size;
        if self.interval_ns == 0 {
            let k = self.shared.inflight.max(1);
            if self.tracker.in_flight() >= k {
                return;
            }
            let now = self.now_ns();
            while self.tracker.in_flight() < k {
                let stamp = self.tracker.next_stamp(now);
                wire::put_message(&mut self.out, size, stamp, self.masks.next_key());
            }
        } else {
            let now = self.now_ns();
            while self.next_due_ns <= now && self.out.len() - self.written < MAX_BACKLOG {
                let stamp = self.tracker.next_stamp(self.next_due_ns);
                wire::put_message(&mut self.out, size, stamp, self.masks.next_key());
                self.next_due_ns += self.interval_ns;
            }
        }
    }

    /// The earliest moment the loop must wake up without I/O.
    fn next_deadline(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if self.state == State::Sending
            && self.interval_ns > 0
            && self.out.len() - self.written < MAX_BACKLOG
        {
            consider(self.epoch_plus(self.next_due_ns));
        }
        if let Some(oldest) = self.tracker.oldest_ns() {
            consider(self.epoch_plus(oldest) + self.shared.echo_timeout);
        }
        match self.state {
            State::Draining(d) | State::Closing(d) => consider(d),
            State::Idle | State::Sending => {}
        }
        at
    }

    fn on_timer(&mut self) -> Option<End> {
        let now = Instant::now();
        let timeout_ns = self.shared.echo_timeout.as_nanos() as u64;
        self.tracker
            .expire(self.now_ns().saturating_sub(timeout_ns));
        match self.state {
            State::Draining(d) if now >= d => self.start_close(1000, b"done"),
            State::Closing(d) if now >= d => {
                return Some(End::Dropped(
                    "no close frame from the server in time".to_owned(),
                ))
            }
            _ => {}
        }
        None
    }

    fn start_close(&mut self, code: u16, reason: &[u8]) {
        let mut payload = [0u8; 125];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        let n = reason.len().min(123);
        payload[2..2 + n].copy_from_slice(&reason[..n]);
        wire::put_control(
            &mut self.out,
            opcode::CLOSE,
            &payload[..2 + n],
            self.masks.next_key(),
        );
        self.state = State::Closing(Instant::now() + self.shared.close_timeout);
    }

    fn on_written(&mut self, n: usize) {
        if self.written == self.out.len() {
            // That was a flush.
            self.need_flush = false;
            return;
        }
        self.written += n;
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            self.need_flush = true;
        }
    }

    /// Handles every complete frame in `rbuf`; `Some` when the connection is over.
    fn on_bytes(&mut self, rbuf: &mut BytesMut, max_frame: usize) -> Option<End> {
        let now_ns = self.now_ns();
        loop {
            let head = match wire::parse_head(rbuf, max_frame) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.start_close(1002, b"protocol error");
                    return Some(End::Dropped(format!("bad frame from the server: {e}")));
                }
            };
            let total = head.head_len + head.payload_len;
            if rbuf.len() < total {
                rbuf.reserve(total - rbuf.len());
                break;
            }
            let payload = &mut rbuf[head.head_len..total];
            if let Some(mask) = head.mask {
                fastwebsockets::unmask(payload, mask);
            }
            let end = self.on_frame(head.fin, head.opcode, payload, now_ns);
            rbuf.advance(total);
            if end.is_some() {
                return end;
            }
        }
        if rbuf.is_empty() {
            // Reuse the allocation from its start.
            rbuf.clear();
        }
        None
    }

    fn on_frame(&mut self, fin: bool, op: u8, payload: &[u8], now_ns: u64) -> Option<End> {
        match op {
            opcode::BINARY | opcode::TEXT if fin => self.on_message(op, payload, now_ns),
            opcode::BINARY | opcode::TEXT => {
                self.fragment_opcode = op;
                self.fragments.clear();
                self.fragments.extend_from_slice(payload);
            }
            opcode::CONTINUATION => {
                if self.fragments.len() + payload.len() > self.shared.size.max(1 << 20) {
                    self.start_close(1009, b"message too big");
                    return Some(End::Dropped(
                        "fragmented message over the size limit".to_owned(),
                    ));
                }
                self.fragments.extend_from_slice(payload);
                if fin {
                    let message = std::mem::take(&mut self.fragments);
                    self.on_message(self.fragment_opcode, &message, now_ns);
                    self.fragments = message;
                    self.fragments.clear();
                }
            }
            opcode::PING => {
                wire::put_control(&mut self.out, opcode::PONG, payload, self.masks.next_key());
            }
            opcode::CLOSE => {
                return Some(match self.state {
                    State::Closing(_) => End::Clean,
                    _ => {
                        let (code, reason) = describe_close(payload);
                        self.server_close = Some(code.to_string());
                        // Echo the code back, as RFC 6455 §5.5.1 asks.
                        wire::put_control(
                            &mut self.out,
                            opcode::CLOSE,
                            &payload[..payload.len().min(2)],
                            self.masks.next_key(),
                        );
                        End::Dropped(
                            format!("closed by the server: {code} {reason}")
                                .trim_end()
                                .to_owned(),
                        )
                    }
                });
            }
            _ => {} // Pong: nothing to do.
        }
        None
    }

    fn on_message(&mut self, op: u8, payload: &[u8], now_ns: u64) {
        if op == opcode::TEXT {
            if is_push(payload) {
                self.pushes += 1;
            } else {
                self.tracker.errors.unexpected += 1;
            }
            return;
        }
        if let Some(rtt_ns) = self.tracker.on_echo(payload, now_ns) {
            self.echoed += 1;
            self.samples.push(rtt_ns / 1000);
            if self.samples.len() >= SAMPLE_BATCH {
                self.shared
                    .recorder
                    .record_rtts(self.plan.id, self.plan.backend, &self.samples);
                self.samples.clear();
            }
        }
    }

    /// Moves the counts since the last call into the live counters.
    fn publish(&mut self) {
        let live = self.shared.live.backend(self.plan.backend);
        let sent = self.tracker.sent();
        if sent != self.published_sent {
            live.sent
                .fetch_add(sent - self.published_sent, Ordering::Relaxed);
            self.published_sent = sent;
        }
        if self.echoed != self.published_echoed {
            live.echoed
                .fetch_add(self.echoed - self.published_echoed, Ordering::Relaxed);
            self.published_echoed = self.echoed;
        }
    }
}

/// The label of a stream the server ended with an I/O error.
fn io_close_label(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            "reset".to_owned()
        }
        ErrorKind::UnexpectedEof => "eof".to_owned(),
        _ => "io error".to_owned(),
    }
}

/// Writes some of `buf`, or flushes when it is empty; cancel-safe either way.
async fn write_or_flush<W: AsyncWrite + Unpin>(wr: &mut W, buf: &[u8]) -> std::io::Result<usize> {
    if buf.is_empty() {
        wr.flush().await.map(|()| 0)
    } else {
        match wr.write(buf).await? {
            0 => Err(std::io::ErrorKind::WriteZero.into()),
            n => Ok(n),
        }
    }
}
