//! WebSocket pass-through: gripd is a WebSocket client of the origin and relays frames.
//!
//! The origin handshake is an ordinary origin request (same header rewriting as HTTP, so
//! `Grip-Sig`, `Grip-Feature`, Host and X-Forwarded-* apply) with the client's
//! `Sec-WebSocket-Extensions` replaced by `grip`. A non-101 answer goes to the client as is.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use grip::WsMessageType;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::{
    client_socket, close_frame, grip_extension, sleep_until_opt, switching_protocols, ws_config,
    Effect, FromOrigin, GripSession, CLOSE_GOING_AWAY, CLOSE_WAIT, SHUTDOWN_CLOSE_WAIT,
};
use crate::error::ProxyError;
use crate::origin::{self, Body, ClientRequest};
use crate::proxy::State;
use crate::routes::Route;

type OriginWs = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

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
    let (mut resp, target) = state
        .origin
        .send_with_failover(&route, &request, None, &extra)
        .await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Rejected: the client gets the origin's status, headers and body.
        let (mut parts, body) = resp.into_parts();
        origin::clean_response_headers(&mut parts.headers);
        return Ok(Response::from_parts(parts, origin::incoming(body)));
    }
    let origin_upgrade = hyper::upgrade::on(&mut resp);
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
    drop(resp);

    let st = state.clone();
    let span = tracing::debug_span!("ws", mode = "passthrough", grip = prefix.is_some());
    state.shutdown.tracker.spawn(
        async move {
            let origin_ws = match origin_upgrade.await {
                Ok(io) => {
                    WebSocketStream::from_raw_socket(
                        TokioIo::new(io),
                        Role::Client,
                        Some(ws_config()),
                    )
                    .await
                }
                Err(e) => {
                    tracing::debug!(error = %e, "origin upgrade failed");
                    return;
                }
            };
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
async fn relay(
    state: Arc<State>,
    mut client: super::ClientWs,
    mut origin: OriginWs,
    mut grip: Option<GripSession>,
) {
    let token = state.shutdown.token.clone();
    let mut origin_open = true;
    let mut client_closing = false;
    loop {
        let timer = grip.as_ref().and_then(|g| g.next_timer());
        tokio::select! {
            _ = token.cancelled() => {
                shutdown(&mut client, &mut origin, origin_open).await;
                return;
            }
            m = client.next() => match m {
                Some(Ok(Message::Close(frame))) => {
                    if origin_open {
                        let _ = origin.send(Message::Close(frame)).await;
                    }
                    client_closing = true;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(m)) => {
                    if origin_open && !client_closing {
                        if let Err(e) = origin.send(m).await {
                            tracing::debug!(error = %e, "origin send failed");
                            origin_open = false;
                            let _ = client.close(Some(close_frame(1011, ""))).await;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "client socket failed");
                    break;
                }
                None => break,
            },
            m = origin.next(), if origin_open => match m {
                Some(Ok(m)) => {
                    let was_open = origin_open;
                    let out = match (m, grip.as_mut()) {
                        (Message::Close(frame), _) => {
                            origin_open = false;
                            if !client_closing {
                                let _ = client.send(Message::Close(frame)).await;
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
                    if was_open && !origin_open {
                        // Closed or detached: end the origin side (a no-op after its close).
                        let _ = origin.close(None).await;
                    }
                    if let Some(m) = out {
                        if send_client(&mut client, grip.as_mut(), m).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "origin socket failed");
                    origin_open = false;
                    if !client_closing {
                        let _ = client.close(Some(close_frame(1011, ""))).await;
                    }
                }
                None => {
                    origin_open = false;
                    if !client_closing {
                        let _ = client.close(None).await;
                    }
                }
            },
            d = recv(grip.as_mut()) => match d {
                None => {
                    shutdown(&mut client, &mut origin, origin_open).await;
                    return;
                }
                Some(crate::hub::Delivery::Update) => {}
                Some(crate::hub::Delivery::Item(item)) => {
                    let effect = grip.as_ref().and_then(|g| g.publish(&item));
                    match effect {
                        Some(Effect::Send(m)) => {
                            if send_client(&mut client, grip.as_mut(), m).await.is_err() {
                                break;
                            }
                        }
                        Some(Effect::Close(frame)) => {
                            let _ = client.send(Message::Close(frame)).await;
                        }
                        Some(Effect::Detach | Effect::Refresh) | None => {}
                    }
                }
            },
            _ = sleep_until_opt(timer) => {
                let now = tokio::time::Instant::now();
                let due = grip.as_mut().map(|g| g.on_timer(now)).unwrap_or_default();
                for m in due {
                    if send_client(&mut client, grip.as_mut(), m).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if origin_open {
        // The client is gone or done: close the origin and give it a moment to answer.
        let _ = origin.close(None).await;
        let _ = tokio::time::timeout(CLOSE_WAIT, async { while origin.next().await.is_some() {} })
            .await;
    }
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

async fn send_client(
    client: &mut super::ClientWs,
    grip: Option<&mut GripSession>,
    m: Message,
) -> Result<(), ()> {
    if let Some(g) = grip {
        g.sent();
    }
    client.send(m).await.map_err(|e| {
        tracing::debug!(error = %e, "client send failed");
    })
}

async fn recv(grip: Option<&mut GripSession>) -> Option<crate::hub::Delivery> {
    match grip {
        Some(g) => g.recv().await,
        None => std::future::pending().await,
    }
}

/// Shutdown: close 1001 to the client, and close the origin too.
async fn shutdown(client: &mut super::ClientWs, origin: &mut OriginWs, origin_open: bool) {
    let _ = client
        .send(Message::Close(Some(close_frame(CLOSE_GOING_AWAY, ""))))
        .await;
    if origin_open {
        let _ = origin
            .send(Message::Close(Some(close_frame(CLOSE_GOING_AWAY, ""))))
            .await;
    }
    let _ = tokio::time::timeout(SHUTDOWN_CLOSE_WAIT, async {
        while client.next().await.is_some() {}
    })
    .await;
}
