//! The engine alone: a 3-member cluster in one thread, messages handed over in
//! memory, every disk write complete as soon as it is issued. It measures what the
//! Raft logic itself costs per append, to compare with openraft's
//! `benchmarks/minimal` (in-memory store and network) on the same machine.
//!
//! `cargo bench --bench engine` (or `-- --seconds 5 --runs 5 --record-bytes 256`).
//! Each client keeps one single-record append outstanding (closed loop); each
//! member's turn feeds it everything that arrived since its last turn as one batch,
//! as the runtime does.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlog::engine::{Command, Config, Engine, Event, Membership, Message, Recovered, Role};

struct Cluster {
    engines: Vec<Engine>,
    inbox: Vec<Vec<Event>>,
    /// Messages waiting for their member's disk (which completes within the turn).
    held: Vec<Message>,
    idle_clients: Vec<u64>,
    completed: u64,
    payload: Bytes,
}

impl Cluster {
    fn new(record_bytes: usize) -> Cluster {
        let members = [1, 2, 3];
        let engines = members
            .iter()
            .map(|&id| {
                let recovered = Recovered::empty();
                Engine::new(
                    id,
                    &Membership::of_voters(&members),
                    Config::default(),
                    id as u64,
                    recovered,
                )
                .expect("valid config")
            })
            .collect();
        Cluster {
            engines,
            inbox: vec![Vec::new(); 3],
            held: Vec::new(),
            idle_clients: Vec::new(),
            completed: 0,
            payload: Bytes::from(vec![7u8; record_bytes]),
        }
    }

    fn leader(&self) -> Option<usize> {
        self.engines.iter().position(|e| e.role() == Role::Leader)
    }

    fn elect(&mut self) -> usize {
        for _ in 0..10_000 {
            if let Some(k) = self.leader() {
                return k;
            }
            self.inbox[0].push(Event::Tick);
            for k in 0..3 {
                self.turn(k);
            }
        }
        panic!("no leader elected");
    }

    /// One runtime turn of member `k`.
    fn turn(&mut self, k: usize) {
        let mut events = std::mem::take(&mut self.inbox[k]);
        if self.engines[k].role() == Role::Leader {
            for request_id in self.idle_clients.drain(..) {
                let records = vec![self.payload.clone()];
                events.push(Event::ClientAppend {
                    request_id,
                    records,
                });
            }
        }
        if events.is_empty() {
            return;
        }
        self.engines[k].step_batch(events);
        let written_op = self.carry_out(k);
        if let Some(op) = written_op {
            // The group commit of this turn completes at once.
            self.engines[k].step(Event::Durable { op });
            self.carry_out(k);
            for msg in self.held.drain(..) {
                self.inbox[(msg.to - 1) as usize].push(Event::Message(msg));
            }
        }
    }

    /// Carries out member `k`'s commands; returns the last storage op it issued.
    fn carry_out(&mut self, k: usize) -> Option<u64> {
        let mut last_op = None;
        for command in self.engines[k].take_commands() {
            match command {
                Command::PersistHardState { op, .. }
                | Command::AppendLog { op, .. }
                | Command::TruncateLog { op, .. }
                | Command::ResetLog { op, .. }
                | Command::PurgeLog { op, .. }
                | Command::SaveMembership { op, .. } => last_op = Some(op),
                Command::Send { msg, when: None } => {
                    self.inbox[(msg.to - 1) as usize].push(Event::Message(msg))
                }
                Command::Send { msg, when: Some(_) } => self.held.push(msg),
                Command::AppendResult { request_id, result } => {
                    assert!(result.is_ok(), "append failed: {result:?}");
                    self.completed += 1;
                    self.idle_clients.push(request_id);
                }
                Command::SendLogRange { .. } => panic!("no follower lags past the cache here"),
                Command::RefusePeer { from, fault } => {
                    panic!("honest members never refuse each other: {from} sent {fault}")
                }
                Command::Commit { .. }
                | Command::ReadResult { .. }
                | Command::RoleChanged { .. }
                | Command::MembershipChanged { .. } => {}
            }
        }
        last_op
    }
}

/// Appends per second with `clients` closed-loop clients over `duration`.
fn measure(clients: u64, duration: Duration, record_bytes: usize) -> f64 {
    let mut cluster = Cluster::new(record_bytes);
    cluster.elect();
    cluster.idle_clients = (0..clients).collect();
    let started = Instant::now();
    let mut turns = 0u64;
    loop {
        for k in 0..3 {
            cluster.turn(k);
        }
        turns += 1;
        // Reading the clock every turn would cost more than a turn at one client.
        if turns.is_multiple_of(64) && started.elapsed() >= duration {
            break;
        }
        // Drop what is committed now and then, as retention would, so memory stays flat.
        if turns.is_multiple_of(4096) {
            for inbox in &mut cluster.inbox {
                inbox.push(Event::PurgeLog { before: u64::MAX });
            }
        }
    }
    cluster.completed as f64 / started.elapsed().as_secs_f64()
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    let position = args.iter().position(|a| a == name);
    position
        .and_then(|p| args.get(p + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let seconds = arg("--seconds", 2.0);
    let runs = arg("--runs", 3.0) as usize;
    let record_bytes = arg("--record-bytes", 256.0) as usize;
    println!(
        "engine alone, 3 members in one thread, {record_bytes}-byte records, median of {runs} runs of {seconds} s"
    );
    for clients in [1, 64, 256] {
        let rates: Vec<f64> = (0..runs)
            .map(|_| measure(clients, Duration::from_secs_f64(seconds), record_bytes))
            .collect();
        let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "clients {clients:>3}: {:>10.0} appends/s  (runs: {})",
            median(rates),
            shown.join(", ")
        );
    }
}
