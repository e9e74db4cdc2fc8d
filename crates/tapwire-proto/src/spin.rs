//! `--busy-poll USEC`: when the engine's loop may poll instead of sleeping.
//!
//! # Theory of operation
//! A ping-pong over tapwire (a request, a reply, the next request) costs two sleeps and two
//! wakeups of the engine per round trip, and a wakeup from `epoll_wait` is the larger part of
//! the latency a forwarder adds (the scheduler, the idle CPU leaving its low-power state). The
//! kernel's answer for sockets is busy polling (`SO_BUSY_POLL`): spin a short while before
//! sleeping, because the next packet is often only microseconds away.
//!
//! [`Spin`] decides when that pays, from the last gap alone: when the loop runs out of work it
//! calls [`Spin::quiet`], and the engine polls with a zero timeout while that returns `true`;
//! when events arrive it calls [`Spin::woke`]. The loop is *armed* when the last quiet period
//! ended (an event came) within the window: traffic that answers within USEC microseconds
//! keeps it spinning; traffic slower than that disarms it, so it sleeps at once the next time,
//! and a quiet period longer than the window always ends in a sleep. The cost is bounded:
//! at most USEC of CPU per quiet period, none at all when idle (the first quiet period after
//! the last event ends in a sleep once the window has passed), and USEC = 0 never spins.
//!
//! Time is the caller's (`now` in microseconds on any monotonic clock), so this is tested with
//! a fake clock.

/// Busy polling state; see the module documentation.
#[derive(Debug, Clone)]
pub struct Spin {
    window_us: u64,
    /// When the loop last ran out of work, if it has not had an event since.
    quiet_since: Option<u64>,
    armed: bool,
}

impl Spin {
    /// A spinner with a window of `window_us` microseconds (0: never spin).
    pub fn new(window_us: u64) -> Spin {
        Spin {
            window_us,
            quiet_since: None,
            armed: false,
        }
    }

    /// The loop has no work at `now`: `true` means poll again without sleeping.
    pub fn quiet(&mut self, now: u64) -> bool {
        let since = *self.quiet_since.get_or_insert(now);
        self.armed && now.saturating_sub(since) < self.window_us
    }

    /// Events arrived at `now`: arm when they ended a quiet period within the window.
    pub fn woke(&mut self, now: u64) {
        if let Some(since) = self.quiet_since.take() {
            self.armed = self.window_us > 0 && now.saturating_sub(since) <= self.window_us;
        }
    }

    /// Whether busy polling is on at all (a window above 0): when off, the engine does not
    /// read the clock for it.
    pub fn enabled(&self) -> bool {
        self.window_us > 0
    }

    /// Whether the next quiet period starts with spinning.
    pub fn armed(&self) -> bool {
        self.armed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_disarmed_and_sleeps() {
        let mut s = Spin::new(50);
        assert!(!s.armed());
        assert!(!s.quiet(1_000));
    }

    #[test]
    fn a_quick_reply_arms_it_and_it_spins_within_the_window() {
        let mut s = Spin::new(50);
        assert!(!s.quiet(1_000));
        s.woke(1_020);
        assert!(s.armed());
        // Work done; quiet again: spin until the window has passed, then sleep.
        assert!(s.quiet(1_030));
        assert!(s.quiet(1_079));
        assert!(!s.quiet(1_080));
        assert!(!s.quiet(5_000));
    }

    #[test]
    fn a_slow_reply_disarms_it() {
        let mut s = Spin::new(50);
        s.quiet(0);
        s.woke(10);
        assert!(s.armed());
        s.quiet(100);
        // The next event came long after the window: the next quiet period sleeps at once.
        s.woke(900);
        assert!(!s.armed());
        assert!(!s.quiet(901));
    }

    #[test]
    fn zero_never_spins() {
        let mut s = Spin::new(0);
        assert!(!s.enabled());
        s.quiet(0);
        s.woke(0);
        assert!(!s.armed());
        assert!(!s.quiet(0));
    }

    #[test]
    fn events_without_a_quiet_period_change_nothing() {
        let mut s = Spin::new(50);
        s.quiet(0);
        s.woke(5);
        // Busy: events on every turn, never quiet in between.
        s.woke(1_000);
        s.woke(2_000);
        assert!(s.armed());
        assert!(s.quiet(2_010));
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic() {
        let mut s = Spin::new(50);
        s.quiet(100);
        s.woke(50);
        assert!(s.armed());
        assert!(s.quiet(40));
    }
}
