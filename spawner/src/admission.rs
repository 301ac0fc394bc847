//! Admission control: at most `max_running` runs at once, at most `max_queued` waiting for
//! a slot, and an immediate "busy" beyond that. Never a fork storm, never an unbounded
//! queue. The daemon's runs pass one gate; a run's sub-runs pass their parent's own
//! (`[runs] parallel`) and then the daemon's, if any.
//!
//! A run that waits on its sub-runs lends its slot to them ([`Admission::lend`]) and takes
//! one again before it goes on ([`Lent::take_back`]): a parent never holds a slot while
//! it waits, so parents waiting on children cannot fill every slot and starve them.

use std::sync::{Condvar, Mutex, PoisonError};

/// How many runs a gate lets run at once unless told: two per core (a run waits on I/O,
/// the broker and its sub-runs much of its time).
pub fn default_max_running() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The gate every run passes.
#[derive(Debug)]
pub struct Admission {
    max_running: usize,
    max_queued: usize,
    state: Mutex<Counts>,
    slot_freed: Condvar,
}

/// Runs in flight and waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Holding a slot.
    pub running: usize,
    /// Waiting for one.
    pub queued: usize,
}

/// Admission was refused: the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy(pub Counts);

/// A slot, given back on drop.
#[derive(Debug)]
pub struct Permit<'a> {
    gate: &'a Admission,
}

impl Admission {
    /// A gate with these bounds (`max_running` at least 1).
    pub fn new(max_running: usize, max_queued: usize) -> Admission {
        Admission {
            max_running: max_running.max(1),
            max_queued,
            state: Mutex::new(Counts::default()),
            slot_freed: Condvar::new(),
        }
    }

    /// The bounds.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_running, self.max_queued)
    }

    /// The current counts.
    pub fn counts(&self) -> Counts {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a slot, waiting in the queue when all are taken, or refuse when the queue is
    /// full too.
    pub fn enter(&self) -> Result<Permit<'_>, Busy> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.running < self.max_running {
            state.running += 1;
            return Ok(Permit { gate: self });
        }
        if state.queued >= self.max_queued {
            return Err(Busy(*state));
        }
        state.queued += 1;
        while state.running >= self.max_running {
            state = self
                .slot_freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.queued -= 1;
        state.running += 1;
        Ok(Permit { gate: self })
    }

    /// Take a slot, waiting as long as it takes, whatever the queue holds: for sub-runs,
    /// whose number their parent's manifest bounds.
    pub fn enter_waiting(&self) -> Permit<'_> {
        loop {
            if let Some(permit) = self.enter_waiting_unless(&|| false) {
                return permit;
            }
        }
    }

    /// [`Admission::enter_waiting`], giving up (`None`) once `give_up` says so: it is asked
    /// whenever a slot frees and when [`Admission::wake_waiters`] is called.
    pub fn enter_waiting_unless(&self, give_up: &dyn Fn() -> bool) -> Option<Permit<'_>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.queued += 1;
        while state.running >= self.max_running && !give_up() {
            state = self
                .slot_freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.queued -= 1;
        if give_up() {
            drop(state);
            // Another waiter may take the slot this one woke for.
            self.slot_freed.notify_one();
            return None;
        }
        state.running += 1;
        Some(Permit { gate: self })
    }

    /// Wake every waiter, for those of [`Admission::enter_waiting_unless`] to ask whether
    /// they give up.
    pub fn wake_waiters(&self) {
        let _state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.slot_freed.notify_all();
    }

    /// Give back the slot a caller's permit holds while it waits on runs that need one;
    /// the permit stays with the caller, to be made good by [`Lent::take_back`].
    pub fn lend(&self) -> Lent<'_> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.running = state.running.saturating_sub(1);
        drop(state);
        self.slot_freed.notify_one();
        Lent {
            gate: self,
            back: false,
        }
    }
}

/// A slot lent by [`Admission::lend`].
#[derive(Debug)]
pub struct Lent<'a> {
    gate: &'a Admission,
    back: bool,
}

impl Lent<'_> {
    /// Take the slot back, waiting for one to be free (ahead of no one: it waits as any
    /// queued run does).
    pub fn take_back(mut self) {
        let permit = self.gate.enter_waiting();
        std::mem::forget(permit);
        self.back = true;
    }
}

impl Drop for Lent<'_> {
    /// Not taken back (a panic on the way): the count is restored at once, so that the
    /// permit's own drop leaves it right.
    fn drop(&mut self) {
        if !self.back {
            let mut state = self
                .gate
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.running += 1;
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self
            .gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.running -= 1;
        drop(state);
        self.gate.slot_freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn runs_beyond_the_slots_queue_and_beyond_the_queue_are_refused() {
        let gate = Arc::new(Admission::new(1, 1));
        let first = gate.enter().expect("slot");
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                let _permit = gate.enter().expect("queued, then admitted");
            })
        };
        while gate.counts().queued == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            gate.enter().expect_err("full"),
            Busy(Counts {
                running: 1,
                queued: 1
            })
        );
        drop(first);
        waiter.join().expect("waiter admitted");
        assert_eq!(gate.counts(), Counts::default());
    }

    #[test]
    fn a_lent_slot_admits_a_waiting_run_and_is_taken_back_after_it() {
        let gate = Arc::new(Admission::new(1, 0));
        let parent = gate.enter().expect("slot");
        let lent = gate.lend();
        assert_eq!(gate.counts().running, 0);
        let child = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || {
                let _permit = gate.enter_waiting();
                assert_eq!(gate.counts().running, 1);
            })
        };
        child.join().expect("the child ran in the lent slot");
        lent.take_back();
        assert_eq!(gate.counts().running, 1);
        drop(parent);
        assert_eq!(gate.counts(), Counts::default());
    }

    #[test]
    fn taking_a_slot_back_waits_for_one() {
        let gate = Admission::new(1, 0);
        let parent = gate.enter().expect("slot");
        let lent = gate.lend();
        let child = gate.enter_waiting();
        std::thread::scope(|s| {
            let taker = s.spawn(|| {
                lent.take_back();
                gate.counts()
            });
            while gate.counts().queued == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(gate.counts().running, 1, "the child holds the one slot");
            drop(child);
            let counts = taker.join().expect("taken back");
            assert_eq!(counts.running, 1);
        });
        drop(parent);
        assert_eq!(gate.counts(), Counts::default());
    }
}
