//! A deterministic simulator of a whole Raft group, for tests: the real engine under
//! a simulated network (loss, duplication, reordering, delay, partitions both ways),
//! disk (crashes lose what was not flushed) and clock (jitter), seed by seed.
//!
//! Everything random comes from one seed, so a failing seed replays exactly:
//! `RINGLOG_SIM_SEED=<seed> cargo test --release --lib sim::tests::replay_seed -- --nocapture`;
//! add `RINGLOG_SIM_TRACE_FROM=<tick>` to print every event and command from that tick.
//!
//! Clients also trim the log through the leader, and retention purges members'
//! logs (`lifecycle`); disks keep whole segments, as the WAL does.
//!
//! In some seeds one member misbehaves (`liar`): it also sends messages that break
//! the protocol's rules in ways a receiver can detect, and every other member must
//! refuse them, and only them.
//!
//! In some seeds an operator changes the membership (`operator`): spare members,
//! started knowing nobody, are added as learners, promoted, and members removed,
//! the leader included; removed members are stopped, and some wiped and added again.

mod checker;
mod commands;
mod disk;
mod faults;
mod liar;
mod lifecycle;
mod network;
mod operator;
mod stuck;
#[cfg(test)]
mod tests;
mod workload;

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::engine::rng::Rng;
use crate::engine::{Command, Config, Engine, Event, Index, Membership, Message, NodeId};
use checker::{Check, Checker};
use disk::Disk;
use network::Network;

pub use crate::engine::config::PlantedBug;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u32,
    /// Ticks with faults injected, then up to `heal_ticks` fault-free for liveness.
    pub fault_ticks: u64,
    pub heal_ticks: u64,
    pub planted_bug: Option<PlantedBug>,
    /// One member, chosen by the seed, sends detectably wrong messages too.
    pub misbehaving: bool,
    /// Members beyond the bootstrap ones, started knowing nobody, for the operator
    /// to add.
    pub spares: u32,
    /// An operator changes the membership during the faults.
    pub membership_changes: bool,
}

impl SimConfig {
    /// The configuration a seed stands for: even seeds 3 members, odd seeds 5; one
    /// seed in three has an operator changing the membership, with two spares.
    /// (The others draw exactly what they drew before membership changes existed,
    /// so that their regression seeds still replay.)
    pub fn for_seed(seed: u64) -> SimConfig {
        let membership_changes = seed % 3 == 1;
        SimConfig {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            fault_ticks: 400,
            heal_ticks: 600,
            planted_bug: None,
            misbehaving: seed % 8 == 5,
            spares: if membership_changes { 2 } else { 0 },
            membership_changes,
        }
    }

    /// The same seed with the operator at work, and two spares.
    pub fn with_membership_changes(self) -> SimConfig {
        SimConfig {
            spares: 2,
            membership_changes: true,
            ..self
        }
    }

    /// Every member, the spares included.
    pub fn total_nodes(&self) -> u32 {
        self.nodes + self.spares
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    pub trace_hash: u64,
    pub steps: u64,
    pub committed: usize,
    pub acked_records: u64,
    pub unknown: usize,
    pub reads_ok: u64,
    pub trims_acked: u64,
    /// Reads served with a record, and refused as out of range.
    pub records_read: u64,
    pub reads_out_of_range: u64,
    /// Purges members carried out (retention and trims), and log resets (LogStart).
    pub purges: u64,
    pub log_resets: u64,
    pub crashes: u32,
    /// Crashes whose recovery cut the log at a corruption (the member then abstains
    /// from elections until it has caught up).
    pub lost_tails: u32,
    /// AppendEntries whose entries had to be read back from disk.
    pub log_reads: u64,
    /// Messages of the misbehaving member the others refused.
    pub refusals: u64,
    /// What the operator's membership changes came to.
    pub changes: operator::ChangeCounts,
    /// The run ended with no member electable while one abstained after a lost
    /// tail (src/sim/stuck.rs): the safety checks ran, convergence could not.
    pub stuck_after_lost_tail: bool,
}

struct Node {
    engine: Option<Engine>,
    disk: Disk,
    /// Messages waiting for their durability condition.
    held: Vec<(u64, Message)>,
    flush_at: Option<u64>,
    down_until: u64,
    /// A crash the nemesis has scheduled (a fresh leader dies before its no-op
    /// spreads: the raw material of Raft's figure 8).
    crash_at: Option<u64>,
    incarnation: u64,
    /// Client requests this incarnation holds.
    requests: Vec<u64>,
    /// The member's log start as commands of the current batch are carried out:
    /// a Commit early in a batch checks the entries a purge later in it removed
    /// (they are on disk until the purge is).
    batch_start: Index,
    /// The highest `before` retention asked this member to purge (in any run).
    retention_before: Index,
    /// What the member starts from when its disk holds no configuration: the
    /// bootstrap members for the first ones, nobody for spares and wiped members.
    bootstrap: Membership,
    /// The membership in force as its commands are carried out
    /// (`Command::MembershipChanged`).
    in_force: Membership,
    /// The operator asked to remove this member (since its last wipe), and what
    /// becomes of it once that commits: it is never added again unless wiped.
    after_removal: Option<operator::AfterRemoval>,
    /// Stopped by the operator after its removal committed: not restarted.
    retired: bool,
    /// The tick the operator wiped its disk, if it did since it was last added.
    wiped_at: Option<u64>,
}

struct Sim {
    config: SimConfig,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    network: Network,
    checker: Checker,
    hasher: DefaultHasher,
    steps: u64,
    next_request: u64,
    crashes: u32,
    lost_tails: u32,
    log_reads: u64,
    /// Messages the members refused (see `Command::RefusePeer`).
    refusals: u64,
    purges: u64,
    log_resets: u64,
    records_read: u64,
    reads_out_of_range: u64,
    /// Reads the current batch answered (index, what they must not see), served
    /// once all its commands are carried out.
    reads_to_serve: Vec<(Index, checker::ReadFloor)>,
    /// Memberships the current batch took into force, checked once all its
    /// commands are carried out.
    memberships_to_check: Vec<(NodeId, Membership)>,
    /// The misbehaving member, in seeds that have one.
    liar: Option<NodeId>,
    healed: bool,
    /// Acknowledged records when the faults ended.
    heal_acked_base: u64,
    /// `RINGLOG_SIM_TRACE_FROM=<tick>`: print every event and command from then on.
    trace_from: Option<u64>,
    operator: operator::Operator,
}

/// Runs one seed; `Err` names the broken property, the tick and the seed.
pub fn run(config: SimConfig) -> Result<SimReport, String> {
    let seed = config.seed;
    let mut replay_env = String::new();
    if config.membership_changes && !SimConfig::for_seed(seed).membership_changes {
        replay_env += "RINGLOG_SIM_MEMBERSHIP=1 ";
    }
    if let Some(bug) = config.planted_bug {
        replay_env += &format!("RINGLOG_SIM_BUG={bug:?} ");
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(config).run()));
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("engine panicked: {text}"))
        }
    };
    result.map_err(|violation| {
        format!(
            "seed {seed}: {violation}\nreplay: {replay_env}RINGLOG_SIM_SEED={seed} cargo test --release --lib sim::tests::replay_seed -- --nocapture"
        )
    })
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let liar = config
            .misbehaving
            .then(|| (config.seed / 8 % u64::from(config.nodes)) as NodeId + 1);
        let bootstrap = Membership::of_voters(&(1..=config.nodes).collect::<Vec<_>>());
        let nodes = (0..config.total_nodes())
            .map(|k| Node {
                engine: None,
                disk: Disk::new(),
                held: Vec::new(),
                flush_at: None,
                down_until: 0,
                crash_at: None,
                incarnation: 0,
                requests: Vec::new(),
                batch_start: 1,
                retention_before: 0,
                bootstrap: if k < config.nodes {
                    bootstrap.clone()
                } else {
                    Membership::default()
                },
                in_force: Membership::default(),
                after_removal: None,
                retired: false,
                wiped_at: None,
            })
            .collect();
        let mut sim = Sim {
            rng: Rng::new(config.seed),
            network: Network::new(config.total_nodes()),
            checker: Checker::new(bootstrap),
            config,
            now: 0,
            nodes,
            hasher: DefaultHasher::new(),
            steps: 0,
            next_request: 1,
            crashes: 0,
            lost_tails: 0,
            log_reads: 0,
            refusals: 0,
            purges: 0,
            log_resets: 0,
            records_read: 0,
            reads_out_of_range: 0,
            reads_to_serve: Vec::new(),
            memberships_to_check: Vec::new(),
            liar,
            healed: false,
            heal_acked_base: 0,
            trace_from: std::env::var("RINGLOG_SIM_TRACE_FROM")
                .ok()
                .and_then(|v| v.parse().ok()),
            operator: operator::Operator::default(),
        };
        for k in 0..sim.nodes.len() {
            sim.start_node(k);
        }
        sim
    }

    fn start_node(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        node.incarnation += 1;
        // Small, seed-chosen limits split batches across messages and fill windows,
        // so that pipelining, probing and back-pressure all get exercised.
        let mut limits = Rng::new(self.config.seed);
        let config = Config {
            entries_per_msg_max: limits.range(1, 9) as usize,
            inflight_msgs_max: limits.range(1, 9) as usize,
            bytes_per_msg_max: limits.range(20, 200),
            inflight_bytes_max: limits.range(100, 2000),
            pending_appends_max: limits.range(4, 64) as usize,
            log_cache_bytes_max: limits.range(1, 2000),
            entry_payload_bytes_max: liar::ENTRY_PAYLOAD_BYTES_MAX,
            received_entries_bytes_max: liar::RECEIVED_ENTRIES_BYTES_MAX,
            ..Config::default()
        };
        let seed = self.config.seed ^ ((k as u64) << 32) ^ (node.incarnation << 48);
        let tail_len = self.rng.range(0, 20) as usize;
        let mut engine = Engine::new(
            k as NodeId + 1,
            &node.bootstrap,
            config,
            seed,
            node.disk.recover(tail_len),
        )
        .expect("valid simulated member");
        engine.plant_bug(self.config.planted_bug);
        node.in_force = engine.membership().clone();
        node.engine = Some(engine);
        self.checker.restarted(k as NodeId + 1);
        let in_force = self.nodes[k].in_force.clone();
        self.checker
            .on_membership_changed(k as NodeId + 1, &in_force)
            .unwrap_or_else(|violation| panic!("at restart: {violation}"));
    }

    fn run(mut self) -> Result<SimReport, String> {
        while self.now < self.config.fault_ticks {
            self.inject_faults()?;
            self.tick()?;
        }
        self.heal();
        // Catching up is bounded by the smallest windows a seed may choose (one
        // entry per round trip), so the bound grows with what is left to copy.
        let deadline = self.now + self.config.heal_ticks + 4 * self.catch_up_entries();
        let mut sentinel_acked = false;
        let mut stuck_after_lost_tail = false;
        while !(sentinel_acked && self.converged()) {
            if self.now >= deadline {
                if !self.stuck_by_abstention() {
                    return Err(self.liveness_report(deadline));
                }
                stuck_after_lost_tail = true;
                break;
            }
            sentinel_acked |= self.drive_heal_workload()?;
            self.tick()?;
        }
        self.final_checks()?;
        if !stuck_after_lost_tail {
            self.check_final_starts()?;
        }
        Ok(SimReport {
            trace_hash: self.hasher.finish(),
            steps: self.steps,
            committed: self.checker.committed_len(),
            acked_records: self.checker.acked_records,
            unknown: self.checker.unknown,
            reads_ok: self.checker.reads_ok,
            trims_acked: self.checker.trims_acked,
            records_read: self.records_read,
            reads_out_of_range: self.reads_out_of_range,
            purges: self.purges,
            log_resets: self.log_resets,
            crashes: self.crashes,
            lost_tails: self.lost_tails,
            log_reads: self.log_reads,
            refusals: self.refusals,
            changes: self.operator.counts,
            stuck_after_lost_tail,
        })
    }

    /// One unit of simulated time: clocks, clients, network, disks.
    fn tick(&mut self) -> Check {
        self.now += 1;
        for k in 0..self.nodes.len() {
            if self.nodes[k].engine.is_none() {
                continue;
            }
            // Clock jitter: a member's clock sometimes skips or doubles a tick.
            let ticks = match self.rng.range(0, 20) {
                0 => 0,
                1 => 2,
                _ => 1,
            };
            for _ in 0..ticks {
                self.step(k, Event::Tick)?;
            }
        }
        if !self.healed {
            self.client_workload()?;
        }
        self.deliver_messages()?;
        for k in 0..self.nodes.len() {
            if self.nodes[k].flush_at.is_some_and(|at| at <= self.now) {
                self.nodes[k].flush_at = None;
                let op = self.nodes[k].disk.flush();
                self.step(k, Event::Durable { op })?;
            }
            // The runtime removes its abstention marker once the member votes again.
            let node = &self.nodes[k];
            if node.engine.as_ref().is_some_and(|e| !e.is_abstaining())
                && node.disk.lost_tail_in_term.is_some()
            {
                if self.tracing() {
                    eprintln!("t={} member {} ends its abstention", self.now, k + 1);
                }
                self.nodes[k].disk.lost_tail_in_term = None;
            }
        }
        Ok(())
    }

    /// Delivers the messages due, one step each or, on some ticks, all of a
    /// member's in one batch as a runtime turn would.
    fn deliver_messages(&mut self) -> Check {
        let due = self.network.due(self.now, &mut self.rng);
        let batched = self.rng.chance(1, 2);
        let mut per_member: Vec<Vec<Event>> = vec![Vec::new(); self.nodes.len()];
        for msg in due {
            let k = (msg.to - 1) as usize;
            if batched {
                per_member[k].push(Event::Message(msg));
            } else if self.nodes[k].engine.is_some() {
                self.step(k, Event::Message(msg))?;
            }
        }
        for (k, events) in per_member.into_iter().enumerate() {
            if !events.is_empty() && self.nodes[k].engine.is_some() {
                self.step_batch(k, events)?;
            }
        }
        Ok(())
    }

    /// Whether `RINGLOG_SIM_TRACE_FROM` asks for a trace at this tick.
    fn tracing(&self) -> bool {
        self.trace_from.is_some_and(|from| self.now >= from)
    }

    fn step(&mut self, k: usize, event: Event) -> Check {
        self.step_batch(k, vec![event])
    }

    /// Feeds a runtime turn's worth of events to member `k` and carries out what
    /// it decides.
    fn step_batch(&mut self, k: usize, events: Vec<Event>) -> Check {
        self.steps += events.len() as u64;
        (self.now, k, &events).hash(&mut self.hasher);
        for event in &events {
            if let Event::Durable { op } = *event {
                for msg in extract_ready(&mut self.nodes[k].held, op) {
                    self.network.send(msg, self.now, &mut self.rng);
                }
            }
        }
        let tracing = self.tracing() && events != [Event::Tick];
        if tracing {
            eprintln!("t={} member {} <- {events:?}", self.now, k + 1);
        }
        let node = &mut self.nodes[k];
        let engine = node.engine.as_mut().expect("step on a live member");
        node.batch_start = engine.log().start();
        engine.step_batch(events);
        engine.check_invariants();
        let commands = engine.take_commands();
        // A reset drops entries not yet on disk: a Commit before it in the batch
        // checks only from the start after the batch, as the log no longer has them.
        if commands
            .iter()
            .any(|c| matches!(c, Command::ResetLog { .. }))
        {
            node.batch_start = engine.log().start();
        }
        commands.hash(&mut self.hasher);
        for command in commands {
            if tracing {
                eprintln!("    -> {command:?}");
            }
            self.carry_out(k, command)?;
        }
        // Reads are served from the member's state after its whole batch, as the
        // runtime serves them, and checked against everything the batch committed.
        for (index, floor) in std::mem::take(&mut self.reads_to_serve) {
            self.serve_read(k, index, floor)?;
        }
        for (id, membership) in std::mem::take(&mut self.memberships_to_check) {
            self.checker.on_membership_changed(id, &membership)?;
        }
        Ok(())
    }
}

fn extract_ready(held: &mut Vec<(u64, Message)>, op: u64) -> Vec<Message> {
    let (ready, waiting): (Vec<_>, Vec<_>) = held.drain(..).partition(|(after, _)| *after <= op);
    *held = waiting;
    ready.into_iter().map(|(_, msg)| msg).collect()
}
