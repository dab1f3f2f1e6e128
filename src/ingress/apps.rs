//! `PUT /apps/{id}` (register an application, as `app put` does) and `GET /objects` (what a
//! channel holds now, for a client's first render and its resync after a gap or reconnect).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{bearer, error, Backend, Ingress};
use crate::model::{Application, Channel, Filter};
use crate::queue::outbox::Sink;
use crate::store::Store;
use crate::transport::auth::{self, Refusal};
use crate::transport::snapshot::ChannelRead;

/// Longest channel listing a snapshot returns; beyond it the answer says `truncated`.
const MAX_SNAPSHOT: usize = 10_000;

/// Stores the application, then announces it: on `system` over Kafka (every worker follows
/// it), or straight into the process's applications with the in-process queue.
pub async fn put_app(
    State(ingress): State<Arc<Ingress>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = ingress.authorize_admin(&headers) {
        return refused.into_response();
    }
    let backend = match ingress.backend() {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let app = match Application::from_json(&body) {
        Ok(app) if app.id == id => app,
        Ok(app) => {
            return error(StatusCode::BAD_REQUEST, &format!("body id `{}` differs from the path's `{id}`", app.id))
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // Where the push workers connect is the operator's choice, never an application's.
    if let Err(e) = crate::transport::push::check_endpoints(&app, &ingress.config.push) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let Some(store) = &backend.store else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no main store in this process");
    };
    let registered = match &backend.sink {
        Sink::Kafka(producer) => crate::commands::app::store_and_announce(&ingress.config, store, producer, &app)
            .await
            .map_err(|e| e.to_string()),
        Sink::Memory(_) => {
            store.put_application(&app).await.map(|()| backend.apps.insert(app.clone())).map_err(|e| e.to_string())
        }
    };
    if let Err(e) = registered {
        return error(StatusCode::SERVICE_UNAVAILABLE, &e);
    }
    tracing::info!(message = "application registered through the ingress", app = %app.id);
    (StatusCode::OK, Json(json!({ "id": app.id }))).into_response()
}

#[derive(Deserialize)]
pub struct ObjectsQuery {
    channel: String,
    filters: Option<String>,
}

/// The live objects on a channel with their versions, for the bearer of a device token of the
/// channel's application (the socket's rules: own application, own user, known model).
/// Every channel shape, filtered ones included.
pub async fn get_objects(
    State(ingress): State<Arc<Ingress>>,
    Query(q): Query<ObjectsQuery>,
    headers: HeaderMap,
) -> Response {
    let backend = match ingress.backend() {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let Some(token) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "Authorization: Bearer <device token> required");
    };
    let claims = match auth::verify_device(
        token,
        &backend.apps,
        ingress.config.jwt_secret.as_deref(),
        ingress.config.jwt_max_lifetime,
    ) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let parsed = serde_json::from_str::<Value>(&q.channel)
        .map_err(|e| e.to_string())
        .and_then(|v| Channel::from_value(&v).map_err(|e| e.to_string()));
    let channel = match parsed {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("channel: {e}")),
    };
    let filter = match q.filters.as_deref().map(Filter::parse_str).transpose() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("filters: {e}")),
    };
    match auth::authorize_channel(&claims, &backend.apps, &channel, None) {
        Ok(()) => {}
        Err(e @ Refusal::Forbidden(_)) => return error(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e @ Refusal::UnknownModel(_)) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
    let app = &claims.application_id;
    let key = match channel.key(app, filter.as_ref()) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match snapshot(backend, app, &channel, filter.as_ref()).await {
        Ok((objects, truncated)) => {
            let body = json!({ "channel": key.as_str(), "objects": objects, "truncated": truncated });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err((status, reason)) => error(status, &reason),
    }
}

/// The channel's first [`MAX_SNAPSHOT`] matching objects in id order, and whether there were
/// more: the sockets' snapshot read ([`ChannelRead`]), every channel shape.
async fn snapshot(
    backend: &Backend,
    app: &str,
    channel: &Channel,
    filter: Option<&Filter>,
) -> Result<(Vec<Value>, bool), (StatusCode, String)> {
    let store = backend.store.as_ref().ok_or((StatusCode::SERVICE_UNAVAILABLE, "no main store".to_string()))?;
    let unavailable = |e: crate::store::StoreError| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let read = ChannelRead { store, app, channel, filter };
    let mut pages = read.snapshot();
    let mut objects = Vec::new();
    while let Some(page) = pages.next(&read).await.map_err(unavailable)? {
        for (object, version, _) in page {
            if objects.len() == MAX_SNAPSHOT {
                return Ok((objects, true));
            }
            objects.push(json!({ "object": object, "version": version }));
        }
    }
    Ok((objects, false))
}
