//! Admission control: at most `max_running` runs at once, at most `max_queued` waiting for
//! a slot, and an immediate "busy" beyond that. Never a fork storm, never an unbounded
//! queue. The daemon's runs pass one gate; a run's sub-runs pass their parent's own
//! (`[runs] parallel`) and then the daemon's, if any.
//!
//! A run that waits on its sub-runs lends its slot to them ([`Admission::lend`]) and takes
//! one again before it goes on ([`Lent::take_back`]): a parent never holds a slot while
//! it waits, so parents waiting on children cannot fill every slot and starve them.
//!
//! A gate bounds the runs of one process. A gate backed by the home's [`HomeSlots`] also
//! bounds them together with every other process's gate backed by the same slots: two
//! `spawner run` fan-outs started at once, and the daemon, share one bound.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

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
    /// Slots shared with the home's other processes: one is held, besides this gate's
    /// own count, by each run that holds a slot of it.
    home: Option<HomeSlots>,
}

/// Run slots every process of a home shares: lock files `0`, `1`, ... in one directory
/// ([`agent_contract::Home::slots_dir`]). A run holds one file's exclusive `flock` for as
/// long as it holds a slot of its gate, so the runs of all the gates backed by the same
/// directory are bounded together. A lock ends with its process however the process ends:
/// a killed run never keeps a slot. A gate of `n` slots makes the first `n` files, and
/// also takes any further one that a process of a larger bound made: the home's bound is
/// the largest of its processes', and each process's own gate bounds its own runs.
///
/// Fairness across processes: a run that finds no slot free waits holding the `door`
/// file's lock, and while anyone holds it nobody else takes a slot: each run that comes
/// after waits for the door, in this process or another. So a slot freed by a process
/// goes to the run that has waited at the door, not to that process's next run; a fan-out
/// cannot keep a second process (or the daemon) out until it ends. The door's holder
/// looks for a free slot every [`HOME_SLOT_POLL`] (no wake-up crosses processes), and so
/// do those waiting for the door.
///
/// Each file is opened once per process, on first use: a run that finds a slot free costs
/// four `flock` calls, door and slot, to take it and give it back.
#[derive(Debug)]
pub struct HomeSlots {
    dir: PathBuf,
    count: usize,
    state: Mutex<SlotFiles>,
}

/// This process's side of the home's slots.
#[derive(Debug, Default)]
struct SlotFiles {
    /// Slot `i`'s file, once opened.
    files: Vec<Option<File>>,
    /// The slots this process's runs hold.
    held: Vec<usize>,
    /// Runs let in without a slot, the files being unusable (see [`HomeSlots::take`]).
    unbacked: usize,
    /// The door's file, once opened.
    door: Option<File>,
    /// The thread of this process that holds the door, waiting for a slot: the others
    /// here wait behind it (the door's lock, being this process's, does not stop them).
    door_holder: Option<std::thread::ThreadId>,
}

/// How long a run waiting for a slot sleeps between looks.
const HOME_SLOT_POLL: Duration = Duration::from_millis(2);

impl HomeSlots {
    /// `count` slots in `dir` (made private when missing).
    pub fn new(dir: &Path, count: usize) -> std::io::Result<HomeSlots> {
        agent_contract::home::create_private_dir_all(dir)?;
        let count = count.max(1);
        Ok(HomeSlots {
            dir: dir.to_owned(),
            count,
            state: Mutex::new(SlotFiles::default()),
        })
    }

    /// `name` in the slots' directory, opened; created 0600 when `create`.
    fn open(&self, name: &str, create: bool) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join(name))
    }

    /// Slot `slot`'s file, opened on first use; beyond this process's own slots, only if
    /// a process of a larger bound made it (`None` if none did).
    fn file<'s>(&self, state: &'s mut SlotFiles, slot: usize) -> std::io::Result<Option<&'s File>> {
        if state.files.len() <= slot {
            state.files.resize_with(slot + 1, || None);
        }
        Ok(Some(match &mut state.files[slot] {
            Some(file) => file,
            empty => match self.open(&slot.to_string(), slot < self.count) {
                Ok(file) => empty.insert(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            },
        }))
    }

    /// The door's file, opened on first use.
    fn door<'s>(&self, state: &'s mut SlotFiles) -> std::io::Result<&'s File> {
        Ok(match &mut state.door {
            Some(file) => file,
            empty => empty.insert(self.open("door", true)?),
        })
    }

    /// Open every file now, rather than as runs first need them: for a long-lived process
    /// (the daemon), whose descriptors are then fixed from its start.
    pub fn open_all(&self) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in 0..self.count {
            self.file(&mut state, slot)?;
        }
        self.door(&mut state)?;
        Ok(())
    }

    /// Whether this thread holds the door, taking it if nobody, here or elsewhere, does.
    fn at_the_door(&self, state: &mut SlotFiles) -> std::io::Result<bool> {
        let me = std::thread::current().id();
        match state.door_holder {
            Some(holder) => Ok(holder == me),
            None => match self.door(state)?.try_lock() {
                Ok(()) => {
                    state.door_holder = Some(me);
                    Ok(true)
                }
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(e)) => Err(e),
            },
        }
    }

    /// Let go of the door, if this thread holds it.
    fn leave_the_door(&self, state: &mut SlotFiles) {
        if state.door_holder == Some(std::thread::current().id()) {
            state.door_holder = None;
            if let Some(door) = &state.door {
                let _ = door.unlock();
            }
        }
    }

    /// Lock a slot that no run holds, if there is one now: its own slots first, then those
    /// a process of a larger bound made. This process's gate bounds its own runs, and the
    /// run at the door must not keep others from slots it could use, so the home's bound
    /// is the largest.
    fn try_take(&self, state: &mut SlotFiles) -> std::io::Result<bool> {
        for slot in 0.. {
            // This process's own runs are told apart by `held`: one open file per slot
            // would let two of them "lock" it at once.
            if state.held.contains(&slot) {
                continue;
            }
            let Some(file) = self.file(state, slot)? else {
                break;
            };
            match file.try_lock() {
                Ok(()) => {
                    state.held.push(slot);
                    return Ok(true);
                }
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Take a slot, waiting at the door while every one is held or another run waits
    /// there, unless `give_up` says so first (false). Files that cannot be used (the
    /// directory made unwritable) let the run in on its gate's own bound, with a warning,
    /// rather than fail it.
    fn take(&self, give_up: &dyn Fn() -> bool) -> bool {
        loop {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let taken = self.at_the_door(&mut state).and_then(|at_the_door| {
                if at_the_door {
                    self.try_take(&mut state)
                } else {
                    Ok(false)
                }
            });
            match taken {
                Ok(true) => {
                    self.leave_the_door(&mut state);
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    self.leave_the_door(&mut state);
                    crate::say!(
                        "spawner: warning: the home's run slots in {} cannot be used ({e}); this run is bounded by its own process's gate only",
                        self.dir.display()
                    );
                    state.unbacked += 1;
                    return true;
                }
            }
            drop(state);
            if give_up() {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                self.leave_the_door(&mut state);
                return false;
            }
            std::thread::sleep(HOME_SLOT_POLL);
        }
    }

    /// Give back one slot this process's runs hold (they are all alike).
    fn give_back(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.unbacked > 0 {
            state.unbacked -= 1;
        } else if let Some(slot) = state.held.pop()
            && let Some(file) = &state.files[slot]
        {
            // Unlocking an open file that this process locked cannot fail; were it to,
            // the lock would still end with the process.
            let _ = file.unlock();
        }
    }

    /// Count one more slot held without its file (a lent slot not taken back: see
    /// [`Lent`]'s drop).
    fn keep_count(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unbacked += 1;
    }

    /// Whether a run of this process waits at the door.
    #[cfg(test)]
    fn waiting_at_the_door(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.door_holder.is_some()
    }

    /// How many slots this process's runs hold.
    #[cfg(test)]
    fn held(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.held.len() + state.unbacked
    }
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
            home: None,
        }
    }

    /// A gate whose runs are also bounded with those of the home's other processes (its
    /// [`HomeSlots`] in [`agent_contract::Home::slots_dir`]); where that directory cannot
    /// be made, this process's own bound, with a warning.
    pub fn for_home(
        home: &agent_contract::Home,
        max_running: usize,
        max_queued: usize,
    ) -> Admission {
        let gate = Admission::new(max_running, max_queued);
        match HomeSlots::new(&home.slots_dir(), gate.max_running) {
            Ok(slots) => gate.sharing(slots),
            Err(e) => {
                crate::say!(
                    "spawner: warning: cannot make the home's run slots in {} ({e}); runs are bounded within this process only",
                    home.slots_dir().display()
                );
                gate
            }
        }
    }

    /// The home's slots this gate shares, if it does.
    pub fn home_slots(&self) -> Option<&HomeSlots> {
        self.home.as_ref()
    }

    /// This gate, its runs also bounded by `slots` with every other process's.
    pub fn sharing(mut self, slots: HomeSlots) -> Admission {
        self.home = Some(slots);
        self
    }

    /// Take a slot of the home's, for a run this gate has just counted; when `give_up`
    /// says so first, uncount it and say false.
    fn take_home_slot(&self, give_up: &dyn Fn() -> bool) -> bool {
        let Some(home) = &self.home else {
            return true;
        };
        if home.take(give_up) {
            return true;
        }
        self.uncount();
        false
    }

    /// One run fewer holds a slot of this gate: wake a waiter.
    fn uncount(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.running -= 1;
        drop(state);
        self.slot_freed.notify_one();
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
        if state.running >= self.max_running {
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
        }
        state.running += 1;
        drop(state);
        self.take_home_slot(&|| false);
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
        drop(state);
        self.take_home_slot(give_up).then(|| Permit { gate: self })
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
        if let Some(home) = &self.home {
            home.give_back();
        }
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
            if let Some(home) = &self.gate.home {
                home.keep_count();
            }
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
        if let Some(home) = &self.gate.home {
            home.give_back();
        }
        self.gate.uncount();
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

    /// Two gates of one slot each over the same files: as two processes, since locks of
    /// two open files conflict even within one.
    fn two_processes(dir: &Path) -> (Admission, Admission) {
        let gate =
            || Admission::new(1, 0).sharing(HomeSlots::new(&dir.join("slots"), 1).expect("slots"));
        (gate(), gate())
    }

    fn home_slots(gate: &Admission) -> &HomeSlots {
        gate.home_slots().expect("backed")
    }

    #[test]
    fn gates_sharing_the_home_slots_are_bounded_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = two_processes(dir.path());
        let held = first.enter().expect("a slot");
        assert_eq!(home_slots(&first).held(), 1);
        // The other process's gate has room of its own, but the home's one slot is held.
        assert!(!home_slots(&second).take(&|| true));
        assert_eq!(home_slots(&second).held(), 0);
        // A waiter gets in once the slot is given back.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _permit = second.enter_waiting();
                home_slots(&second).held()
            });
            drop(held);
            assert_eq!(waiter.join().expect("admitted"), 1);
        });
        assert_eq!(home_slots(&first).held() + home_slots(&second).held(), 0);
        assert_eq!(second.counts(), Counts::default());
    }

    #[test]
    fn a_lent_slot_is_free_to_the_home_until_it_is_taken_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (parent_gate, other) = two_processes(dir.path());
        let parent = parent_gate.enter().expect("a slot");
        let lent = parent_gate.lend();
        assert_eq!(home_slots(&parent_gate).held(), 0);
        assert!(home_slots(&other).take(&|| true), "the lent slot is free");
        home_slots(&other).give_back();
        lent.take_back();
        assert_eq!(home_slots(&parent_gate).held(), 1);
        assert!(!home_slots(&other).take(&|| true), "taken back");
        drop(parent);
        assert!(home_slots(&other).take(&|| true));
    }

    #[test]
    fn a_waiter_that_gives_up_is_not_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = two_processes(dir.path());
        let _held = first.enter().expect("a slot");
        let asked = std::sync::atomic::AtomicUsize::new(0);
        // Not given up while waiting on its own gate (free), given up on the home's.
        let give_up = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 2;
        assert!(second.enter_waiting_unless(&give_up).is_none());
        assert_eq!(second.counts(), Counts::default());
        assert_eq!(home_slots(&second).held(), 0);
        assert!(
            !home_slots(&second).waiting_at_the_door(),
            "the door is left"
        );
    }

    #[test]
    fn slots_of_a_process_that_ends_are_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = two_processes(dir.path());
        let held = first.enter().expect("a slot");
        std::mem::forget(held);
        assert!(!home_slots(&second).take(&|| true));
        // The files close with the process (here: with the gate).
        drop(first);
        assert!(home_slots(&second).take(&|| true));
    }

    #[test]
    fn a_slot_freed_goes_to_the_run_waiting_at_the_door_not_to_its_processs_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = two_processes(dir.path());
        let (first, second) = (home_slots(&first), home_slots(&second));
        assert!(first.take(&|| true));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| second.take(&|| false));
            while !second.waiting_at_the_door() {
                std::thread::yield_now();
            }
            // The first process gives its slot back and asks again at once: the other's
            // waiting run is ahead of it.
            first.give_back();
            assert!(!first.take(&|| true), "the waiting run was passed over");
            assert!(waiter.join().expect("the waiter ends"));
        });
        assert_eq!((first.held(), second.held()), (0, 1));
        assert!(!second.waiting_at_the_door());
    }

    #[test]
    fn a_process_of_a_smaller_bound_uses_the_slots_a_larger_one_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = dir.path().join("slots");
        let small = HomeSlots::new(&slots, 1).expect("slots");
        let large = HomeSlots::new(&slots, 2).expect("slots");
        large.open_all().expect("open");
        assert!(large.take(&|| true), "slot 0");
        assert!(
            small.take(&|| true),
            "slot 1, which the larger process made"
        );
        assert!(!large.take(&|| true), "the home's bound, 2, is reached");
        small.give_back();
        assert!(large.take(&|| true));
    }
}
