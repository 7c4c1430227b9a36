//! `listen --stay`: sessions one after another into the same sink until the interrupt, as the
//! sans-IO [`Stay`] core decides (rejoin backoff, cumulative statistics, when to look for a
//! server found by mDNS again); each session is driven by [`crate::client`]'s loop. For a
//! server found by mDNS it browses again when told ([`Stay::poll_rediscover`]), on a thread of
//! its own that the interrupt cancels, and moves to the address found.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use crate::client::{OpenSink, bind_socket, drive_session, new_session, report};
use crate::config::{Config, ListenError, Outcome, fmt_secs};
use crate::discover::{Chosen, REBROWSE_WINDOW};
use crate::sink::SinkError;
use crate::stay::{REJOIN_MAX, SessionEnd, Stay, Transition};

/// Logs a change of a staying listener's state (once per change, never per retry).
pub(crate) fn log_transition(config: &Config, t: &Transition) {
    let server = &config.server;
    match t {
        Transition::Lost { reason } => tracing::warn!(
            "lost the stream from {server} ({}); rejoining (--stay)",
            reason.as_str()
        ),
        Transition::Failing { reason } => {
            tracing::warn!("{reason}; still trying every {}", fmt_secs(REJOIN_MAX));
        }
        Transition::Rejoined { after } => tracing::info!(
            "rejoined {server} after an outage of {:.1} s",
            after.as_secs_f64()
        ),
    }
}

/// `--stay`: sessions one after another into the same sink until the interrupt; see
/// [`crate::stay`]. No silence is written for an outage: the WAV file (or the device) gets the
/// audio that was received, and the statistics say how long the outages were.
pub(crate) async fn run_staying(
    config: &Config,
    mut server: SocketAddr,
    mut sock: UdpSocket,
    interrupt: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Outcome, ListenError> {
    // The server joined can move (rediscovery): the logs name the address in use.
    let mut config = config.clone();
    let config = &mut config;
    let mut stay = Stay::new(config.clock.now());
    if config.discovered.is_some() {
        stay = stay.with_rediscovery();
    }
    let mut sink: Option<OpenSink> = None;
    let mut failure: Option<SinkError> = None;
    let mut interrupted = false;
    let mut info = None;
    let mut fatal = None;
    while !interrupted {
        let mut session = match new_session(config, server, config.clock.now()) {
            Ok(s) => s,
            Err(e) => {
                stay.interrupt(config.clock.now(), None);
                fatal = Some(e);
                break;
            }
        };
        let res = drive_session(
            config,
            &mut session,
            &sock,
            &mut sink,
            interrupt,
            &mut interrupted,
            &mut failure,
            Some(&mut stay),
        )
        .await;
        let now = config.clock.now();
        if session.info().is_some() {
            info = session.info().cloned();
        }
        let stats = session.stats().filter(|_| session.info().is_some());
        if interrupted || failure.is_some() {
            stay.interrupt(now, stats);
            break;
        }
        let end = match res {
            // A sink that cannot be opened for this stream stops the listener.
            Err(e @ (ListenError::Sink(_) | ListenError::BadStream { .. }))
                if session.info().is_some() =>
            {
                stay.interrupt(now, None);
                fatal = Some(e);
                break;
            }
            Err(e) => SessionEnd::Handshake(e.to_string()),
            Ok(()) => match stats {
                Some(s) => SessionEnd::Stream(s),
                None => SessionEnd::Handshake("the handshake ended".into()),
            },
        };
        if let Some(t) = stay.ended(now, end) {
            log_transition(config, &t);
        }
        if stay.poll_rediscover(now)
            && let Some(chosen) = config.discovered.clone()
        {
            let Some(found) = browse_again(&chosen, interrupt).await else {
                stay.interrupt(config.clock.now(), None);
                break;
            };
            let mut moved = false;
            match found {
                Some(f) if f.addr != server => {
                    tracing::info!(
                        "found {:?} ({:?}) again by mDNS, now at {}; joining it there",
                        f.instance,
                        f.title,
                        f.addr
                    );
                    // A socket of the new address's family, when it changed.
                    let rebound = if f.addr.is_ipv4() == server.is_ipv4() {
                        Ok(None)
                    } else {
                        bind_socket(f.addr).map(Some)
                    };
                    match rebound {
                        Ok(new_sock) => {
                            if let Some(s) = new_sock {
                                sock = s;
                            }
                            moved = true;
                            server = f.addr;
                            config.server = f.addr.to_string();
                            config.discovered = Some(Chosen {
                                found: f,
                                name: chosen.name,
                            });
                        }
                        Err(e) => tracing::warn!("cannot follow it to {}: {e}", f.addr),
                    }
                }
                Some(_) => tracing::debug!("mDNS: {server} is still where it was"),
                None => tracing::debug!("mDNS: {:?} not found", chosen.found.instance),
            }
            stay.rediscovered(config.clock.now(), moved);
        }
        // Wait for the rejoin, or the interrupt.
        let Some(at) = stay.rejoin_at() else { break };
        tokio::select! {
            () = interrupt.as_mut() => {
                interrupted = true;
                stay.interrupt(config.clock.now(), None);
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(config.clock.real(at))) => {
                stay.poll_rejoin(config.clock.now().max(at));
            }
        }
    }
    let all = stay.stats();
    let config = &*config;
    if let Some(mut s) = sink {
        if let Err(e) = s.sink.finish(config.clock.now()) {
            failure = failure.or(Some(e));
        }
    }
    tracing::info!(
        "{} sessions, {} outages ({:.1} s without a stream)",
        all.session_count,
        all.outages,
        all.outage_ms as f64 / 1000.0
    );
    report(config, &all.total, all.to_json())?;
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(Outcome {
        stats: all.total.clone(),
        end_reason: all.total.end_reason,
        info,
        stay: Some(all),
    })
}

/// Browses for the server `chosen` (at most [`REBROWSE_WINDOW`], less once it shows) on a
/// thread of its own: `Some(found)` with what matched, if anything; `None` when interrupted
/// (the browse is cancelled).
async fn browse_again(
    chosen: &Chosen,
    interrupt: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Option<crate::discover::Found>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (c, flag) = (chosen.clone(), cancel.clone());
    let started = std::thread::Builder::new()
        .name("browse".into())
        .spawn(move || {
            let r = crate::discover::browse_until(
                REBROWSE_WINDOW,
                |f| c.rematch(std::slice::from_ref(f)).is_some(),
                &flag,
            );
            let _ = tx.send(r);
        });
    if let Err(e) = started {
        tracing::warn!("cannot browse for the server again: {e}");
        return Some(None);
    }
    tokio::select! {
        () = interrupt.as_mut() => {
            cancel.store(true, Ordering::Relaxed);
            None
        }
        r = rx => Some(match r {
            Ok(Ok(b)) => chosen.rematch(&b.found).cloned(),
            Ok(Err(e)) => {
                tracing::warn!("cannot browse for the server again: {e}");
                None
            }
            Err(_) => None,
        }),
    }
}
