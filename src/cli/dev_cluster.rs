//! `ringlog dev`: a local cluster of real node processes, with TLS if asked.

use std::path::PathBuf;
use std::time::Duration;

use super::{CliError, with_settings};
use crate::runtime::dev;
use crate::runtime::overrides::Setting;

/// How `ringlog dev` sets up its cluster.
#[derive(Clone, Debug)]
pub struct DevOptions {
    pub nodes: u32,
    pub dir: PathBuf,
    pub base_port: u16,
    pub shards: u32,
    /// `--set KEY=VALUE` overrides, applied to every node's config.
    pub settings: Vec<Setting>,
    /// TLS on every port, with certificates made under `dir/tls`.
    pub tls: bool,
}

pub fn dev(options: DevOptions) -> Result<(), CliError> {
    let (nodes, dir) = (options.nodes, options.dir.as_path());
    let mut configs = dev::configs(nodes, options.base_port, dir, options.shards)?;
    let pki = options
        .tls
        .then(|| dev::enable_tls(dir, &mut configs))
        .transpose()?;
    let configs = with_settings(configs, &options.settings)?;
    let paths = dev::write_configs(dir, &configs)?;
    let exe = std::env::current_exe()?;
    let mut cluster = dev::DevCluster::start(&exe, &paths)?;
    println!("ringlog dev: {nodes} nodes, data under {}", dir.display());
    for config in &configs {
        println!(
            "  node {}: client {}  metrics {}",
            config.node_id, config.listen.client, config.listen.metrics
        );
    }
    let flags = pki.as_ref().map_or(String::new(), tls_flags);
    if pki.is_some() {
        println!("TLS on every port; client commands need: {}", flags.trim());
    }
    println!(
        "try: ringlog append --addr {}{flags} --partition 0 hello",
        configs[0].listen.client
    );
    println!("Ctrl-C stops all nodes.");
    let exited = cluster.wait()?;
    cluster.stop(Duration::from_secs(10));
    match exited {
        Some((node, status)) => Err(CliError::NodeExited {
            node,
            status: status.to_string(),
        }),
        None => Ok(()),
    }
}

/// The flags that make a client command use the dev cluster's TLS, with a space
/// before each.
fn tls_flags(pki: &crate::tls::certs::DevPki) -> String {
    format!(
        " --ca {} --cert {} --key {}",
        pki.ca_file.display(),
        pki.client_cert_file.display(),
        pki.client_key_file.display()
    )
}
