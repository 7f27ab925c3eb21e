//! The chaos workload: writers appending unique records (one operation at a time
//! each, batches of one to three records) and one linearizable reader per
//! partition following the log, all recording what they were told.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlog::client::{Client, ClientConfig, ClientError};
use ringlog::history::{AppendOp, AppendOutcome, History, ReadOp};
use ringlog::transport::ReadRequest;

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

#[derive(Default)]
struct Recorded {
    history: History,
    timings: Vec<OpTiming>,
}

pub struct Workload {
    thread: JoinHandle<(History, Vec<OpTiming>)>,
}

impl Workload {
    pub fn start(addrs: Vec<String>, partitions: u32, stop: Arc<AtomicBool>) -> Workload {
        let thread = spawn_on_executor(async move || run(addrs, partitions, stop).await);
        Workload { thread }
    }

    /// Waits for every client to finish its current operation (after `stop`).
    pub fn join(self) -> (History, Vec<OpTiming>) {
        self.thread.join().expect("workload thread")
    }
}

async fn run(
    addrs: Vec<String>,
    partitions: u32,
    stop: Arc<AtomicBool>,
) -> (History, Vec<OpTiming>) {
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
    }
    for task in tasks {
        task.await;
    }
    let recorded = Rc::try_unwrap(recorded)
        .ok()
        .expect("every task done")
        .into_inner();
    (recorded.history, recorded.timings)
}

fn chaos_client(addrs: Vec<String>) -> Client {
    let mut config = ClientConfig::new(addrs);
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
            Err(_) => glommio::timer::sleep(Duration::from_millis(20)).await,
        }
    }
}
