//! The `ringlog` command line. Thin by design: it parses arguments and calls library code.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;

use ringlog::bench::{BenchConfig, Limit, ProgressStyle};
use ringlog::cli::{self, DevOptions, LocalBench, ReadFormat, ReadFrom, ServeOverrides};
use ringlog::runtime::config::FsyncPolicy;
use ringlog::runtime::overrides::Setting;
use ringlog::transport::ChangeOp;

#[derive(Parser, Debug)]
#[command(name = "ringlog", version, about = "A Raft-replicated log service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS for the commands that talk to a cluster (append, read, trim, status,
/// bench, leader, members); see docs/security.md.
#[derive(Args, Debug)]
struct TlsArgs {
    /// CA bundle (PEM) to check the nodes' certificates against; turns TLS on.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to show the nodes; its first DNS name is the
    /// principal whose roles `[tls.principals]` lists.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "ca",
        requires = "key"
    )]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
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
    /// Each record on a line of its own, as text (base64 when it is not UTF-8).
    Text,
    /// One JSON object per line: partition, index, record and its encoding.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local cluster of several nodes on this machine (Ctrl-C stops it).
    Dev {
        /// Nodes to start, 1 to 9; their ids are 1 to N.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Where each node's config and data go (node N's under `DIR/node-N`).
        #[arg(long, default_value = "./ringlog-dev")]
        dir: PathBuf,
        /// Node N (ids from 1, as `status` shows them) listens for clients on
        /// BASE+10(N-1), for peers on BASE+10(N-1)+1 and for metrics on
        /// BASE+10(N-1)+2: node 1 on 7400, 7401 and 7402 by default.
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
        /// Shards (partitions) per node; 0 = one per core.
        #[arg(long, default_value_t = 0)]
        shards: u32,
        /// Override a node setting by its dotted TOML key, for every node (repeatable),
        /// e.g. `--set retention.max_bytes=67108864 --set wal.min_free_bytes=0`.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = cli::parse_setting)]
        set: Vec<Setting>,
        /// TLS on every port: a CA, node and client certificates are made under
        /// DIR/tls, and the flags client commands need are printed.
        #[arg(long)]
        tls: bool,
    },
    /// Run one node of a cluster.
    Serve(ServeArgs),
    /// Append records to a partition (arguments, or one record per stdin line); prints each index.
    Append {
        /// A node of the cluster, HOST:PORT (appends are redirected to the partition's leader).
        #[arg(long)]
        addr: String,
        /// The partition to append to (from 0).
        #[arg(long)]
        partition: u32,
        /// The records, one per argument; without any, each line of stdin is a record.
        records: Vec<String>,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
    /// Read records of a partition in order.
    Read {
        /// A node of the cluster, HOST:PORT (reads are redirected to the partition's leader).
        #[arg(long)]
        addr: String,
        /// The partition to read (from 0).
        #[arg(long)]
        partition: u32,
        /// Where to start: `earliest` (the oldest record retained), `latest` (only
        /// records committed from now on, for --follow), `-N` (the last N indexes
        /// committed) or an index.
        // Hyphen values go to the parser, so `-N` is taken and `-x` or a flag in
        // its place is refused with what `--from` accepts.
        #[arg(long, default_value = "earliest", allow_hyphen_values = true, value_parser = cli::parse_read_from)]
        from: ReadFrom,
        /// Keep waiting for new records, like `tail -f`.
        #[arg(long)]
        follow: bool,
        /// How records print.
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
        /// A node of the cluster, HOST:PORT; every node it lists is then asked too.
        #[arg(long)]
        addr: String,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
    /// Measure throughput and latency of a cluster.
    Bench(BenchArgs),
    /// Partition leadership.
    Leader {
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// List every partition's members as its leader sees them (node, voter or
    /// learner, leader, lag in entries), or change them by one member on every
    /// partition.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Members {
        #[command(subcommand)]
        command: Option<MembersCommand>,
        /// A node of the cluster, HOST:PORT (each partition is listed by its
        /// leader; redirects are followed).
        #[arg(long, required = true)]
        addr: Option<String>,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
}

/// The node and retry options every membership change takes.
#[derive(Args, Debug)]
struct ChangeTarget {
    /// A node of the cluster, HOST:PORT (the change goes to each partition's
    /// leader; redirects are followed).
    #[arg(long)]
    addr: String,
    /// The node id the change is about.
    #[arg(long)]
    node_id: u32,
    /// How long to keep retrying while no node answers, no leader is elected or
    /// another change is still committing, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
    timeout: Duration,
}

#[derive(Subcommand, Debug)]
enum MembersCommand {
    /// Add a node to every partition as a learner: it receives the log but does not
    /// vote until promoted. Prints each partition's configuration entry index.
    Add {
        #[command(flatten)]
        target: ChangeTarget,
        /// Where the other nodes reach the new node's peer listener, HOST:PORT
        /// (at most 255 bytes).
        #[arg(long)]
        peer_address: String,
        /// Where clients reach the new node's client listener, HOST:PORT (at most
        /// 255 bytes).
        #[arg(long)]
        client_address: String,
    },
    /// Make a learner a voter on every partition (once it has caught up: see the
    /// lag in `ringlog members`).
    Promote {
        #[command(flatten)]
        target: ChangeTarget,
    },
    /// Remove a node, voter or learner, from every partition. A leader that is
    /// removed hands over and steps down once the change commits.
    Remove {
        #[command(flatten)]
        target: ChangeTarget,
    },
}

#[derive(Subcommand, Debug)]
enum LeaderCommand {
    /// Hand a partition's leadership to another node (the most up-to-date follower
    /// unless --to names one) and print who leads it then. Clients see a redirect,
    /// not an error.
    Transfer {
        /// A node of the cluster, HOST:PORT (the request is redirected to the
        /// partition's leader).
        #[arg(long)]
        addr: String,
        /// The partition whose leadership moves.
        #[arg(long)]
        partition: u32,
        /// The node id to hand leadership to; by default the follower whose log is
        /// most up to date among those answering.
        #[arg(long)]
        to: Option<u32>,
        /// How long to keep retrying while no node answers or no leader is elected,
        /// e.g. `30s`, `500ms`, `2m`; a plain number is seconds, as for `bench --duration`.
        #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
        timeout: Duration,
    },
}

// The options of `serve` (its help text is the variant's).
#[derive(Args, Debug)]
struct ServeArgs {
    /// The node's TOML config (docs/configuration.md describes every setting).
    #[arg(long)]
    config: PathBuf,
    /// This node's id among the config's `[[nodes]]` (ids from 1), instead of `node_id`.
    #[arg(long)]
    node_id: Option<u32>,
    /// Where the WAL and hard state live, instead of the config's `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shards (partitions) per node, instead of the config's `shards`; 0 = one per core.
    #[arg(long)]
    shards: Option<u32>,
    /// Pin each shard to its own core (as `pin = true` in the config does).
    #[arg(long)]
    pin: bool,
    /// How records are made durable, instead of the config's `wal.fsync` and
    /// `wal.write_through`; `never` is for benchmarks only: acknowledged records are
    /// then not durable.
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Recovery after a reported WAL corruption: cut the log before the damage and
    /// rejoin; the node neither votes nor campaigns until it has caught up (see
    /// docs/operations.md). Use once, for the restart that follows the error.
    #[arg(long)]
    truncate_corrupt_tail: bool,
    /// Join the running cluster one of whose nodes is at HOST:PORT (its client
    /// address): a node with a new data directory starts with no members, asks to
    /// be added as a learner on every partition, and becomes a voter once caught
    /// up (see docs/operations.md). Ignored for a founding member's data.
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
}

// The options of `bench` (its help text is the variant's).
#[derive(Args, Debug)]
struct BenchArgs {
    /// A node of the cluster to load, HOST:PORT.
    #[arg(long, required_unless_present = "local")]
    addr: Option<String>,
    /// Start a local cluster in a temporary directory, benchmark it, stop it.
    #[arg(long)]
    local: bool,
    /// With --local: nodes to start.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// With --local: shards (partitions) per node; 0 = one per core.
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
    /// Bytes of each record.
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
    /// With --local: TLS on every port (certificates made as `dev --tls` does),
    /// and the benchmark's clients connect with it.
    #[arg(long, requires = "local")]
    tls: bool,
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

/// mimalloc rather than glibc's malloc: with thousands of requests in flight, glibc's
/// slow paths took a fifth of a leader's CPU (docs/performance.md, "Fourth look").
/// It keeps the memory it frees (`ringlog::allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    ringlog::allocator::keep_freed_memory();
    ringlog::runtime::node::abort_on_panic();
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    init_logging();
    let parsed = Cli::parse();
    if let Some(ca) = &parsed.tls.ca {
        let identity = parsed.tls.cert.as_deref().zip(parsed.tls.key.as_deref());
        cli::use_client_tls(ringlog::tls::client_config(ca, identity)?);
    }
    match parsed.command {
        Command::Dev {
            nodes,
            dir,
            base_port,
            shards,
            set,
            tls,
        } => cli::dev(DevOptions {
            nodes,
            dir,
            base_port,
            shards,
            settings: set,
            tls,
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
        Command::Leader {
            command:
                LeaderCommand::Transfer {
                    addr,
                    partition,
                    to,
                    timeout,
                },
        } => cli::leader_transfer(&addr, partition, to, timeout)?,
        Command::Members {
            command: None,
            addr,
            timeout,
        } => cli::members(&addr.unwrap_or_default(), timeout)?,
        Command::Members {
            command: Some(command),
            ..
        } => change_members(command)?,
    }
    Ok(())
}

fn change_members(command: MembersCommand) -> Result<(), cli::CliError> {
    let (target, change) = match command {
        MembersCommand::Add {
            target,
            peer_address,
            client_address,
        } => {
            let change = ChangeOp::AddLearner {
                node_id: target.node_id,
                peer_address,
                client_address,
            };
            (target, change)
        }
        MembersCommand::Promote { target } => {
            let change = ChangeOp::Promote {
                node_id: target.node_id,
            };
            (target, change)
        }
        MembersCommand::Remove { target } => {
            let change = ChangeOp::Remove {
                node_id: target.node_id,
            };
            (target, change)
        }
    };
    cli::members_change(&target.addr, change, target.timeout)
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
        join,
    } = args;
    let overrides = ServeOverrides {
        join,
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
        tls,
    } = args;
    let local = local.then_some(LocalBench {
        nodes,
        shards,
        fsync: fsync_policy(fsync),
        write_through: write_through(fsync).unwrap_or(true),
        peer_delay,
        settings: set,
        tls,
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
        tls: None,
    };
    Ok(cli::bench(addr, local, config, json)?)
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand and every argument of it (clap's own `--help` and
    /// `--version` aside), and every value a choice offers, says what it is in
    /// `--help`: a bare flag name in the help output tells a user nothing.
    #[test]
    fn every_subcommand_argument_and_choice_has_help_text() {
        let mut command = Cli::command();
        command.build();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        undocumented(&command, "ringlog", &mut missing);
        assert!(missing.is_empty(), "no help text for: {missing:?}");
    }

    /// Adds to `missing` what of `command` (named `path`) and its subcommands, at
    /// any depth, has no help text.
    fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
            for value in arg.get_possible_values() {
                if !value.is_hide_set() && value.get_help().is_none() {
                    missing.push(format!("{path} {id}={}", value.get_name()));
                }
            }
        }
        for sub in command.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            undocumented(sub, &sub_path, missing);
        }
    }
}
