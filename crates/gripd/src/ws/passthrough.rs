//! WebSocket pass-through: gripd is a WebSocket client of the origin and relays frames.
//!
//! The origin handshake is an ordinary origin request (same header rewriting as HTTP, so
//! `Grip-Sig`, `Grip-Feature`, Host and X-Forwarded-* apply) with the client's
//! `Sec-WebSocket-Extensions` replaced by `grip`. A non-101 answer goes to the client as is.

use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::StreamExt;
use grip::WsMessageType;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::{
    client_socket, close_frame, grip_extension, sleep_until_opt, switching_protocols, ws_config,
    Effect, FromOrigin, GripSession, Outbox, CLOSE_GOING_AWAY, CLOSE_WAIT, SHUTDOWN_CLOSE_WAIT,
};
use crate::error::ProxyError;
use crate::origin::{self, Body, ClientRequest};
use crate::proxy::State;
use crate::routes::Route;

type OriginWs = WebSocketStream<Box<crate::h1::OriginIo>>;
type ClientOutbox = Outbox<SplitSink<super::ClientWs, Message>>;
type OriginOutbox = Outbox<SplitSink<OriginWs, Message>>;

/// Opens the origin WebSocket; on success answers the client with 101 and spawns the session.
pub(super) async fn open(
    state: &Arc<State>,
    route: Arc<Route>,
    mut request: ClientRequest,
    on_upgrade: OnUpgrade,
    accept: String,
) -> Result<Response<Body>, ProxyError> {
    request.method = http::Method::GET;
    let mut extra = vec![
        (header::CONNECTION, HeaderValue::from_static("Upgrade")),
        (header::UPGRADE, HeaderValue::from_static("websocket")),
    ];
    if !route.props.no_grip {
        extra.push((
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("grip"),
        ));
    }
    let (resp, target) = state
        .origin
        .send_with_failover(&route, &request, None, &extra)
        .await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Rejected: the client gets the origin's status, headers and body.
        let (mut parts, body) = resp.into_parts();
        origin::clean_response_headers(&mut parts.headers);
        return Ok(Response::from_parts(parts, origin::boxed(body)));
    }
    let subs: Vec<String> = route
        .targets
        .get(target)
        .map(|t| t.subs.clone())
        .unwrap_or_default();
    let prefix = if route.props.no_grip {
        None
    } else {
        grip_extension(resp.headers()).or_else(|| {
            (!subs.is_empty()).then(|| bytes::Bytes::from_static(super::DEFAULT_PREFIX.as_bytes()))
        })
    };
    let reply = switching_protocols(resp.headers().clone(), &accept);
    let origin_upgrade = resp.into_body().into_upgraded();

    let st = state.clone();
    let span = tracing::debug_span!("ws", mode = "passthrough", grip = prefix.is_some());
    state.shutdown.tracker.spawn(
        async move {
            let Some((io, read)) = origin_upgrade else {
                tracing::debug!("origin upgrade failed");
                return;
            };
            let origin_ws = WebSocketStream::from_partially_read(
                io,
                read.to_vec(),
                Role::Client,
                Some(ws_config()),
            )
            .await;
            let Some(client) = client_socket(on_upgrade).await else {
                return;
            };
            let grip = prefix.map(|p| GripSession::new(&st, &route, Some(p), &subs));
            relay(st, client, origin_ws, grip).await;
        }
        .instrument(span),
    );
    Ok(reply)
}

/// Relays frames until both sides have closed (or one is gone), applying GRIP when enabled.
///
/// Both sockets are split and each direction has its own [`Outbox`], so reading one side never
/// waits for writing to the other: the client is read while `to_origin` is empty, the origin
/// (and the hub, and the timers) while `to_client` is empty.
async fn relay(
    state: Arc<State>,
    client: super::ClientWs,
    origin: OriginWs,
    mut grip: Option<GripSession>,
) {
    let mut stopped = state.shutdown.stopped();
    let (client_tx, mut client_rx) = client.split();
    let (origin_tx, mut origin_rx) = origin.split();
    let mut to_client = Outbox::new(client_tx);
    let mut to_origin = Outbox::new(origin_tx);
    let mut origin_open = true;
    let mut client_closing = false;
    loop {
        let timer = grip.as_ref().and_then(|g| g.next_timer());
        let client_room = to_client.is_empty();
        let read_client = to_origin.is_empty() || !origin_open;
        tokio::select! {
            _ = &mut stopped => {
                shutdown(&mut to_client, &mut client_rx, &mut to_origin, origin_open).await;
                return;
            }
            r = to_client.write(), if to_client.busy() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "client send failed");
                    break;
                }
            }
            r = to_origin.write(), if to_origin.busy() => {
                if let Err(e) = r {
                    to_origin.clear();
                    if origin_open {
                        tracing::debug!(error = %e, "origin send failed");
                        origin_open = false;
                        if !client_closing {
                            to_client.push(Message::Close(Some(close_frame(1011, ""))));
                        }
                    }
                }
            }
            m = client_rx.next(), if read_client => match m {
                Some(Ok(Message::Close(frame))) => {
                    if origin_open {
                        to_origin.push(Message::Close(frame));
                    }
                    client_closing = true;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(m)) => {
                    if origin_open && !client_closing {
                        to_origin.push(m);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "client socket failed");
                    break;
                }
                None => break,
            },
            m = origin_rx.next(), if origin_open && client_room => match m {
                Some(Ok(m)) => {
                    let out = match (m, grip.as_mut()) {
                        (Message::Close(frame), _) => {
                            origin_open = false;
                            if !client_closing {
                                to_client.push(Message::Close(frame));
                            }
                            None
                        }
                        (Message::Pong(_) | Message::Frame(_), _) => None,
                        (Message::Ping(p), _) => Some(Message::Ping(p)),
                        (m, None) => Some(m),
                        (Message::Text(t), Some(g)) => {
                            let m = g.classify_origin(WsMessageType::Text, t.into());
                            handle(g, m, &mut origin_open)
                        }
                        (Message::Binary(b), Some(g)) => {
                            let m = g.classify_origin(WsMessageType::Binary, b);
                            handle(g, m, &mut origin_open)
                        }
                    };
                    if !origin_open {
                        // Closed or detached: end the origin side (after its close this only
                        // flushes tungstenite's answer).
                        to_origin.push(Message::Close(None));
                    }
                    if let Some(m) = out {
                        send_client(&mut to_client, grip.as_mut(), m);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "origin socket failed");
                    origin_open = false;
                    to_origin.clear();
                    if !client_closing {
                        to_client.push(Message::Close(Some(close_frame(1011, ""))));
                    }
                }
                None => {
                    origin_open = false;
                    to_origin.clear();
                    if !client_closing {
                        to_client.push(Message::Close(None));
                    }
                }
            },
            d = recv(grip.as_mut()), if client_room => match d {
                None => {
                    shutdown(&mut to_client, &mut client_rx, &mut to_origin, origin_open).await;
                    return;
                }
                Some(crate::hub::Delivery::Update) => {}
                Some(crate::hub::Delivery::Item(item)) => {
                    let effect = grip.as_ref().and_then(|g| g.publish(&item));
                    match effect {
                        Some(Effect::Send(m)) => send_client(&mut to_client, grip.as_mut(), m),
                        Some(Effect::Close(frame)) => to_client.push(Message::Close(frame)),
                        Some(Effect::Detach | Effect::Refresh) | None => {}
                    }
                }
            },
            _ = sleep_until_opt(timer), if client_room => {
                let now = tokio::time::Instant::now();
                let due = grip.as_mut().map(|g| g.on_timer(now)).unwrap_or_default();
                for m in due {
                    send_client(&mut to_client, grip.as_mut(), m);
                }
            }
        }
    }
    // The client is gone or done: close the origin (after what it still has to get) and give it
    // a moment to answer.
    if origin_open {
        to_origin.push(Message::Close(None));
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        tokio::join!(to_origin.finish(), async {
            if origin_open {
                while origin_rx.next().await.is_some() {}
            }
        })
    })
    .await;
}

/// Applies the GRIP meaning of an origin data message; returns what the client gets.
fn handle(g: &mut GripSession, m: FromOrigin, origin_open: &mut bool) -> Option<Message> {
    match m {
        FromOrigin::Relay(m) => Some(m),
        FromOrigin::Drop => None,
        FromOrigin::Control(c) => match g.control(c) {
            Some(Effect::Send(m)) => Some(m),
            Some(Effect::Close(frame)) => Some(Message::Close(frame)),
            Some(Effect::Detach) => {
                // The origin connection is dropped when the relay loop next checks it.
                *origin_open = false;
                None
            }
            Some(Effect::Refresh) | None => None,
        },
    }
}

fn send_client(to_client: &mut ClientOutbox, grip: Option<&mut GripSession>, m: Message) {
    if let Some(g) = grip {
        g.sent();
    }
    to_client.push(m);
}

async fn recv(grip: Option<&mut GripSession>) -> Option<crate::hub::Delivery> {
    match grip {
        Some(g) => g.recv().await,
        None => std::future::pending().await,
    }
}

/// Shutdown: close 1001 to the client (after what it still has to get), and close the origin too;
/// all of it bounded by `SHUTDOWN_CLOSE_WAIT`.
async fn shutdown(
    to_client: &mut ClientOutbox,
    client_rx: &mut SplitStream<super::ClientWs>,
    to_origin: &mut OriginOutbox,
    origin_open: bool,
) {
    to_client.push(Message::Close(Some(close_frame(CLOSE_GOING_AWAY, ""))));
    if origin_open {
        to_origin.push(Message::Close(Some(close_frame(CLOSE_GOING_AWAY, ""))));
    }
    let _ = tokio::time::timeout(SHUTDOWN_CLOSE_WAIT, async {
        tokio::join!(to_client.finish(), to_origin.finish(), async {
            while client_rx.next().await.is_some() {}
        })
    })
    .await;
}
