//! What a member finds on its disk at start, as the engine takes it.

use super::log::Log;
use super::reconfig;
use super::{Entry, HardState, Index, KnownConfig, Term};

/// What a member finds on its disk at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The first index in the log (1 unless a prefix was purged or reset).
    pub log_start: Index,
    /// The term of the entry at `log_start - 1` (0 for a new log).
    pub log_prev_term: Term,
    /// (first index, term) of each run of entries of one term, from `log_start` on.
    pub term_runs: Vec<(Index, Term)>,
    pub last_index: Index,
    /// The newest entries, ending at `last_index`: as many as the runtime cares to
    /// keep in memory (none is fine; the leader reads older ones from the WAL).
    pub tail: Vec<Entry>,
    /// Set when recovery cut the log at a corruption while the member was in this
    /// term: it may have lost entries it had acknowledged, so it must not help elect
    /// a leader that lacks them. See [`Engine::is_abstaining`].
    pub lost_tail_in_term: Option<Term>,
    /// (index, before) of each trim entry in the log, ascending: each is applied
    /// again once the member learns it is committed.
    pub trims: Vec<(Index, Index)>,
    /// The configurations last saved (`Command::SaveMembership`), ascending; empty
    /// when none was ever saved (the bootstrap membership is in force then).
    pub configs: Vec<KnownConfig>,
}

impl Recovered {
    /// The state of a member that has never run.
    pub fn empty() -> Recovered {
        Recovered {
            log_start: 1,
            ..Recovered::default()
        }
    }

    /// A recovered log given entry by entry (tests and the simulator).
    pub fn from_entries(
        hard_state: HardState,
        log_start: Index,
        log_prev_term: Term,
        entries: Vec<Entry>,
    ) -> Recovered {
        let log = Log::new(log_start, log_prev_term, entries.clone());
        let trims = entries
            .iter()
            .filter_map(|e| Some((e.index, e.trim_before()?)))
            .collect();
        // As the engine saves them: every configuration entry, before it is appended.
        let configs = entries
            .iter()
            .filter_map(|e| reconfig::config_of(e).ok().flatten())
            .collect();
        Recovered {
            hard_state,
            log_start,
            log_prev_term,
            term_runs: log.runs(),
            last_index: log.last_index(),
            tail: entries,
            lost_tail_in_term: None,
            trims,
            configs,
        }
    }
}
