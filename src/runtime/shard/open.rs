//! Opening a shard: recover its WAL, check the recovered state, and build the
//! engine and the peer links.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use super::abstention::{ABSTAIN_MARKER_FILE, abstention, mark_abstention_pending};
use super::balance::BALANCE_INTERVAL;
use super::peers::PeerBook;
use super::{LocalInbox, OpenParts, Shard, ShardError};
use crate::engine::{self, Engine, Index, NodeId, Role, Term};
use crate::metrics::ShardMetrics;
use crate::metrics::transfers::TransferMetrics;
use crate::runtime::lifecycle::Lifecycle;
use crate::runtime::reads::Reads;
use crate::runtime::request_map::RequestMap;
use crate::wal::error::WalError;
use crate::wal::log::{Recovered, Wal};
use crate::wal::recovery::RecoveryReport;
use crate::wal::storage::DmaStorage;

impl Shard {
    pub(super) async fn open(
        parts: OpenParts,
        local_inbox: Rc<LocalInbox>,
    ) -> Result<Shard, ShardError> {
        let shard = parts.shard_id;
        let abstain_marker = parts.wal_dir.join(ABSTAIN_MARKER_FILE);
        let flushes_in_flight_max = parts.wal_config.flushes_in_flight_max;
        let wal_limits = parts.wal_config.clone();
        let (wal, recovered) = open_wal(&parts, &abstain_marker).await?;
        let peers: Vec<NodeId> = parts.peer_addrs.keys().copied().collect();
        let metrics = ShardMetrics::new(&parts.metrics, shard, &peers);
        let fsync_seconds = metrics.fsync_seconds.clone();
        wal.observe_syncs(move |took| fsync_seconds.record(took.as_secs_f64()));
        let engine = recover_engine(&parts, &wal, &recovered, &abstain_marker)?;
        let (flushed_tx, flushed_rx) = flume::unbounded();
        let mut lifecycle = Lifecycle::new(
            (parts.node_id, shard),
            parts.lifecycle,
            &parts.wal_dir,
            (&parts.metrics, parts.health.clone()),
        );
        lifecycle.recovered_trims(&recovered.trims, engine.commit_index());
        let wal = Rc::new(wal);
        let mut opened = Shard {
            id: shard,
            wal_limits,
            client_addrs: parts.client_addrs,
            commit: engine.commit_index(),
            term: engine.term(),
            role: Role::Follower,
            leader: None,
            engine,
            reads: Reads::new(parts.read_limits, wal.clone()),
            wal,
            links: BTreeMap::new(),
            peer_book: PeerBook::new(parts.peer_config, parts.metrics.clone(), &parts.peer_addrs),
            inbox: parts.inbox,
            peer_inbox: parts.peer_inbox,
            local_inbox,
            held: Vec::new(),
            durable_op: 0,
            flushes_in_flight: 0,
            flushes_in_flight_max: flushes_in_flight_max.max(1),
            flushed_tx,
            flushed_rx,
            turn_events: Vec::new(),
            turn_commands: Vec::new(),
            next_request: 1,
            appends: RequestMap::default(),
            trims: RequestMap::default(),
            changes: RequestMap::default(),
            barriers: RequestMap::default(),
            tick: parts.tick,
            next_tick: Instant::now() + parts.tick,
            metrics,
            link_closer: parts.link_closer,
            health: parts.health,
            unflushed_entries: 0,
            unflushed_bytes: 0,
            abstain_marker: Some(abstain_marker),
            lifecycle,
            handover: parts.handover,
            hand_over: None,
            // Leaders elected as the nodes come up settle first.
            next_balance: Instant::now() + parts.handover.attempt + BALANCE_INTERVAL,
            transfer_metrics: TransferMetrics::new(&parts.metrics, shard),
        };
        opened.follow_membership();
        Ok(opened)
    }
}

/// What opening shard `shard`'s WAL in `dir` failed with.
fn open_error(shard: u32, dir: &Path) -> impl Fn(WalError) -> ShardError + '_ {
    move |source| ShardError::Open {
        shard,
        dir: dir.display().to_string(),
        source,
    }
}

/// What writing the abstention marker of shard `shard` in `dir` failed with.
fn marker_error(shard: u32, dir: &Path) -> impl Fn(std::io::Error) -> ShardError + '_ {
    let open_error = open_error(shard, dir);
    move |e| {
        open_error(WalError::Io {
            context: format!("recording the abstention in {ABSTAIN_MARKER_FILE}"),
            source: e,
        })
    }
}

/// Opens the shard's WAL; before an open that may cut a corrupt tail, first marks
/// the abstention pending (see [`mark_abstention_pending`]).
async fn open_wal(
    parts: &OpenParts,
    abstain_marker: &Path,
) -> Result<(Wal<DmaStorage>, Recovered), ShardError> {
    let shard = parts.shard_id;
    let open_error = open_error(shard, &parts.wal_dir);
    let storage = DmaStorage::new(&parts.wal_dir)
        .map_err(|e| {
            open_error(WalError::Io {
                context: "creating the WAL directory".into(),
                source: e,
            })
        })?
        .write_through(parts.write_through);
    if parts.wal_config.truncate_corrupt_tail {
        mark_abstention_pending(abstain_marker).map_err(marker_error(shard, &parts.wal_dir))?;
    }
    let (wal, mut recovered) = Wal::open(storage, parts.wal_config.clone())
        .await
        .map_err(&open_error)?;
    for report in &recovered.reports {
        log::warn!("shard {shard}: WAL recovery: {report:?}");
    }
    if recovered.configs.is_empty() {
        // `[[nodes]]` (or, for a joining node, nobody) bootstraps a new member
        // once: saved here, it is what every later start recovers.
        let first = vec![engine::KnownConfig::bootstrap(parts.bootstrap.clone())];
        wal.save_first_membership(&first)
            .await
            .map_err(&open_error)?;
        recovered.configs = first;
    } else if shard == 0 {
        warn_of_edited_nodes(parts, &recovered.configs);
    }
    Ok((wal, recovered))
}

/// `[[nodes]]` is read only when a member's log is new: a node whose config lists
/// other members than those its saved configuration names is told so once.
fn warn_of_edited_nodes(parts: &OpenParts, saved: &[engine::KnownConfig]) {
    let Some(latest) = saved.iter().max_by_key(|c| c.index) else {
        return;
    };
    let configured: Vec<NodeId> = parts.bootstrap.ids().collect();
    let saved: Vec<NodeId> = latest.membership.ids().collect();
    if !configured.is_empty() && configured != saved {
        log::warn!(
            "[[nodes]] lists nodes {configured:?} but the membership in this node's log is {saved:?}: [[nodes]] only bootstraps a new cluster; change members with `ringlog members`"
        );
    }
}

/// Builds the engine from what the WAL recovered, once the hard state is known not
/// to be behind the log and whether the member must abstain is settled.
fn recover_engine(
    parts: &OpenParts,
    wal: &Wal<DmaStorage>,
    recovered: &Recovered,
    abstain_marker: &Path,
) -> Result<Engine, ShardError> {
    let shard = parts.shard_id;
    let truncated = recovered
        .reports
        .iter()
        .any(|r| matches!(r, RecoveryReport::TruncatedCorruption { .. }));
    let lost_tail_in_term = abstention(abstain_marker, truncated, recovered.hard_state.term)
        .map_err(marker_error(shard, &parts.wal_dir))?;
    if lost_tail_in_term.is_some() {
        log::warn!(
            "shard {shard}: the log lost entries to a corruption; this member will not vote or campaign until it has caught up"
        );
    }
    let runs = term_runs(wal, recovered.log_start, recovered.last_index);
    let log_term = runs.last().map_or(recovered.start_prev_term, |&(_, t)| t);
    if log_term > recovered.hard_state.term {
        return Err(ShardError::HardStateBehindLog {
            shard,
            dir: parts.wal_dir.display().to_string(),
            log_term,
            hard_term: recovered.hard_state.term,
        });
    }
    let engine_recovered = engine::Recovered {
        hard_state: recovered.hard_state,
        log_start: recovered.log_start,
        log_prev_term: recovered.start_prev_term,
        term_runs: runs,
        last_index: recovered.last_index,
        tail: Vec::new(),
        lost_tail_in_term,
        trims: recovered.trims.clone(),
        configs: recovered.configs.clone(),
    };
    Ok(Engine::new(
        parts.node_id,
        &parts.bootstrap,
        parts.engine_config.clone(),
        parts.seed,
        engine_recovered,
    )
    .expect("the node config was validated before shards start"))
}

/// The term runs of the recovered log, found by binary search for each term's end
/// (terms never decrease along a log), so recovery costs O(terms × log entries).
fn term_runs(wal: &Wal<DmaStorage>, start: Index, last: Index) -> Vec<(Index, Term)> {
    let mut runs = Vec::new();
    let mut first = start;
    while first <= last {
        let term = wal.term(first).expect("recovered entries have terms");
        runs.push((first, term));
        let (mut low, mut high) = (first, last);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            if wal.term(middle) == Some(term) {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        first = low + 1;
    }
    runs
}
