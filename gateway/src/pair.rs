//! Two futures raced on one task, each polled only when its own waker fired.
//!
//! A session runs its two pumps on one task. `select!` polls both whenever the task
//! wakes, though a wake-up nearly always concerns one side; the other pump then looks at
//! its inbox, its socket's readiness and its timer for nothing. Here each pump gets a
//! waker of its own that marks it before waking the task, and only marked pumps are
//! polled.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Which of the two finished, with its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first future finished.
    First(A),
    /// The second future finished.
    Second(B),
}

/// A wake-up for one of the two: marks it, then wakes the task.
#[derive(Debug)]
struct Mark {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The wakers of two futures polled together; see the module docs.
#[derive(Debug)]
pub struct Pair {
    marks: [Arc<Mark>; 2],
    wakers: [Waker; 2],
}

impl Default for Pair {
    fn default() -> Self {
        let mark = || {
            Arc::new(Mark {
                // Both are polled the first time.
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            })
        };
        let marks = [mark(), mark()];
        let wakers = [Waker::from(marks[0].clone()), Waker::from(marks[1].clone())];
        Self { marks, wakers }
    }
}

impl Pair {
    /// Polls whichever of `first` and `second` was woken since it was last polled; ready
    /// with the output of the first to finish. Always pass the same two futures.
    pub fn poll<A: Future, B: Future>(
        &self,
        cx: &mut Context<'_>,
        first: Pin<&mut A>,
        second: Pin<&mut B>,
    ) -> Poll<Either<A::Output, B::Output>> {
        for mark in &self.marks {
            mark.task.register(cx.waker());
        }
        if self.marks[0].woken.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(out) = first.poll(&mut Context::from_waker(&self.wakers[0])) {
                return Poll::Ready(Either::First(out));
            }
        }
        if self.marks[1].woken.swap(false, Ordering::AcqRel) {
            if let Poll::Ready(out) = second.poll(&mut Context::from_waker(&self.wakers[1])) {
                return Poll::Ready(Either::Second(out));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and finishes when `done` is set.
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        waker: &'a std::sync::Mutex<Option<Waker>>,
        done: &'a AtomicBool,
    }

    impl Future for Counted<'_> {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.done.load(Ordering::SeqCst) {
                return Poll::Ready(n);
            }
            if let Ok(mut w) = self.waker.lock() {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    #[test]
    fn only_the_woken_one_is_polled() {
        let (pa, pb) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (wa, wb) = (std::sync::Mutex::new(None), std::sync::Mutex::new(None));
        let (da, db) = (AtomicBool::new(false), AtomicBool::new(false));
        let mut a = Counted {
            polls: &pa,
            waker: &wa,
            done: &da,
        };
        let mut b = Counted {
            polls: &pb,
            waker: &wb,
            done: &db,
        };
        let pair = Pair::default();
        let task_woken = Arc::new(Mark {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let task = Waker::from(task_woken.clone());
        let mut cx = Context::from_waker(&task);
        let mut poll =
            |a: &mut Counted<'_>, b: &mut Counted<'_>| pair.poll(&mut cx, Pin::new(a), Pin::new(b));

        assert_eq!(poll(&mut a, &mut b), Poll::Pending);
        assert_eq!(
            (pa.load(Ordering::SeqCst), pb.load(Ordering::SeqCst)),
            (1, 1),
            "both at first"
        );

        // B's resource wakes it: the task is woken, and only B is polled.
        wb.lock()
            .ok()
            .and_then(|w| w.clone())
            .into_iter()
            .for_each(Waker::wake);
        assert!(
            task_woken.woken.swap(false, Ordering::SeqCst),
            "the task was woken"
        );
        assert_eq!(poll(&mut a, &mut b), Poll::Pending);
        assert_eq!(
            (pa.load(Ordering::SeqCst), pb.load(Ordering::SeqCst)),
            (1, 2)
        );

        // A spurious wake-up of the task polls neither.
        assert_eq!(poll(&mut a, &mut b), Poll::Pending);
        assert_eq!(
            (pa.load(Ordering::SeqCst), pb.load(Ordering::SeqCst)),
            (1, 2)
        );

        // A finishes once woken.
        da.store(true, Ordering::SeqCst);
        wa.lock()
            .ok()
            .and_then(|w| w.clone())
            .into_iter()
            .for_each(Waker::wake);
        assert_eq!(poll(&mut a, &mut b), Poll::Ready(Either::First(2)));
        assert_eq!(pb.load(Ordering::SeqCst), 2);
    }
}
