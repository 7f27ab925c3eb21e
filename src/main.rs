//! The `ringlog` command line. Thin by design: it parses arguments and calls library code.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;

use ringlog::bench::{BenchConfig, Limit, ProgressStyle};
use ringlog::cli::{self, DevOptions, LocalBench, ReadFormat, ServeOverrides};
use ringlog::runtime::config::FsyncPolicy;
use ringlog::runtime::overrides::Setting;

#[derive(Parser, Debug)]
#[command(name = "ringlog", version, about = "A Raft-replicated log service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Fsync {
    /// Durable before acknowledging, the way `wal.write_through` says (default: O_DSYNC writes).
    Always,
    /// Durable before acknowledging, by write + fdatasync (`wal.write_through = false`).
    Fdatasync,
    /// Never sync: benchmarks only.
    Never,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local cluster of several nodes on this machine (Ctrl-C stops it).
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value = "./ringlog-dev")]
        dir: PathBuf,
        /// Node i listens for clients on BASE+10i, peers on BASE+10i+1, metrics on BASE+10i+2.
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
        /// Shards (partitions) per node; 0 = one per core.
        #[arg(long, default_value_t = 0)]
        shards: u32,
        /// Override a node setting by its dotted TOML key, for every node (repeatable),
        /// e.g. `--set retention.max_bytes=67108864 --set wal.min_free_bytes=0`.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = cli::parse_setting)]
        set: Vec<Setting>,
    },
    /// Run one node of a cluster.
    Serve(ServeArgs),
    /// Append records to a partition (arguments, or one record per stdin line); prints each index.
    Append {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        partition: u32,
        records: Vec<String>,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
    /// Read records of a partition in order.
    Read {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        partition: u32,
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep waiting for new records, like `tail -f`.
        #[arg(long)]
        follow: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
    /// Remove a partition's records below an index on every replica (through the log);
    /// prints the trim entry's index and the partition's new log start.
    Trim {
        /// A node of the cluster (redirects to the partition's leader are followed).
        #[arg(long)]
        addr: String,
        /// The partition to trim.
        #[arg(long)]
        partition: u32,
        /// Records at indexes below this one are removed; reads below the new log
        /// start then get OutOfRange.
        #[arg(long)]
        before: u64,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
    /// Show nodes, partitions, leaders and indexes.
    Status {
        #[arg(long)]
        addr: String,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
    /// Measure throughput and latency of a cluster.
    Bench(BenchArgs),
}

// The options of `serve` (its help text is the variant's).
#[derive(Args, Debug)]
struct ServeArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    node_id: Option<u32>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    shards: Option<u32>,
    /// Pin each shard to its own core.
    #[arg(long)]
    pin: bool,
    /// `never` is for benchmarks only: acknowledged records are then not durable.
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Recovery after a reported WAL corruption: cut the log before the damage and
    /// rejoin; the node neither votes nor campaigns until it has caught up (see
    /// docs/operations.md). Use once, for the restart that follows the error.
    #[arg(long)]
    truncate_corrupt_tail: bool,
}

// The options of `bench` (its help text is the variant's).
#[derive(Args, Debug)]
struct BenchArgs {
    /// A node of the cluster to load.
    #[arg(long, required_unless_present = "local")]
    addr: Option<String>,
    /// Start a local cluster in a temporary directory, benchmark it, stop it.
    #[arg(long)]
    local: bool,
    /// With --local: nodes and shards per node.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// With --local: `fdatasync` makes records durable by write + fdatasync instead of
    /// O_DSYNC writes; `never` is for benchmarks of everything but the disk.
    #[arg(long, value_enum, default_value = "always")]
    fsync: Fsync,
    /// With --local: add this one-way delay to every peer link (through a TCP
    /// fault proxy per directed link), e.g. `1ms`.
    #[arg(long, value_parser = cli::parse_duration, requires = "local")]
    peer_delay: Option<Duration>,
    /// Partitions to spread appends over (default: all).
    #[arg(long)]
    partitions: Option<u32>,
    /// Concurrent clients; in a closed loop each keeps --inflight appends outstanding.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Appends each client keeps outstanding.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    inflight: u32,
    /// Client connection pools the clients share, round robin, as etcd's benchmark
    /// does; at most --clients. Each pool opens one connection per node and
    /// partition it appends to, so that each is served by its partition's core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    #[arg(long, default_value_t = 256)]
    record_size: usize,
    /// Records per append.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// How long to measure after the warmup.
    #[arg(long, default_value = "10s", value_parser = cli::parse_duration)]
    duration: Duration,
    /// Stop after N measured records instead of a duration: ceil(N / batch) appends are
    /// measured, so N records when the batch divides N, fewer than one batch more
    /// otherwise, and fewer when appends fail (failed appends are not retried).
    #[arg(long, value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Appends sent (open loop: scheduled) within this long of the start are not measured.
    #[arg(long, default_value = "2s", value_parser = cli::parse_duration)]
    warmup: Duration,
    /// Open loop at this many records per second (latency from the scheduled time).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// With --local: override a node setting by its dotted TOML key, for every node
    /// (repeatable), e.g. `--set retention.max_bytes=67108864`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = cli::parse_setting, requires = "local")]
    set: Vec<Setting>,
}

fn fsync_policy(fsync: Fsync) -> FsyncPolicy {
    match fsync {
        Fsync::Always | Fsync::Fdatasync => FsyncPolicy::Always,
        Fsync::Never => FsyncPolicy::Never,
    }
}

/// The `wal.write_through` a `--fsync` choice sets, if any.
fn write_through(fsync: Fsync) -> Option<bool> {
    matches!(fsync, Fsync::Fdatasync).then_some(false)
}

fn main() {
    ringlog::runtime::node::abort_on_panic();
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Dev {
            nodes,
            dir,
            base_port,
            shards,
            set,
        } => cli::dev(DevOptions {
            nodes,
            dir,
            base_port,
            shards,
            settings: set,
        })?,
        Command::Serve(args) => serve(args)?,
        Command::Append {
            addr,
            partition,
            records,
            timeout,
        } => cli::append(&addr, partition, records, timeout)?,
        Command::Read {
            addr,
            partition,
            from,
            follow,
            format,
            timeout,
        } => {
            let format = match format {
                Format::Text => ReadFormat::Text,
                Format::Json => ReadFormat::Json,
            };
            cli::read(&addr, partition, from, follow, format, timeout)?
        }
        Command::Trim {
            addr,
            partition,
            before,
            timeout,
        } => cli::trim(&addr, partition, before, timeout)?,
        Command::Status { addr, timeout } => cli::status(&addr, timeout)?,
        Command::Bench(args) => bench(args)?,
    }
    Ok(())
}

/// Logs to stderr, at the level RUST_LOG says (info without it).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config,
        node_id,
        data_dir,
        shards,
        pin,
        fsync,
        truncate_corrupt_tail,
    } = args;
    let overrides = ServeOverrides {
        node_id,
        data_dir,
        shards,
        pin,
        fsync: fsync.map(fsync_policy),
        write_through: fsync.and_then(write_through),
        truncate_corrupt_tail,
    };
    Ok(cli::serve(&config, overrides)?)
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs {
        addr,
        local,
        nodes,
        shards,
        fsync,
        peer_delay,
        partitions,
        clients,
        inflight,
        connections,
        record_size,
        batch,
        duration,
        count,
        warmup,
        rate,
        json,
        set,
    } = args;
    let local = local.then_some(LocalBench {
        nodes,
        shards,
        fsync: fsync_policy(fsync),
        write_through: write_through(fsync).unwrap_or(true),
        peer_delay,
        settings: set,
    });
    let config = BenchConfig {
        addrs: Vec::new(),
        partitions,
        clients,
        inflight,
        connections,
        record_bytes: record_size,
        batch,
        limit: count.map_or(Limit::Duration(duration), Limit::Records),
        warmup,
        rate_records_per_sec: rate,
        progress: ProgressStyle::for_stderr(),
        server_pids: Vec::new(),
    };
    Ok(cli::bench(addr, local, config, json)?)
}
