//! The timed event queue: earliest first, and among equal times first scheduled first, so a run
//! never depends on heap internals.

use mesh_core::Timestamp;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

pub(crate) struct Queue<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    seq: u64,
}

struct Entry<E> {
    at: Timestamp,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<E> Queue<E> {
    pub(crate) fn new() -> Self {
        Queue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    pub(crate) fn push(&mut self, at: Timestamp, event: E) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// The next event at or before `until`.
    pub(crate) fn pop_until(&mut self, until: Timestamp) -> Option<(Timestamp, E)> {
        if self.heap.peek()?.0.at > until {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.at, e.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_insertion_order() {
        let mut q = Queue::new();
        q.push(Timestamp::from_secs(2), "late");
        q.push(Timestamp::from_secs(1), "a");
        q.push(Timestamp::from_secs(1), "b");
        q.push(Timestamp::from_secs(9), "after the end");
        let until = Timestamp::from_secs(5);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_until(until).map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "late"]);
    }
}
