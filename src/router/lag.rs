//! Replication lag from probes: a short history of the primary's WAL position (each LSN
//! with the start times of the first and last probe that saw it) and each replica's
//! replay position. All arithmetic is here, free of I/O, so it can be tested exactly.
//!
//! A probe that *starts* at time `t` returns an LSN at or past every commit finished
//! before `t`. Hence:
//! * the bound used for routing: if a replica has replayed an LSN the primary reported
//!   in a probe that started at `t`, every commit older than `t` is visible there, so its
//!   lag is at most `now - t` (an idle primary keeps re-confirming its LSN, so this
//!   stays near zero);
//! * the watermark of a write that committed at `t`: the LSN of any probe started at or
//!   after `t`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One primary WAL position and when probes saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsnSample {
    /// WAL position in bytes.
    pub lsn: u64,
    /// Start of the first probe that returned it.
    pub first: Instant,
    /// Start of the last probe that returned it.
    pub last: Instant,
}

/// The primary as the monitor last saw it.
#[derive(Debug, Clone, Default)]
pub struct PrimaryView {
    /// Distinct LSNs, oldest first.
    pub samples: Vec<LsnSample>,
    /// The last probe succeeded.
    pub up: bool,
    /// When the last probe (good or bad) finished.
    pub probed_at: Option<Instant>,
    /// The last probe's error.
    pub error: Option<String>,
}

impl PrimaryView {
    /// The newest LSN known.
    pub fn current(&self) -> Option<u64> {
        self.samples.last().map(|s| s.lsn)
    }

    /// The LSN that proves a commit finished at `t` is included, once known.
    pub fn watermark_after(&self, t: Instant) -> Option<u64> {
        // Samples are ordered by time and LSN; the first whose last probe started at or
        // after `t` is the smallest LSN known to include everything committed before `t`.
        let i = self.samples.partition_point(|s| s.last < t);
        self.samples.get(i).map(|s| s.lsn)
    }

    /// Upper bound of a replica's time lag at `now`, given its replay LSN. `None` when
    /// the history holds nothing it has replayed (unknown: treat as too far behind).
    pub fn lag_bound(&self, replay: u64, now: Instant) -> Option<Duration> {
        let newest = self.samples.last()?;
        if !self.up && replay >= newest.lsn {
            // No commit can land on a primary that is down: a replica that has what the
            // primary last reported is current.
            return Some(Duration::ZERO);
        }
        let i = self.samples.partition_point(|s| s.lsn <= replay);
        let seen = self.samples.get(i.checked_sub(1)?)?;
        Some(now.saturating_duration_since(seen.last))
    }

    /// Best estimate of a replica's time lag: the age of the oldest primary position it
    /// has not replayed (zero when it has replayed everything sampled).
    pub fn lag_estimate(&self, replay: u64, now: Instant) -> Duration {
        let i = self.samples.partition_point(|s| s.lsn <= replay);
        match self.samples.get(i) {
            Some(s) => now.saturating_duration_since(s.first),
            None => Duration::ZERO,
        }
    }

    /// Bytes the replica is behind the newest sample.
    pub fn byte_lag(&self, replay: u64) -> u64 {
        self.current().map_or(0, |c| c.saturating_sub(replay))
    }
}

/// Keeps the primary's sample history (bounded) for the monitor.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<LsnSample>,
    keep: Duration,
    max: usize,
}

impl History {
    /// Keeps samples for `keep`, at most `max` of them.
    pub fn new(keep: Duration, max: usize) -> Self {
        Self {
            samples: VecDeque::new(),
            keep,
            max: max.max(2),
        }
    }

    /// Records a probe that started at `started` and returned `lsn`.
    pub fn record(&mut self, lsn: u64, started: Instant) {
        match self.samples.back_mut() {
            Some(last) if lsn <= last.lsn => last.last = last.last.max(started),
            _ => self.samples.push_back(LsnSample {
                lsn,
                first: started,
                last: started,
            }),
        }
        // Drop old samples but always keep two, so a bound stays computable.
        while self.samples.len() > 2
            && (self.samples.len() > self.max
                || self
                    .samples
                    .get(1)
                    .is_some_and(|s| started.saturating_duration_since(s.last) > self.keep))
        {
            self.samples.pop_front();
        }
    }

    /// A snapshot for readers.
    pub fn view(&self, up: bool, probed_at: Instant, error: Option<String>) -> PrimaryView {
        PrimaryView {
            samples: self.samples.iter().copied().collect(),
            up,
            probed_at: Some(probed_at),
            error,
        }
    }
}

/// A replica as the monitor last saw it.
#[derive(Debug, Clone, Default)]
pub struct ReplicaView {
    /// The last probe succeeded and the server is in recovery.
    pub up: bool,
    /// Replayed WAL position.
    pub replay: u64,
    /// Received WAL position.
    pub receive: u64,
    /// Commit time of the last replayed transaction (seconds since the Unix epoch).
    pub replay_timestamp: Option<f64>,
    /// When the last good probe finished.
    pub good_at: Option<Instant>,
    /// When the last probe (good or bad) finished.
    pub probed_at: Option<Instant>,
    /// The last probe's error (or "not in recovery").
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_primary_shows_no_lag() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60), 100);
        for i in 0..10 {
            h.record(1000, t0 + ms(100 * i));
        }
        let v = h.view(true, t0 + ms(950), None);
        assert_eq!(v.samples.len(), 1);
        let now = t0 + ms(950);
        assert_eq!(v.lag_estimate(1000, now), Duration::ZERO);
        assert_eq!(v.lag_bound(1000, now), Some(ms(50)));
        assert_eq!(v.byte_lag(1000), 0);
    }

    #[test]
    fn paused_replica_lag_grows() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60), 100);
        h.record(1000, t0);
        h.record(1000, t0 + ms(100));
        h.record(2000, t0 + ms(200));
        h.record(3000, t0 + ms(300));
        let v = h.view(true, t0 + ms(310), None);
        // Replayed 1000: everything before the probe at 100ms is there.
        assert_eq!(v.lag_bound(1000, t0 + ms(1100)), Some(ms(1000)));
        assert_eq!(v.lag_estimate(1000, t0 + ms(1100)), ms(900));
        assert_eq!(v.byte_lag(1000), 2000);
        // Nothing known replayed: unknown.
        assert_eq!(v.lag_bound(10, t0 + ms(400)), None);
        // Caught up.
        assert_eq!(v.lag_bound(3000, t0 + ms(400)), Some(ms(100)));
    }

    #[test]
    fn watermarks() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60), 100);
        h.record(1000, t0);
        h.record(2000, t0 + ms(100));
        h.record(2000, t0 + ms(200));
        let v = h.view(true, t0 + ms(210), None);
        assert_eq!(v.watermark_after(t0 + ms(50)), Some(2000));
        assert_eq!(v.watermark_after(t0 + ms(150)), Some(2000));
        assert_eq!(v.watermark_after(t0), Some(1000));
        assert_eq!(v.watermark_after(t0 + ms(201)), None);
    }

    #[test]
    fn history_is_bounded() {
        let t0 = Instant::now();
        let mut h = History::new(ms(500), 5);
        for i in 0..20u64 {
            h.record(i * 10, t0 + ms(100 * i));
        }
        let v = h.view(true, t0 + ms(2000), None);
        assert!(v.samples.len() <= 5);
        assert_eq!(v.current(), Some(190));
    }

    #[test]
    fn primary_down_keeps_caught_up_replicas() {
        let t0 = Instant::now();
        let mut h = History::new(Duration::from_secs(60), 100);
        h.record(1000, t0);
        let v = h.view(false, t0 + ms(10), Some("down".into()));
        assert_eq!(v.lag_bound(1000, t0 + ms(10_000)), Some(Duration::ZERO));
        assert_eq!(v.lag_bound(900, t0 + ms(10_000)), None);
    }
}
