//! The `ringlog` command line. Thin by design: it parses arguments and calls library code.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ringlog", version, about = "A Raft-replicated log service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local cluster of several nodes on this machine (Ctrl-C stops it).
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value = "./ringlog-dev")]
        dir: PathBuf,
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
    },
    /// Run one node of a cluster.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Append records to a partition (arguments, or one record per stdin line).
    Append {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        partition: u32,
        records: Vec<String>,
    },
    /// Read records of a partition in order.
    Read {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        partition: u32,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        follow: bool,
    },
    /// Show nodes, partitions, leaders and indexes.
    Status {
        #[arg(long)]
        addr: String,
    },
    /// Measure throughput and latency of a cluster.
    Bench {
        #[arg(long)]
        addr: Option<String>,
        #[arg(long)]
        local: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The engine exists; the service around it (WAL, transport, runtime) is being
    // built. Say so plainly rather than pretending to work.
    let name = match cli.command {
        Command::Dev { .. } => "dev",
        Command::Serve { .. } => "serve",
        Command::Append { .. } => "append",
        Command::Read { .. } => "read",
        Command::Status { .. } => "status",
        Command::Bench { .. } => "bench",
    };
    bail!("`ringlog {name}` is not available yet: this build contains the Raft engine only")
}
