//! The chaos workload: writers appending unique records (one operation at a time
//! each, batches of one to three records) and one linearizable reader per
//! partition following the log, all recording what they were told; optionally a
//! trimmer per partition removing all but the log's recent tail now and then.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlog::client::{Client, ClientConfig, ClientError};
use ringlog::history::{AppendOp, AppendOutcome, History, ReadOp};
use ringlog::transport::{ReadRequest, ServerError};

use crate::cluster_support::spawn_on_executor;

/// Writers per partition.
const WRITERS_PER_PARTITION: u32 = 3;

/// When one append was invoked and answered, for unavailability figures.
#[derive(Clone, Copy, Debug)]
pub struct OpTiming {
    pub partition: u32,
    pub invoked: Instant,
    pub completed: Instant,
    pub acked: bool,
}

/// Trims requested by the trimmers, by what the client was told.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrimCounts {
    pub acked: usize,
    pub failed: usize,
}

/// How the trimmers trim: every `every`, each partition's records below its commit
/// index less `tail_entries`.
#[derive(Clone, Copy, Debug)]
pub struct Trimming {
    pub every: Duration,
    pub tail_entries: u64,
}

#[derive(Default)]
pub struct Recorded {
    pub history: History,
    pub timings: Vec<OpTiming>,
    pub trims: TrimCounts,
}

pub struct Workload {
    thread: JoinHandle<Recorded>,
}

impl Workload {
    pub fn start(addrs: Vec<String>, partitions: u32, stop: Arc<AtomicBool>) -> Workload {
        Workload::start_trimming(addrs, partitions, stop, None)
    }

    /// Like `start`, with a trimmer per partition when `trimming` says how.
    pub fn start_trimming(
        addrs: Vec<String>,
        partitions: u32,
        stop: Arc<AtomicBool>,
        trimming: Option<Trimming>,
    ) -> Workload {
        let thread = spawn_on_executor(async move || run(addrs, partitions, stop, trimming).await);
        Workload { thread }
    }

    /// Waits for every client to finish its current operation (after `stop`).
    pub fn join(self) -> (History, Vec<OpTiming>) {
        let recorded = self.join_all();
        (recorded.history, recorded.timings)
    }

    /// `join`, with the trims' outcomes.
    pub fn join_all(self) -> Recorded {
        self.thread.join().expect("workload thread")
    }
}

async fn run(
    addrs: Vec<String>,
    partitions: u32,
    stop: Arc<AtomicBool>,
    trimming: Option<Trimming>,
) -> Recorded {
    let recorded = Rc::new(RefCell::new(Recorded::default()));
    let mut tasks = Vec::new();
    let mut next_id = 0;
    let mut worker = |partition| {
        next_id += 1;
        Worker {
            id: next_id,
            partition,
            client: chaos_client(addrs.clone()),
            stop: stop.clone(),
            recorded: recorded.clone(),
        }
    };
    for partition in 0..partitions {
        for _ in 0..WRITERS_PER_PARTITION {
            tasks.push(glommio::spawn_local(writer(worker(partition))));
        }
        tasks.push(glommio::spawn_local(reader(worker(partition))));
        if let Some(trimming) = trimming {
            tasks.push(glommio::spawn_local(trimmer(worker(partition), trimming)));
        }
    }
    for task in tasks {
        task.await;
    }
    Rc::try_unwrap(recorded)
        .ok()
        .expect("every task done")
        .into_inner()
}

fn chaos_client(addrs: Vec<String>) -> Client {
    let mut config = ClientConfig::new(addrs);
    config.tls = crate::cluster_support::tls::client_tls();
    config.request_timeout_ms = 2_000;
    config.connect_timeout_ms = 500;
    config.retries_max = 20;
    config.retry_backoff_initial_ms = 10;
    config.retry_backoff_max_ms = 100;
    Client::new(config)
}

/// What an append's failure says about its records: only an answer that leaves
/// the outcome open is Unknown; everything else was refused before it was applied
/// (the client library stops at the first ambiguous answer and retries only
/// refusals).
pub fn classify(error: &ClientError) -> AppendOutcome {
    match error {
        ClientError::AppendAmbiguous { .. }
        | ClientError::Timeout { .. }
        | ClientError::Protocol { .. } => AppendOutcome::Unknown,
        ClientError::RetriesExhausted { last, .. } => classify(last),
        _ => AppendOutcome::Refused,
    }
}

/// One client of the workload and where it records what it was told.
struct Worker {
    id: u32,
    partition: u32,
    client: Client,
    stop: Arc<AtomicBool>,
    recorded: Rc<RefCell<Recorded>>,
}

async fn writer(w: Worker) {
    let mut seq = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let batch = 1 + seq % 3;
        let records: Vec<Bytes> = (0..batch)
            .map(|k| Bytes::from(format!("client {} append {seq} record {k}", w.id)))
            .collect();
        seq += 1;
        let invoked = Instant::now();
        let result = w.client.append(w.partition, records.clone()).await;
        let completed = Instant::now();
        let outcome = match &result {
            Ok(ok) => AppendOutcome::Acked {
                first_index: ok.first_index,
            },
            Err(e) => classify(e),
        };
        if let (AppendOutcome::Refused, Err(e)) = (&outcome, &result) {
            // Printed so that a refused append found in a log can be traced.
            eprintln!("chaos: client {} append {} refused: {e:?}", w.id, seq - 1);
        }
        let acked = matches!(outcome, AppendOutcome::Acked { .. });
        {
            let mut r = w.recorded.borrow_mut();
            r.timings.push(OpTiming {
                partition: w.partition,
                invoked,
                completed,
                acked,
            });
            r.history.appends.push(AppendOp {
                client: w.id,
                partition: w.partition,
                records,
                outcome,
            });
        }
        if !acked {
            // A refused or open append usually means a fault is on: don't spin.
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn reader(w: Worker) {
    let mut next = 1;
    while !w.stop.load(Ordering::Relaxed) {
        let request = ReadRequest {
            partition: w.partition,
            from_index: next,
            max_records: 500,
            max_bytes: 1 << 20,
            wait_timeout_ms: 100,
            any_replica: false,
        };
        match w.client.read(request).await {
            Ok(ok) => {
                next = ok.next_from(next);
                w.recorded.borrow_mut().history.reads.push(ReadOp {
                    client: w.id,
                    partition: w.partition,
                    records: ok
                        .records
                        .iter()
                        .map(|r| (r.index, r.payload.clone()))
                        .collect(),
                    commit_index: ok.commit_index,
                });
            }
            // Retention or a trim removed what the reader was about to read: it
            // goes on from the log start (reads there are checked like any other).
            Err(e) if log_start_above(&e, next).is_some() => {
                next = log_start_above(&e, next).expect("just matched");
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The log start an OutOfRange answer names, when it lies above `next`.
fn log_start_above(error: &ClientError, next: u64) -> Option<u64> {
    match error {
        ClientError::Server {
            source: ServerError::OutOfRange { log_start, .. },
            ..
        } if *log_start > next => Some(*log_start),
        ClientError::RetriesExhausted { last, .. } => log_start_above(last, next),
        _ => None,
    }
}

/// Now and then removes the partition's records below its commit index less the
/// tail to keep, through the log like any client trim.
async fn trimmer(w: Worker, trimming: Trimming) {
    while !w.stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(trimming.every).await;
        let Ok(meta) = w.client.metadata().await else {
            continue;
        };
        let Some(p) = meta.partitions.iter().find(|p| p.partition == w.partition) else {
            continue;
        };
        let before = p.commit_index.saturating_sub(trimming.tail_entries);
        if before <= p.log_start || w.stop.load(Ordering::Relaxed) {
            continue;
        }
        let result = w.client.trim(w.partition, before).await;
        let mut r = w.recorded.borrow_mut();
        match result {
            Ok(_) => r.trims.acked += 1,
            Err(_) => r.trims.failed += 1,
        }
    }
}
