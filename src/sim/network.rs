//! A simulated network: every message gets a random delay (so messages reorder), may
//! be dropped or duplicated, and is cut by partitions, which may be one-way.

use std::collections::BTreeSet;

use crate::engine::rng::Rng;
use crate::engine::{Message, NodeId};

pub struct Network {
    nodes: u32,
    /// (deliver at tick, message), in send order.
    in_flight: Vec<(u64, Message)>,
    /// Directed links that are cut: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub drop_percent: u64,
    pub duplicate_percent: u64,
    pub delay_ticks_max: u64,
    /// Shuffle the messages due in one tick (on top of random delays).
    pub reorder: bool,
    pub sent: u64,
}

impl Network {
    pub fn new(nodes: u32) -> Network {
        Network {
            nodes,
            in_flight: Vec::new(),
            blocked: BTreeSet::new(),
            drop_percent: 0,
            duplicate_percent: 0,
            delay_ticks_max: 2,
            reorder: true,
            sent: 0,
        }
    }

    pub fn send(&mut self, msg: Message, now: u64, rng: &mut Rng) {
        self.sent += 1;
        if self.blocked.contains(&(msg.from, msg.to)) || rng.chance(self.drop_percent, 100) {
            return;
        }
        if rng.chance(self.duplicate_percent, 100) {
            let at = now + rng.range(1, self.delay_ticks_max + 1);
            self.in_flight.push((at, msg.clone()));
        }
        let at = now + rng.range(1, self.delay_ticks_max + 1);
        self.in_flight.push((at, msg));
    }

    /// The messages due by `now` that a partition did not cut, in random order.
    pub fn due(&mut self, now: u64, rng: &mut Rng) -> Vec<Message> {
        let (due, later): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|(at, _)| *at <= now);
        self.in_flight = later;
        let mut out: Vec<Message> = due
            .into_iter()
            .map(|(_, msg)| msg)
            .filter(|msg| !self.blocked.contains(&(msg.from, msg.to)))
            .collect();
        for i in (1..out.len()).rev().filter(|_| self.reorder) {
            let j = rng.range(0, i as u64 + 1) as usize;
            out.swap(i, j);
        }
        out
    }

    /// Cuts every link from a member of `side` to a member outside it, and back
    /// unless `one_way`.
    pub fn partition(&mut self, side: &[NodeId], one_way: bool) {
        for from in 1..=self.nodes {
            for to in 1..=self.nodes {
                let crosses = side.contains(&from) && !side.contains(&to);
                let crosses_back = !one_way && !side.contains(&from) && side.contains(&to);
                if crosses || crosses_back {
                    self.blocked.insert((from, to));
                }
            }
        }
    }

    pub fn heal_partitions(&mut self) {
        self.blocked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{MessageBody, Term};

    fn msg(from: NodeId, to: NodeId, term: Term) -> Message {
        Message {
            from,
            to,
            term,
            body: MessageBody::TimeoutNow,
        }
    }

    #[test]
    fn one_way_partition_cuts_one_direction_only() {
        let mut rng = Rng::new(1);
        let mut net = Network::new(3);
        net.partition(&[1], true);
        net.send(msg(1, 2, 1), 0, &mut rng);
        net.send(msg(2, 1, 1), 0, &mut rng);
        let due = net.due(10, &mut rng);
        assert_eq!(due, vec![msg(2, 1, 1)]);
        net.heal_partitions();
        net.send(msg(1, 2, 1), 10, &mut rng);
        assert_eq!(net.due(20, &mut rng).len(), 1);
    }
}
