//! A proxied session: both directions of one client/backend pair, and how it ends.
//!
//! Both pumps run in one task. When one ends, the session decides what the other side is
//! told: a passed-on close waits (bounded) for the answering close; a side that vanished
//! or broke the protocol gets the other side a clear close code; a gateway shutdown
//! closes both with 1001. Then both write sides are shut down (TLS close_notify, FIN).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::Role;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::batch::FrameWriter;
use crate::forward::{
    send_close, CloseMsg, Counters, Mailbox, Pump, PumpEnd, PumpLimits, StopWith,
};
use crate::frames::{self, Parsed};
use crate::pair::{Either, Pair};
use crate::reader::{FrameReader, Stop};
use crate::registry::{CloseOrder, Closing};
use crate::ticker::Ticker;

/// Sent to the backend when the client vanishes without a close.
pub const CLIENT_LOST: CloseMsg = CloseMsg {
    code: 1001,
    reason: "client went away",
};
/// Sent to the client when the backend vanishes without a close. 1011 rather than 1014
/// ("bad gateway"): several client libraries (fastwebsockets among them) reject 1014.
pub const BACKEND_LOST: CloseMsg = CloseMsg {
    code: 1011,
    reason: "bad gateway: backend connection lost",
};
/// Sent to the client when the backend, still sending, has taken none of its bytes for
/// 1.5 to 2 × the idle timeout.
pub const BACKEND_STALLED: CloseMsg = CloseMsg {
    code: 1001,
    reason: "backend not reading",
};
/// Sent to the backend when the client, still sending, has taken none of its bytes for
/// 1.5 to 2 × the idle timeout.
pub const CLIENT_STALLED: CloseMsg = CloseMsg {
    code: 1001,
    reason: "client not reading",
};
/// Sent to both sides when the gateway shuts down.
pub const SHUTTING_DOWN: CloseMsg = CloseMsg {
    code: 1001,
    reason: "gateway shutting down",
};
/// Sent to the client when its token expires (`[auth] close_at_expiry`): 1008, policy
/// violation, the code for "the endpoint's policy no longer admits you".
pub const TOKEN_EXPIRED: CloseMsg = CloseMsg {
    code: 1008,
    reason: "token expired",
};
/// Sent to the backend when the client's token expires.
pub const CLIENT_TOKEN_EXPIRED: CloseMsg = CloseMsg {
    code: 1001,
    reason: "client token expired",
};
/// Sent to both sides when a session reaches `[timeouts] max_session`: 1001, going away,
/// which clients take as "reconnect".
pub const SESSION_LIMIT: CloseMsg = CloseMsg {
    code: 1001,
    reason: "session time limit",
};

/// Sent to the backend when an operator closes the session (`POST /sessions/close`).
pub const CLIENT_CLOSED_BY_OPERATOR: CloseMsg = CloseMsg {
    code: 1001,
    reason: "client closed by the gateway operator",
};

/// Why a session has a deadline of its own, or ends as one would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineKind {
    /// The client's token expires then (`[auth] close_at_expiry`).
    TokenExpiry,
    /// `[timeouts] max_session`.
    SessionLimit,
    /// An operator closed it (`POST /sessions/close`), the client to hear this code.
    Operator(u16),
}

impl DeadlineKind {
    /// (to the client, to the backend) when the deadline comes.
    fn closes(self) -> (CloseMsg, CloseMsg) {
        match self {
            DeadlineKind::TokenExpiry => (TOKEN_EXPIRED, CLIENT_TOKEN_EXPIRED),
            DeadlineKind::SessionLimit => (SESSION_LIMIT, SESSION_LIMIT),
            DeadlineKind::Operator(code) => (
                CloseMsg {
                    code,
                    reason: "closed by the gateway operator",
                },
                CLIENT_CLOSED_BY_OPERATOR,
            ),
        }
    }
}

/// A session's deadline from `now`: its token's expiry `token_left` from now (with
/// `[auth] close_at_expiry`), or `share` (0.9 to 1.0, drawn per session) of `max_session`
/// (zero: none), whichever comes first. An expiry too far off for the clock to hold is
/// as good as none.
pub fn deadline(
    now: tokio::time::Instant,
    token_left: Option<Duration>,
    max_session: Duration,
    share: f64,
) -> Option<(tokio::time::Instant, DeadlineKind)> {
    let expiry =
        token_left.and_then(|left| Some((now.checked_add(left)?, DeadlineKind::TokenExpiry)));
    let limit = (!max_session.is_zero()).then(|| {
        let limit = max_session.mul_f64(share.clamp(0.9, 1.0));
        (now + limit, DeadlineKind::SessionLimit)
    });
    match (expiry, limit) {
        (Some(e), Some(l)) => Some(if e.0 <= l.0 { e } else { l }),
        (e, l) => e.or(l),
    }
}

/// Bytes gathered per direction before a write is forced out.
const BATCH_LIMIT: usize = 64 * 1024;

/// Settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Largest message accepted from either side, counted across fragments.
    pub max_message_size: usize,
    /// Largest single frame payload accepted from either side.
    pub max_frame_size: usize,
    /// Ping a side silent this long; close it after a second such period.
    pub keepalive: Option<Duration>,
    /// How long a side gets to answer a close.
    pub close_timeout: Duration,
    /// When the session must end, and why (the token's expiry with
    /// `[auth] close_at_expiry`, or `[timeouts] max_session`); `None`: no deadline.
    pub ends_at: Option<(tokio::time::Instant, DeadlineKind)>,
    /// `permessage-deflate` is in force: a message's first frame may carry RSV1
    /// (compressed), and a compressed text message is not checked for UTF-8 (its bytes
    /// are deflate's; the endpoints check the text they inflate).
    pub permessage_deflate: bool,
}

impl SessionOptions {
    /// The options a config asks for: size limits, close timeout, and keepalive at half
    /// the idle timeout (none when it is zero).
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::from_parts(&config.limits, &config.timeouts)
    }

    /// As [`SessionOptions::from_config`], from the two sections that matter.
    pub fn from_parts(
        limits: &crate::config::LimitsConfig,
        timeouts: &crate::config::TimeoutsConfig,
    ) -> Self {
        Self {
            max_message_size: limits.max_message_size,
            max_frame_size: limits.max_frame_size,
            close_timeout: timeouts.close,
            keepalive: Some(timeouts.idle / 2).filter(|d| !d.is_zero()),
            ends_at: None,
            permessage_deflate: false,
        }
    }
}

/// Which way frames flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend.
    Upstream,
    /// Backend to client.
    Downstream,
}

/// How a session went, for the one log line at its end and for metrics.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// The direction that ended first, and how.
    pub first: (Direction, PumpEnd),
    /// How the other direction ended (`None`: it did not end within the close timeout).
    pub second: Option<PumpEnd>,
    /// Client to backend tallies.
    pub upstream: Counters,
    /// Backend to client tallies.
    pub downstream: Counters,
    /// The gateway's own close frames that went out: to the client, to the backend.
    pub closes_sent: (Option<u16>, Option<u16>),
    /// Whether a gateway shutdown ended the session.
    pub shutdown: bool,
    /// The session's deadline ended it (the token's expiry or its time limit), or an
    /// operator did.
    pub deadline: Option<DeadlineKind>,
    /// Session duration.
    pub duration: Duration,
}

impl SessionReport {
    /// The close code a side was sent for breaking the protocol or a size limit, and why,
    /// if one was: what an operator needs to tell a masking bug from bad UTF-8 or an
    /// oversized message.
    pub fn violation(&self) -> Option<(u16, &'static str)> {
        [Some(self.first.1), self.second]
            .into_iter()
            .find_map(|end| match end {
                Some(PumpEnd::SourceViolation(code)) => Some((code, violation_reason(code))),
                _ => None,
            })
    }

    /// A short outcome label: `client_closed`, `backend_closed`, `client_lost`,
    /// `backend_lost`, `client_error`, `backend_error`, `client_idle`, `backend_idle`,
    /// `client_stalled`, `backend_stalled`, `shutdown`, `token_expired`, `session_limit`,
    /// `closed_by_operator`.
    pub fn outcome(&self) -> &'static str {
        if self.shutdown {
            return "shutdown";
        }
        match self.deadline {
            Some(DeadlineKind::TokenExpiry) => return "token_expired",
            Some(DeadlineKind::SessionLimit) => return "session_limit",
            Some(DeadlineKind::Operator(_)) => return "closed_by_operator",
            None => {}
        }
        match self.first {
            (Direction::Upstream, PumpEnd::Closed(_)) => "client_closed",
            (Direction::Downstream, PumpEnd::Closed(_)) => "backend_closed",
            (Direction::Upstream, PumpEnd::SourceLost)
            | (Direction::Downstream, PumpEnd::DestLost) => "client_lost",
            (Direction::Downstream, PumpEnd::SourceLost)
            | (Direction::Upstream, PumpEnd::DestLost) => "backend_lost",
            (Direction::Upstream, PumpEnd::SourceIdle) => "client_idle",
            (Direction::Downstream, PumpEnd::SourceIdle) => "backend_idle",
            (Direction::Upstream, PumpEnd::SourceStalled) => "client_stalled",
            (Direction::Downstream, PumpEnd::SourceStalled) => "backend_stalled",
            (Direction::Upstream, _) => "client_error",
            (Direction::Downstream, _) => "backend_error",
        }
    }
}

impl SessionReport {
    /// Close frames the gateway itself sent: (`client` or `backend`, code). Only those
    /// that went out: none toward a side that was gone, or in the middle of a frame.
    pub fn gateway_closes(&self) -> Vec<(&'static str, u16)> {
        let (client, backend) = self.closes_sent;
        [("client", client), ("backend", backend)]
            .into_iter()
            .filter_map(|(to, code)| Some((to, code?)))
            .collect()
    }
}

/// The reason sent with a violation's close code, to the side that broke the rule.
fn violation_reason(code: u16) -> &'static str {
    match code {
        1007 => "invalid UTF-8 in a text message",
        1009 => "message too big",
        _ => "protocol error",
    }
}

/// One side of a session: its read and write halves, and bytes already read past its
/// handshake.
pub struct Side<R, W> {
    /// Read half.
    pub read: R,
    /// Write half.
    pub write: W,
    /// Bytes read ahead during the handshake.
    pub leftover: Bytes,
}

/// Proxies frames between a client (server role) and a backend (client role) until the
/// session ends, `shutdown` changes or `close_order` comes. `backend_hold` (the backend
/// connection's place in its pool) is dropped with the backend connection, which may be
/// before the session ends.
///
/// Not an `async fn`: one keeps its arguments in its state for the session's whole life,
/// beside what they were turned into (the sides' readers and writers, the limits), and
/// every idle session paid for both. The future built here holds only the latter.
pub fn proxy<CR, CW, BR, BW, H>(
    client: Side<CR, CW>,
    backend: Side<BR, BW>,
    opts: SessionOptions,
    mut shutdown: watch::Receiver<bool>,
    mut close_order: CloseOrder,
    backend_hold: H,
) -> impl Future<Output = SessionReport>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let (mut cread, mut cwrite) = split(client, Role::Server);
    let (mut bread, mut bwrite) = split(backend, Role::Client);
    let limits = PumpLimits {
        max_message_size: opts.max_message_size,
        max_frame_size: opts.max_frame_size,
        keepalive: opts.keepalive,
        permessage_deflate: opts.permessage_deflate,
    };
    let close_timeout = opts.close_timeout;
    // Boxed, so a session without a deadline carries no timer; made here, so the future
    // keeps the timer and the deadline's kind, not the deadline as well (a few bytes that
    // took it past an allocator size class: +0.5 KiB per idle session).
    let mut deadline = opts.ends_at.map(|(at, _)| {
        Box::pin(Ticker::new(
            at.saturating_duration_since(tokio::time::Instant::now()),
        ))
    });
    let deadline_kind = opts.ends_at.map(|(_, kind)| kind);
    async move {
        let started = Instant::now();
        let mut upstream = Counters::default();
        let mut downstream = Counters::default();
        let up_inbox = Mailbox::default();
        let down_inbox = Mailbox::default();
        let mut shut = false;
        let mut ended_by = None;

        let (first, second) = {
            let up = Pump {
                src: &mut cread,
                src_is_client: true,
                dst: &mut bwrite,
                lost: CLIENT_LOST,
                counters: &mut upstream,
                limits,
            }
            .run(&up_inbox, &down_inbox);
            let down = Pump {
                src: &mut bread,
                src_is_client: false,
                dst: &mut cwrite,
                lost: BACKEND_LOST,
                counters: &mut downstream,
                limits,
            }
            .run(&down_inbox, &up_inbox);
            tokio::pin!(up, down);
            // A session that starts after shutdown began (its handshake was under way) goes
            // straight to closing.
            let already_shut = *shutdown.borrow_and_update();
            let first = if already_shut {
                (Direction::Upstream, PumpEnd::Stopped)
            } else {
                let pair = Pair::default();
                tokio::select! {
                    e = std::future::poll_fn(|cx| pair.poll(cx, up.as_mut(), down.as_mut())) => match e {
                        Either::First(e) => (Direction::Upstream, e),
                        Either::Second(e) => (Direction::Downstream, e),
                    },
                    // A dropped sender means no shutdown will ever come: the branch then disables itself.
                    Ok(()) = shutdown_signal(&mut shutdown) => (Direction::Upstream, PumpEnd::Stopped),
                    () = deadline_passed(&mut deadline) => {
                        ended_by = deadline_kind;
                        (Direction::Upstream, PumpEnd::Stopped)
                    }
                    how = &mut close_order => {
                        // A spread shutdown's turn is closed as every session is at shutdown.
                        if let Closing::Operator(code) = how {
                            ended_by = Some(DeadlineKind::Operator(code));
                        }
                        (Direction::Upstream, PumpEnd::Stopped)
                    }
                }
            };
            if let Some(kind) = ended_by {
                // Both sides hear why at once, after what was already on its way to them.
                let (to_client, to_backend) = kind.closes();
                up_inbox.stop(StopWith::Close(to_backend));
                down_inbox.stop(StopWith::Close(to_client));
                let both = async { tokio::join!(&mut up, &mut down) };
                let ends = Box::pin(tokio::time::timeout(close_timeout, both)).await;
                (first, ends.ok().map(|(_, down_end)| down_end))
            } else if first.1 == PumpEnd::Stopped {
                // Gateway shutdown. The backend is closed first (1001), as if the client had
                // left; what it sends before its close answer still reaches the client, and
                // its close answer gets the client a 1001 of our own (whatever the backend
                // answered), as does a backend that does not answer in time.
                shut = true;
                down_inbox.shut_down();
                up_inbox.stop(StopWith::Close(SHUTTING_DOWN));
                // The downstream pump may end (the backend's close answer passed on) while the
                // upstream one is still stuck: a finished pump must not be polled again.
                let mut down_end = None;
                let backend_answered = async {
                    let down_done = async {
                        let end = (&mut down).await;
                        down_end = Some(end);
                    };
                    tokio::join!(&mut up, down_done);
                };
                let answered =
                    Box::pin(tokio::time::timeout(close_timeout, backend_answered)).await;
                if answered.is_err() && down_end.is_none() {
                    down_inbox.stop(StopWith::Close(SHUTTING_DOWN));
                    let _ = Box::pin(tokio::time::timeout(close_timeout, &mut down)).await;
                }
                (first, down_end)
            } else {
                let instruction = match first.1 {
                    // The other side answers the passed-on close in its own time (bounded).
                    PumpEnd::Closed(_) => None,
                    // This pump already told the other side; nothing is left to say.
                    PumpEnd::SourceLost | PumpEnd::Stopped => Some(StopWith::Nothing),
                    // The idle source is told so (its peer already was).
                    PumpEnd::SourceIdle => Some(StopWith::Close(crate::forward::IDLE)),
                    // The misbehaving source hears why.
                    PumpEnd::SourceViolation(code) => Some(StopWith::Close(CloseMsg {
                        code,
                        reason: violation_reason(code),
                    })),
                    // This pump's destination is gone. What that side had sent before it
                    // went (a last message, its close) may still wait in its socket: the
                    // other pump reads on to its source's end, a close passed on or the
                    // connection's end (then it sends its lost-source close).
                    PumpEnd::DestLost => None,
                    // The other pump waits on a side that reads nothing: no close can reach
                    // it (this pump told the other side).
                    PumpEnd::SourceStalled => Some(StopWith::Nothing),
                };
                let (other_tx, upstream_first) = match first.0 {
                    Direction::Upstream => (&down_inbox, true),
                    Direction::Downstream => (&up_inbox, false),
                };
                if let Some(how) = instruction {
                    other_tx.stop(how);
                }
                let mut second = Box::pin(tokio::time::timeout(
                    close_timeout,
                    either(upstream_first, up.as_mut(), down.as_mut()),
                ))
                .await
                .ok();
                if let (None, PumpEnd::Closed(code)) = (second, first.1) {
                    // A close must be answered (RFC 6455 section 5.5.1). The other side did
                    // not answer the one passed on in time, so the gateway answers it,
                    // echoing its code, rather than leaving the closing side a dropped
                    // connection.
                    other_tx.stop(StopWith::Close(CloseMsg {
                        code: code.unwrap_or(1000),
                        reason: if upstream_first {
                            "backend did not answer the close"
                        } else {
                            "client did not answer the close"
                        },
                    }));
                    second = Box::pin(tokio::time::timeout(
                        close_timeout,
                        either(upstream_first, up.as_mut(), down.as_mut()),
                    ))
                    .await
                    .ok();
                }
                if let (None, PumpEnd::DestLost) = (second, first.1) {
                    // The gone side's socket did not end in time either.
                    other_tx.stop(StopWith::LostSource);
                    second = Box::pin(tokio::time::timeout(
                        close_timeout,
                        either(upstream_first, up.as_mut(), down.as_mut()),
                    ))
                    .await
                    .ok();
                }
                (first, second)
            }
        };

        let closes_sent = (cwrite.close_sent(), bwrite.close_sent());
        // Both directions are done with the writers. The client's side ends now, TLS
        // `close_notify` and FIN: toward the client the gateway is the server, which closes
        // the connection first (RFC 6455 section 7.1.1).
        let client_shut = Box::pin(tokio::time::timeout(close_timeout, cwrite.shutdown()))
            .await
            .is_ok_and(|r| r.is_ok());
        let client_end = match first {
            (Direction::Upstream, end) => Some(end),
            (Direction::Downstream, _) => second,
        };
        let backend_end = match first {
            (Direction::Downstream, end) => Some(end),
            (Direction::Upstream, _) => second,
        };
        // The client may still owe the answer to a close the gateway sent it (its own, or
        // the backend's going-away): it is read before the socket is closed. A close answer
        // that reaches a closed socket is answered with a TCP reset, which can cost the
        // client the close frame and the TLS close it has not read yet. Not when the close
        // never went out, nor when the client already had the close timeout to answer one
        // passed on from the backend.
        let gateway_answered_backend = matches!(first, (Direction::Downstream, PumpEnd::Closed(_)))
            && second == Some(PumpEnd::Stopped);
        let linger_client = client_shut
            && !gateway_answered_backend
            && !matches!(client_end, Some(PumpEnd::Closed(_) | PumpEnd::SourceLost));
        // Toward the backend the gateway is the client, which lets the server close the
        // connection first: its FIN is waited for (bounded) before the gateway's own, so
        // the backend, not the gateway, holds the closed connection's TIME_WAIT, and its
        // close answer does not meet a closed socket either.
        // Not when a frame toward it was left unfinished: no close could follow it, and
        // the backend, waiting for the rest of the frame, would never end first.
        let linger_backend = !matches!(
            backend_end,
            Some(PumpEnd::SourceLost | PumpEnd::SourceStalled)
        ) && client_end != Some(PumpEnd::DestLost)
            && !bwrite.mid_frame();
        let backend_side = async move {
            let _ = tokio::time::timeout(close_timeout, async {
                if linger_backend {
                    discard(&mut bread).await;
                }
                let _ = bwrite.shutdown().await;
            })
            .await;
            drop((bread, bwrite, backend_hold));
        };
        let client_side = async {
            if linger_client {
                let _ = tokio::time::timeout(close_timeout, linger(&mut cread, limits)).await;
            }
        };
        Box::pin(async { tokio::join!(backend_side, client_side) }).await;

        SessionReport {
            first,
            second,
            upstream,
            downstream,
            closes_sent,
            shutdown: shut,
            deadline: ended_by,
            duration: started.elapsed(),
        }
    }
}

/// The end of a session whose client left as its 101 went out, before the session began:
/// the backend, already upgraded, hears the client's going away (1001) and is given
/// `close_timeout` to end its side. Reported as a session the client lost.
pub async fn client_left_at_upgrade<B>(backend: B, close_timeout: Duration) -> SessionReport
where
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (read, write) = tokio::io::split(backend);
    let mut read = FrameReader::new(read, &[]);
    let mut write = FrameWriter::new(write, Role::Client, BATCH_LIMIT);
    let _ = tokio::time::timeout(close_timeout, async {
        if send_close(&mut write, CLIENT_LOST).await.is_ok() {
            discard(&mut read).await;
        }
        let _ = write.shutdown().await;
    })
    .await;
    SessionReport {
        first: (Direction::Upstream, PumpEnd::SourceLost),
        second: None,
        upstream: Counters::default(),
        downstream: Counters::default(),
        closes_sent: (None, write.close_sent()),
        shutdown: false,
        deadline: None,
        duration: started.elapsed(),
    }
}

/// The end of the downstream pump if `upstream_first` (the upstream one ended first),
/// else of the upstream one.
async fn either<U, D>(upstream_first: bool, up: Pin<&mut U>, down: Pin<&mut D>) -> PumpEnd
where
    U: Future<Output = PumpEnd>,
    D: Future<Output = PumpEnd>,
{
    if upstream_first {
        down.await
    } else {
        up.await
    }
}

/// Resolves (`Ok`) when the gateway starts shutting down, `Err` if it never will.
///
/// `watch::Receiver::changed` locks the channel's waiter list, one mutex shared by every
/// session, each time it is polled while waiting; a session's future is polled on every
/// burst it forwards. So once the inner future has registered this task's waker, a poll
/// only looks at the channel's version (an atomic load), and polls the inner future
/// again when the version moved or the task's waker is a different one.
async fn shutdown_signal(
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), watch::error::RecvError> {
    let probe = shutdown.clone();
    let changed = shutdown.changed();
    tokio::pin!(changed);
    let mut registered: Option<std::task::Waker> = None;
    std::future::poll_fn(|cx| {
        let same_waker = registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same_waker && matches!(probe.has_changed(), Ok(false)) {
            return std::task::Poll::Pending;
        }
        registered = Some(cx.waker().clone());
        std::future::Future::poll(changed.as_mut(), cx)
    })
    .await
}

/// Reads and drops what `src` sends until it ends (end of stream or an error).
async fn discard<R: AsyncRead + Unpin>(src: &mut FrameReader<R>) {
    let mut all = |_: &mut std::task::Context<'_>, data: &mut [u8]| (data.len(), None);
    while std::future::poll_fn(|cx| src.poll_process(cx, &mut all))
        .await
        .is_ok()
    {}
}

/// Reads and drops what the client still sends, up to its close frame (its answer to the
/// gateway's) or the end of its stream. Where what comes is not a frame (the client broke
/// the protocol, or stopped inside a frame), everything is dropped up to the end. A data
/// frame is dropped as its bytes come, never held whole: up to `max_frame_size` a piece
/// otherwise, for every client the gateway had closed.
async fn linger<R: AsyncRead + Unpin>(src: &mut FrameReader<R>, limits: PumpLimits) {
    // Bytes of the current data frame still to come and be dropped.
    let mut skip = 0usize;
    let mut until_close = |_: &mut std::task::Context<'_>, data: &mut [u8]| {
        let mut used = skip.min(data.len());
        skip -= used;
        loop {
            match frames::parse(
                &data[used..],
                true,
                limits.max_frame_size,
                limits.permessage_deflate,
            ) {
                Parsed::Frame(head) => {
                    used += head.frame_len();
                    if head.opcode == frames::CLOSE {
                        return (used, Some(Stop::Close(None)));
                    }
                }
                Parsed::Incomplete(Some(head)) if !head.is_control() => {
                    skip = head.frame_len() - (data.len() - used);
                    return (data.len(), None);
                }
                Parsed::Incomplete(_) => return (used, None),
                Parsed::Violation(code) => return (used, Some(Stop::Violation(code))),
            }
        }
    };
    loop {
        match std::future::poll_fn(|cx| src.poll_process(cx, &mut until_close)).await {
            Ok(None | Some(Stop::Full)) => {}
            Ok(Some(Stop::Violation(_))) => return discard(src).await,
            Ok(Some(Stop::Close(_))) | Err(_) => return,
        }
    }
}

/// Resolves at the session's deadline; never when it has none.
async fn deadline_passed(deadline: &mut Option<std::pin::Pin<Box<Ticker>>>) {
    match deadline {
        Some(ticker) => ticker.as_mut().tick().await,
        None => std::future::pending().await,
    }
}

fn split<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    side: Side<R, W>,
    role: Role,
) -> (FrameReader<R>, FrameWriter<W>) {
    (
        FrameReader::new(side.read, &side.leftover),
        FrameWriter::new(side.write, role, BATCH_LIMIT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A session between in-memory pipes (`client_gw` and `backend_gw` are the gateway's
    /// ends) that starts after the gateway's shutdown was signalled; close timeout 100 ms.
    /// The sender must outlive the session, or the shutdown branch disables itself.
    fn session_after_shutdown(
        client_gw: DuplexStream,
        backend_gw: DuplexStream,
    ) -> (impl Future<Output = SessionReport>, watch::Sender<bool>) {
        session_after_shutdown_with(client_gw, backend_gw, Duration::from_millis(100))
    }

    /// As [`session_after_shutdown`], with this close timeout.
    fn session_after_shutdown_with(
        client_gw: DuplexStream,
        backend_gw: DuplexStream,
        close_timeout: Duration,
    ) -> (impl Future<Output = SessionReport>, watch::Sender<bool>) {
        let (cr, cw) = tokio::io::split(client_gw);
        let (br, bw) = tokio::io::split(backend_gw);
        let (tx, rx) = watch::channel(true);
        let opts = SessionOptions {
            max_message_size: 1 << 20,
            max_frame_size: 1 << 20,
            close_timeout,
            keepalive: None,
            ends_at: None,
            permessage_deflate: false,
        };
        let client = Side {
            read: cr,
            write: cw,
            leftover: Bytes::new(),
        };
        let backend = Side {
            read: br,
            write: bw,
            leftover: Bytes::new(),
        };
        (
            proxy(client, backend, opts, rx, CloseOrder::never(), ()),
            tx,
        )
    }

    /// A masked binary frame head from a client, for a payload of `len` bytes.
    fn client_frame_head(len: u64) -> Vec<u8> {
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        head
    }

    #[tokio::test]
    async fn a_frame_a_closed_client_still_sends_is_dropped_as_it_comes() -> anyhow::Result<()> {
        let limits = PumpLimits {
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            keepalive: None,
            permessage_deflate: false,
        };
        // Half of an 8 MiB frame, then the client leaves: none of it is held.
        let (mut client, gw) = tokio::io::duplex(64 * 1024);
        let mut src = FrameReader::new(gw, &[]);
        let writer = tokio::spawn(async move {
            client.write_all(&client_frame_head(8 << 20)).await?;
            client.write_all(&vec![0u8; 4 << 20]).await
        });
        linger(&mut src, limits).await;
        writer.await??;
        assert!(src.pending() < 64 * 1024, "{} bytes held", src.pending());

        // The whole frame, then the client's close: the close still ends the wait while
        // the client stays connected.
        let (mut client, gw) = tokio::io::duplex(64 * 1024);
        let mut src = FrameReader::new(gw, &[]);
        let (done, ended) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            client.write_all(&client_frame_head(8 << 20)).await?;
            client.write_all(&vec![0u8; 8 << 20]).await?;
            client
                .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8])
                .await?;
            let _ = ended.await;
            Ok::<_, std::io::Error>(())
        });
        tokio::time::timeout(Duration::from_secs(10), linger(&mut src, limits)).await?;
        let _ = done.send(());
        writer.await??;
        Ok(())
    }

    #[tokio::test]
    async fn shutdown_with_the_backend_answering_while_the_client_side_is_stuck_ends_cleanly() {
        // Found by the session fuzzer: the backend's close answer ended the downstream
        // pump, the upstream one stayed stuck writing its close to a backend that reads
        // nothing, and when the close timeout ran out the finished pump was polled again
        // (a panic: "`async fn` resumed after completion").
        let (client_gw, mut client_peer) = tokio::io::duplex(4096);
        // One byte of room toward the backend: the gateway's close to it cannot go out.
        let (backend_gw, mut backend_peer) = tokio::io::duplex(1);
        let (run, tx) = session_after_shutdown(client_gw, backend_gw);
        // The backend answers the shutdown with a close (1000), and then reads nothing.
        let answer = tokio::spawn(async move {
            let _ = backend_peer.write_all(&[0x88, 0x02, 0x03, 0xE8]).await;
            backend_peer
        });
        let report = tokio::time::timeout(Duration::from_secs(5), run).await;
        let report = report.expect("the session did not end");
        assert!(report.shutdown);
        assert_eq!(
            report.second,
            Some(PumpEnd::Closed(Some(1000))),
            "the backend's answer ended the downstream pump"
        );
        assert_eq!(
            report.downstream.frames, 0,
            "the backend's close answer was not passed on, so it is not counted as forwarded"
        );
        // The client got the gateway's shutdown close in place of the backend's 1000.
        let mut got = [0u8; 25];
        client_peer.read_exact(&mut got).await.expect("close frame");
        assert_eq!(got[..4], [0x88, 23, 0x03, 0xE9]);
        assert_eq!(&got[4..], b"gateway shutting down");
        drop((tx, answer));
    }

    /// A session registered (as connection 7) in the returned registry, running, whose
    /// shutdown signal never comes; and the client's and the backend's ends of it.
    fn registered_session() -> (
        crate::registry::Registry,
        tokio::task::JoinHandle<SessionReport>,
        DuplexStream,
        DuplexStream,
    ) {
        let (client_gw, client_peer) = tokio::io::duplex(1 << 16);
        let (backend_gw, backend_peer) = tokio::io::duplex(1 << 16);
        let (cr, cw) = tokio::io::split(client_gw);
        let (br, bw) = tokio::io::split(backend_gw);
        let opts = SessionOptions {
            max_message_size: 1 << 20,
            max_frame_size: 1 << 20,
            close_timeout: Duration::from_secs(10),
            keepalive: None,
            ends_at: None,
            permessage_deflate: false,
        };
        let (tx, rx) = watch::channel(false);
        let registry = crate::registry::Registry::default();
        let order = registry.insert(7, crate::registry::SessionInfo::default());
        let side = |read, write| Side {
            read,
            write,
            leftover: Bytes::new(),
        };
        let session = proxy(side(cr, cw), side(br, bw), opts, rx, order, ());
        let run = tokio::spawn(async move {
            // The sender outlives the session, so its shutdown branch stays armed.
            let report = session.await;
            drop(tx);
            report
        });
        (registry, run, client_peer, backend_peer)
    }

    /// The next frame `peer` gets, which must be a masked close of under 126 bytes: its
    /// code and reason.
    async fn masked_close(peer: &mut DuplexStream) -> (u16, Vec<u8>) {
        let mut head = [0u8; 6];
        peer.read_exact(&mut head).await.expect("close head");
        assert_eq!(head[0], 0x88, "not a close: {head:?}");
        assert!(head[1] & 0x80 != 0 && head[1] & 0x7F < 126, "{head:?}");
        let mut body = vec![0u8; usize::from(head[1] & 0x7F)];
        peer.read_exact(&mut body).await.expect("close body");
        crate::frames::apply_mask(&mut body, [head[2], head[3], head[4], head[5]]);
        (u16::from_be_bytes([body[0], body[1]]), body[2..].to_vec())
    }

    /// The next frame `peer` gets, which must be an unmasked close of under 126 bytes:
    /// its code and reason.
    async fn unmasked_close(peer: &mut DuplexStream) -> (u16, Vec<u8>) {
        let mut head = [0u8; 2];
        peer.read_exact(&mut head).await.expect("close head");
        assert_eq!(head[0], 0x88, "not a close: {head:?}");
        assert!(
            head[1] & 0x80 == 0 && (2..126).contains(&head[1]),
            "{head:?}"
        );
        let mut body = vec![0u8; usize::from(head[1])];
        peer.read_exact(&mut body).await.expect("close body");
        (u16::from_be_bytes([body[0], body[1]]), body[2..].to_vec())
    }

    #[tokio::test]
    async fn an_operators_order_closes_the_client_with_its_code_and_the_backend_with_1001() {
        let (registry, run, mut client_peer, mut backend_peer) = registered_session();
        let all = crate::registry::Filter::default();
        assert_eq!(registry.close(&all, 4001), 1);
        // To the client, unmasked: code 4001 and the reason.
        assert_eq!(
            unmasked_close(&mut client_peer).await,
            (4001, b"closed by the gateway operator".to_vec())
        );
        // To the backend, masked: 1001.
        assert_eq!(
            masked_close(&mut backend_peer).await,
            (1001, CLIENT_CLOSED_BY_OPERATOR.reason.as_bytes().to_vec())
        );
        // Both answer; the session ends as the operator's.
        client_peer
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x0F, 0xA1])
            .await
            .expect("answer");
        backend_peer
            .write_all(&[0x88, 0x02, 0x03, 0xE9])
            .await
            .expect("answer");
        drop((client_peer, backend_peer));
        let report = run.await.expect("session");
        assert_eq!(report.outcome(), "closed_by_operator");
    }

    #[tokio::test]
    async fn a_spread_shutdowns_turn_closes_as_a_shutdown_does() {
        // The shutdown signal itself never comes: only this session's turn does.
        let (registry, run, mut client_peer, mut backend_peer) = registered_session();
        let picked = registry.pick(&crate::registry::Filter::default());
        assert_eq!(picked.close_now(Closing::Shutdown), 1);
        // The backend first, masked: 1001 "gateway shutting down".
        let reason = SHUTTING_DOWN.reason.as_bytes();
        assert_eq!(
            masked_close(&mut backend_peer).await,
            (1001, reason.to_vec())
        );
        // Its answer gets the client the gateway's own 1001.
        backend_peer
            .write_all(&[0x88, 0x02, 0x03, 0xE8])
            .await
            .expect("answer");
        assert_eq!(
            unmasked_close(&mut client_peer).await,
            (1001, reason.to_vec())
        );
        client_peer
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9])
            .await
            .expect("answer");
        drop((client_peer, backend_peer));
        let report = run.await.expect("session");
        assert!(report.shutdown);
        assert_eq!(report.outcome(), "shutdown");
    }

    #[tokio::test]
    async fn a_deadline_inside_a_large_client_frame_lets_it_finish_then_closes() {
        // The session's time limit comes while the client is half-way through a 300 KB
        // frame (passed on in pieces): the backend gets the whole frame, then its 1001.
        // It used to get the frame cut off and no close at all.
        let (client_gw, mut client_peer) = tokio::io::duplex(1 << 20);
        let (backend_gw, mut backend_peer) = tokio::io::duplex(1 << 20);
        let (cr, cw) = tokio::io::split(client_gw);
        let (br, bw) = tokio::io::split(backend_gw);
        let ends = tokio::time::Instant::now() + Duration::from_millis(300);
        let opts = SessionOptions {
            max_message_size: 1 << 20,
            max_frame_size: 1 << 20,
            close_timeout: Duration::from_secs(10),
            keepalive: None,
            ends_at: Some((ends, DeadlineKind::SessionLimit)),
            permessage_deflate: false,
        };
        let (_tx, rx) = watch::channel(false);
        let side = |read, write| Side {
            read,
            write,
            leftover: Bytes::new(),
        };
        let run = tokio::spawn(proxy(
            side(cr, cw),
            side(br, bw),
            opts,
            rx,
            CloseOrder::never(),
            (),
        ));
        // A masked binary frame of 300,000 bytes, key 0 (the payload as it is).
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut frame = vec![0x82, 0xFF];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&payload);
        let (first, rest) = frame.split_at(100_000);
        client_peer.write_all(first).await.expect("first part");
        // The backend has the head and the first piece before the deadline comes.
        let mut head = [0u8; 14];
        backend_peer.read_exact(&mut head).await.expect("head");
        assert_eq!(head[..2], [0x82, 0xFF]);
        let key = [head[10], head[11], head[12], head[13]];
        let mut got = vec![0u8; payload.len()];
        backend_peer
            .read_exact(&mut got[..50_000])
            .await
            .expect("first piece");
        tokio::time::sleep_until(ends + Duration::from_millis(50)).await; // the deadline itself
        client_peer.write_all(rest).await.expect("the rest");
        backend_peer
            .read_exact(&mut got[50_000..])
            .await
            .expect("the rest of the frame");
        crate::frames::apply_mask(&mut got, key);
        assert!(got == payload, "the frame changed on the way");
        // Masked, toward the backend: head, key, code and reason.
        let mut close = [0u8; 6];
        backend_peer
            .read_exact(&mut close)
            .await
            .expect("a close after the frame");
        assert_eq!(close[..2], [0x88, 0x80 | 20], "a close follows the frame");
        let mut body = [0u8; 20];
        backend_peer
            .read_exact(&mut body)
            .await
            .expect("close body");
        crate::frames::apply_mask(&mut body, [close[2], close[3], close[4], close[5]]);
        assert_eq!(body[..2], 1001u16.to_be_bytes());
        assert_eq!(&body[2..], b"session time limit");
        drop((client_peer, backend_peer));
        let report = tokio::time::timeout(Duration::from_secs(15), run).await;
        assert!(report.is_ok(), "the session did not end");
    }

    #[tokio::test]
    async fn the_client_can_answer_the_gateways_close_before_the_connection_ends() {
        // The gateway used to drop the connection right after its close and TLS close: the
        // client's close answer then met a closed socket, which TCP answers with a reset.
        let (client_gw, mut client_peer) = tokio::io::duplex(4096);
        let (backend_gw, mut backend_peer) = tokio::io::duplex(4096);
        let (run, tx) = session_after_shutdown_with(client_gw, backend_gw, Duration::from_secs(30));
        let run = tokio::spawn(run);
        // The backend answers the gateway's going-away close at once, and (the server)
        // ends the connection.
        backend_peer
            .write_all(&[0x88, 0x02, 0x03, 0xE8])
            .await
            .expect("backend answer");
        backend_peer.shutdown().await.expect("backend end");
        let mut got = [0u8; 25];
        client_peer.read_exact(&mut got).await.expect("close frame");
        assert_eq!(got[..4], [0x88, 23, 0x03, 0xE9]);
        let mut rest = Vec::new();
        client_peer
            .read_to_end(&mut rest)
            .await
            .expect("end of stream");
        assert!(rest.is_empty(), "nothing after the close: {rest:?}");
        // The client answers (masked 1001), then ends its side.
        client_peer
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9])
            .await
            .expect("the gateway closed the connection before the client's close answer");
        client_peer.shutdown().await.expect("client end");
        let report = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the session ends once the client has ended")
            .expect("session task");
        assert!(report.shutdown);
        assert!(
            report.duration < Duration::from_secs(30),
            "ended by the client's end, not by the close timeout"
        );
        drop((tx, backend_peer));
    }

    #[tokio::test]
    async fn toward_the_backend_the_gateway_lets_the_backend_end_the_connection_first() {
        let (client_gw, mut client_peer) = tokio::io::duplex(4096);
        let (backend_gw, mut backend_peer) = tokio::io::duplex(4096);
        let (run, tx) = session_after_shutdown_with(client_gw, backend_gw, Duration::from_secs(30));
        let run = tokio::spawn(run);
        // The gateway's close reaches the backend, which answers but keeps the connection.
        let mut close = [0u8; 6 + 2 + 21];
        backend_peer
            .read_exact(&mut close)
            .await
            .expect("close to the backend");
        assert_eq!(close[..2], [0x88, 0x80 | 23]);
        backend_peer
            .write_all(&[0x88, 0x02, 0x03, 0xE9])
            .await
            .expect("backend answer");
        // The client gets its close, answers it and ends its side.
        let mut got = [0u8; 25];
        client_peer.read_exact(&mut got).await.expect("close frame");
        client_peer
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE9])
            .await
            .expect("client answer");
        client_peer.shutdown().await.expect("client end");
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !run.is_finished(),
            "the gateway ended the backend connection before the backend did"
        );
        let mut after = [0u8; 1];
        backend_peer.shutdown().await.expect("backend end");
        let report = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the session ends once the backend has ended")
            .expect("session task");
        assert!(report.duration < Duration::from_secs(30));
        assert_eq!(
            report.gateway_closes(),
            vec![("client", 1001), ("backend", 1001)]
        );
        // And then the gateway's end of it.
        assert_eq!(backend_peer.read(&mut after).await.ok(), Some(0));
        drop(tx);
    }

    /// The backend answers the gateway's close (1001) and ends its side; the session
    /// `run` must then end within 5 s (not wait out its close timeout).
    async fn answer_close_and_end(
        backend_peer: &mut DuplexStream,
        run: tokio::task::JoinHandle<SessionReport>,
    ) -> SessionReport {
        backend_peer
            .write_all(&[0x88, 0x02, 0x03, 0xE9])
            .await
            .expect("backend answer");
        backend_peer.shutdown().await.expect("backend end");
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("ended by the backend's end, not the close timeout")
            .expect("session task")
    }

    #[tokio::test]
    async fn a_backend_whose_client_left_at_the_upgrade_hears_1001_and_ends_first() {
        let (gw, mut backend_peer) = tokio::io::duplex(4096);
        let run = tokio::spawn(client_left_at_upgrade(gw, Duration::from_secs(10)));
        // A masked close: 1001 "client went away".
        let mut head = [0u8; 6];
        backend_peer
            .read_exact(&mut head)
            .await
            .expect("close head");
        assert_eq!(head[0], 0x88);
        let len = usize::from(head[1] & 0x7F);
        assert!(head[1] & 0x80 != 0, "not masked");
        let mut payload = vec![0u8; len];
        backend_peer
            .read_exact(&mut payload)
            .await
            .expect("close payload");
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= head[2 + i % 4];
        }
        assert_eq!(&payload[..2], &1001u16.to_be_bytes());
        assert_eq!(&payload[2..], CLIENT_LOST.reason.as_bytes());
        assert!(
            !run.is_finished(),
            "the gateway did not wait for the backend's end"
        );
        let report = answer_close_and_end(&mut backend_peer, run).await;
        assert_eq!(report.outcome(), "client_lost");
        assert_eq!(report.gateway_closes(), vec![("backend", 1001)]);
    }

    #[tokio::test]
    async fn only_closes_that_went_out_are_counted_as_the_gateways() {
        // The client is gone before the shutdown close could reach it; the backend is
        // there, answers and ends its side.
        let (client_gw, client_peer) = tokio::io::duplex(4096);
        drop(client_peer);
        let (backend_gw, mut backend_peer) = tokio::io::duplex(4096);
        let (run, tx) = session_after_shutdown_with(client_gw, backend_gw, Duration::from_secs(5));
        let run = tokio::spawn(run);
        let mut close = [0u8; 6 + 2 + 21];
        backend_peer
            .read_exact(&mut close)
            .await
            .expect("close to the backend");
        let report = answer_close_and_end(&mut backend_peer, run).await;
        assert_eq!(report.gateway_closes(), vec![("backend", 1001)]);
        drop(tx);
    }

    #[test]
    fn the_earlier_deadline_wins_and_limits_spread_over_the_last_tenth() {
        let now = tokio::time::Instant::now();
        let s = Duration::from_secs;
        assert_eq!(deadline(now, None, Duration::ZERO, 1.0), None);
        assert_eq!(
            deadline(now, Some(s(5)), s(3600), 1.0),
            Some((now + s(5), DeadlineKind::TokenExpiry))
        );
        assert_eq!(
            deadline(now, Some(s(7200)), s(100), 0.95),
            Some((now + s(95), DeadlineKind::SessionLimit))
        );
        assert_eq!(
            deadline(now, None, s(100), 0.5),
            Some((now + s(90), DeadlineKind::SessionLimit)),
            "never before 90 %"
        );
        assert_eq!(
            deadline(now, Some(Duration::MAX), Duration::ZERO, 1.0),
            None,
            "an expiry the clock cannot hold"
        );
    }

    #[tokio::test]
    async fn a_session_starting_after_shutdown_closes_at_once_even_with_stalled_peers() {
        // Found by the session fuzzer: such a session used to miss the shutdown signal.
        let (client_gw, _client_peer) = tokio::io::duplex(64);
        let (backend_gw, _backend_peer) = tokio::io::duplex(64);
        let (run, tx) = session_after_shutdown(client_gw, backend_gw);
        let report = tokio::time::timeout(Duration::from_secs(5), run).await;
        assert!(
            report.as_ref().is_ok_and(|r| r.shutdown),
            "the session did not end on shutdown"
        );
        drop(tx);
    }
}
