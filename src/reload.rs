//! Reloading what can change under a running gateway: each TLS listener's
//! certificate and key, and the token keys (`[auth] public_keys`), when
//! their files change on disk (polled every `[tls] reload_interval`) and
//! whenever a reload is requested: `wssgate serve` requests one on SIGHUP
//! (`systemctl reload`), whatever listeners it has, so that a SIGHUP never
//! stops the process. A broken new file keeps the old certificate or keys
//! in service; every outcome is logged and published
//! ([`Event::TlsReload`], [`Event::TokenKeysReload`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Events};
use crate::tls::ServerTls;
use crate::token::TokenKeys;

/// Asks a running gateway to reload what it can (today: the TLS listeners'
/// certificates). Cheap to clone; a request made while the previous one is
/// still being handled is not lost.
#[derive(Debug, Clone, Default)]
pub struct Reload(Arc<Notify>);

impl Reload {
    /// Requests a reload now.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// Reloads `listeners` when their files change (every `interval`) and on
/// each request, until `shutdown`.
pub(crate) async fn run(
    listeners: Vec<Arc<ServerTls>>,
    tokens: Option<Arc<TokenKeys>>,
    interval: Duration,
    requests: Reload,
    events: Events,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let polling = !listeners.is_empty() || tokens.is_some();
    loop {
        let requested = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick(), if polling => false,
            () = requests.0.notified() => true,
        };
        if requested {
            if !polling {
                tracing::info!(
                    "reload requested: no TLS listener and no token keys, nothing to reload"
                );
            } else {
                tracing::info!(
                    tls_listeners = listeners.len(),
                    token_keys = tokens.is_some(),
                    "reload requested: reloading certificates and token keys"
                );
            }
        }
        if let Some(tokens) = &tokens
            && (requested || tokens.changed_on_disk())
        {
            match tokens.reload() {
                Ok(()) => {
                    tracing::info!("token keys reloaded; new handshakes use them");
                    events.publish(&Event::TokenKeysReload { error: None });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token key reload failed; keeping the keys in use");
                    events.publish(&Event::TokenKeysReload { error: Some(&e) });
                }
            }
        }
        for tls in &listeners {
            if !requested && !tls.changed_on_disk() {
                continue;
            }
            let listener = &tls.files().listener;
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(listener = %listener, cert = %tls.files().cert.display(), "certificate reloaded; new handshakes use it");
                    events.publish(&Event::TlsReload {
                        listener,
                        error: None,
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = %listener, error = %e, "certificate reload failed; keeping the previous certificate");
                    let error = e.to_string();
                    events.publish(&Event::TlsReload {
                        listener,
                        error: Some(&error),
                    });
                }
            }
        }
    }
}
