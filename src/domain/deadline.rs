//! The time budget of one delivery. GitHub gives a delivery 10 seconds; every wait, retry and
//! timeout downstream is cut to what is left of the budget so that we answer in time.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn is_past(&self) -> bool {
        self.remaining().is_zero()
    }

    /// `wanted`, cut to what is left of the budget.
    pub fn cap(&self, wanted: Duration) -> Duration {
        wanted.min(self.remaining())
    }
}
