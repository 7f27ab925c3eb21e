//! Certificates, keys and the CA bundle read again on SIGHUP, the signal operators
//! and tools such as cert-manager's sidecars send after renewing them. New
//! handshakes use what was read; established connections keep their sessions, so
//! nothing is dropped. A file that cannot be read or does not fit leaves the
//! previous certificates in use, and says why in the log.

use std::sync::Arc;
use std::thread::JoinHandle;

use signal_hook::consts::SIGHUP;
use signal_hook::iterator::{Handle, Signals};

use super::node::NodeError;
use crate::tls::TlsContext;

/// The thread that reloads on SIGHUP; dropping this stops it.
pub struct Reloading {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// Reloads `tls` on every SIGHUP until the returned value is dropped.
pub fn reload_on_sighup(tls: &Arc<TlsContext>) -> Result<Reloading, NodeError> {
    let mut signals = Signals::new([SIGHUP]).map_err(NodeError::Sighup)?;
    let handle = signals.handle();
    let tls = tls.clone();
    let thread = std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                match tls.reload() {
                    Ok(()) => log::info!("SIGHUP: TLS certificates, key and CA bundle reloaded"),
                    Err(e) => log::error!(
                        "SIGHUP: TLS reload failed, keeping the previous certificates: {e}"
                    ),
                }
            }
        })
        .map_err(NodeError::Sighup)?;
    Ok(Reloading {
        handle,
        thread: Some(thread),
    })
}

impl Drop for Reloading {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
