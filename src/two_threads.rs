//! A list of tasks in phases, run by one or two threads that claim tasks in list order and
//! spin on the completion of the previous phase (issue 7: the sparse block's factor).
//!
//! Why not `rayon::join` per phase: on the development VM a join whose second half has to wake
//! the other worker costs about as much as a dense update of a few hundred columns, so faer's
//! parallel Cholesky of InstEval's 705-column top block (rayon joins at every level) was slower
//! than its sequential one (2.2 against 1.8 ms). One join for the whole list, with both threads
//! busy-waiting between phases, factors the same block in 1.25–1.3 ms.
//!
//! Tasks are claimed from one counter, so a task waits only for tasks claimed before it, which
//! the other thread is running: no deadlock, also when the second thread never starts (a busy
//! or one-thread pool), and then the first runs every task in order. What a task computes does
//! not depend on which thread runs it, so one and two threads give the same bits.
//!
//! A task that fails reports an index (a pivot); tasks after the first failure in list order
//! are not started, and the failure of the lowest-numbered task is returned, the one a single
//! thread would meet first.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Tasks with the phase of each; a task starts when every task of the phase before its own has
/// finished. Phases are numbered from 0 and do not decrease along the list.
#[derive(Debug, Clone)]
pub(crate) struct PhasedTasks<T> {
    tasks: Vec<(usize, T)>,
    phase_len: Vec<usize>,
}

impl<T> PhasedTasks<T> {
    pub(crate) fn new() -> Self {
        PhasedTasks {
            tasks: Vec::new(),
            phase_len: Vec::new(),
        }
    }

    /// Starts a new phase; the tasks pushed next belong to it.
    pub(crate) fn phase(&mut self) {
        if self.phase_len.last() != Some(&0) {
            self.phase_len.push(0);
        }
    }

    pub(crate) fn push(&mut self, task: T) {
        if self.phase_len.is_empty() {
            self.phase_len.push(0);
        }
        let phase = self.phase_len.len() - 1;
        *self.phase_len.last_mut().unwrap() += 1;
        self.tasks.push((phase, task));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }
}

const NO_FAILURE: usize = usize::MAX;

/// Busy-wait iterations before a waiting thread starts yielding its core. Measured on InstEval's
/// objective (medians of 300): alone, 4.7–4.8 ms with 2¹⁰ and 2¹² spins, 4.9 ms with 2⁸; two
/// processes on the two cores at once, 6.6 ms with 2¹⁰, 6.8 ms with 2⁸, 7.3 ms with 2¹², 7.9 ms
/// spinning without yielding, against 6.1 ms for each on one thread (`RAYON_NUM_THREADS=1`).
const SPINS_BEFORE_YIELD: u32 = 1 << 10;

/// Sets the failure mark if a task panics, so that the other thread stops waiting for it; the
/// panic itself goes on to `rayon::join`, which re-raises it once both halves have returned.
struct PanicGuard<'a>(&'a AtomicUsize);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(0, Ordering::Release);
        }
    }
}

/// Runs `list` on one thread or, with `two`, on two (one `rayon::join`), each with its own
/// scratch. `execute(task, scratch)` returns a value, kept by task, or a failure index. Returns the
/// values in list order, or the failure of the lowest-numbered failing task.
pub(crate) fn run<T: Sync, S: Send>(
    list: &PhasedTasks<T>,
    two: bool,
    scratch: [&mut S; 2],
    execute: impl Fn(&T, &mut S) -> Result<f64, usize> + Sync,
) -> Result<Vec<f64>, usize> {
    let next = AtomicUsize::new(0);
    let done: Vec<AtomicUsize> = list.phase_len.iter().map(|_| AtomicUsize::new(0)).collect();
    // The lowest index of a failed task, and that task's failure.
    let failed_task = AtomicUsize::new(NO_FAILURE);
    let failure = AtomicUsize::new(0);
    let values: Vec<AtomicU64> = list.tasks.iter().map(|_| AtomicU64::new(0)).collect();
    let worker = |scratch: &mut S| {
        let _guard = PanicGuard(&failed_task);
        loop {
            let i = next.fetch_add(1, Ordering::AcqRel);
            if i >= list.tasks.len() {
                return;
            }
            let (phase, task) = &list.tasks[i];
            if *phase > 0 {
                let mut spins = 0u32;
                while done[phase - 1].load(Ordering::Acquire) < list.phase_len[phase - 1] {
                    if failed_task.load(Ordering::Acquire) < i {
                        return;
                    }
                    // Spin first: the other thread is normally a few microseconds from done.
                    // Then yield, so that a machine with more runnable threads than cores can
                    // run the one being waited for.
                    if spins < SPINS_BEFORE_YIELD {
                        spins += 1;
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
            if failed_task.load(Ordering::Acquire) < i {
                return;
            }
            match execute(task, scratch) {
                Ok(v) => values[i].store(v.to_bits(), Ordering::Relaxed),
                Err(index) => {
                    // Record the lowest failing task's index and failure together.
                    let mut current = failed_task.load(Ordering::Acquire);
                    while i < current {
                        match failed_task.compare_exchange(current, i, Ordering::AcqRel, Ordering::Acquire) {
                            Ok(_) => {
                                failure.store(index, Ordering::Release);
                                break;
                            }
                            Err(now) => current = now,
                        }
                    }
                    return;
                }
            }
            done[*phase].fetch_add(1, Ordering::AcqRel);
        }
    };
    let [first, second] = scratch;
    if two {
        rayon::join(|| worker(first), || worker(second));
    } else {
        worker(first);
    }
    if failed_task.load(Ordering::Acquire) != NO_FAILURE {
        return Err(failure.load(Ordering::Acquire));
    }
    Ok(values.iter().map(|v| f64::from_bits(v.load(Ordering::Relaxed))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_run_in_order_on_one_or_two_threads() {
        // Each task of phase p reads the sum written by phase p − 1 (a cell per task) and
        // writes its own: any task run before its phase's predecessors would read a zero.
        let mut list = PhasedTasks::new();
        for phase in 0..20 {
            list.phase();
            for k in 0..(1 + phase % 3) {
                list.push((phase, k));
            }
        }
        let cells: Vec<AtomicU64> = (0..list.len()).map(|_| AtomicU64::new(0)).collect();
        let starts: Vec<usize> = {
            let mut s = vec![0];
            for phase in 0..20 {
                s.push(s[phase] + 1 + phase % 3);
            }
            s
        };
        for two in [false, true] {
            cells.iter().for_each(|c| c.store(0, Ordering::Relaxed));
            let (mut a, mut b) = ((), ());
            let values = run(&list, two, [&mut a, &mut b], |&(phase, k), _| {
                let before: f64 = if phase == 0 {
                    1.0
                } else {
                    (starts[phase - 1]..starts[phase]).map(|i| f64::from_bits(cells[i].load(Ordering::Acquire))).sum()
                };
                assert!(before > 0.0, "phase {phase} started before phase {} finished", phase.max(1) - 1);
                std::thread::sleep(std::time::Duration::from_micros(50));
                cells[starts[phase] + k].store(before.to_bits(), Ordering::Release);
                Ok(before + k as f64)
            })
            .unwrap();
            assert_eq!(values.len(), list.len());
        }
    }

    #[test]
    fn the_lowest_failing_task_is_reported_and_later_ones_do_not_start() {
        let mut list = PhasedTasks::new();
        for phase in 0..6 {
            list.phase();
            for k in 0..4 {
                list.push(phase * 4 + k);
            }
        }
        let started = AtomicUsize::new(0);
        for two in [false, true] {
            started.store(0, Ordering::Relaxed);
            let (mut a, mut b) = ((), ());
            let result = run(&list, two, [&mut a, &mut b], |&i, _| {
                started.fetch_max(i, Ordering::Relaxed);
                match i {
                    9 => Err(109),
                    10 => Err(110),
                    _ => Ok(0.0),
                }
            });
            assert_eq!(result, Err(109));
            // Phase 3 (tasks 12 on) waits for phase 2, which failed.
            assert!(started.load(Ordering::Relaxed) < 12);
        }
    }
}
