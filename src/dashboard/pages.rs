//! The dashboard's routes: pages and their live fragments, the event stream, login and
//! logout, and actions.

use super::data::{self, Snapshot};
use super::{auth, charts, Actions, Shared};
use crate::core::model::Phase;
use crate::core::state::LogQuery;
use crate::node::{ApiRequest, Observation};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::value::Serde;
use minijinja::{context, Environment, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

type St = State<Arc<Shared>>;

/// Live updates are sent at most this often (≤ 2 a second).
const LIVE_MIN_GAP: Duration = Duration::from_millis(500);

/// The templates, compiled once. Their names end in `.html`: minijinja escapes every
/// value put into them unless it is marked safe (only the server-made SVG charts are).
pub(super) fn templates() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    for (name, src) in [
        ("base.html", include_str!("templates/base.html")),
        ("macros.html", include_str!("templates/macros.html")),
        ("_overview.html", include_str!("templates/_overview.html")),
        ("_backlog.html", include_str!("templates/_backlog.html")),
        ("_story.html", include_str!("templates/_story.html")),
        ("_mesh.html", include_str!("templates/_mesh.html")),
        ("login.html", include_str!("templates/login.html")),
        ("message.html", include_str!("templates/message.html")),
    ] {
        env.add_template(name, src)?;
    }
    Ok(env)
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(overview))
        .route("/fragment/overview", get(overview_fragment))
        .route("/backlog", get(backlog))
        .route("/fragment/backlog", get(backlog_fragment))
        .route("/story/{id}", get(story))
        .route("/fragment/story/{id}", get(story_fragment))
        .route("/mesh", get(mesh))
        .route("/fragment/mesh", get(mesh_fragment))
        .route("/live", get(live))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/action", post(super::actions::action))
        .route("/static/style.css", get(css))
        .route("/static/live.js", get(js))
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("templates/style.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("templates/live.js"),
    )
        .into_response()
}

fn render(sh: &Shared, code: StatusCode, name: &str, ctx: Value) -> Response {
    match sh.env.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(s) => (code, Html(s)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template = name, "dashboard: rendering failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// A short page with one message (errors, refusals).
pub(super) fn message(sh: &Shared, code: StatusCode, title: &str, text: &str) -> Response {
    render(
        sh,
        code,
        "message.html",
        context! { title => title, text => text, actions_why => why(sh) },
    )
}

pub(super) fn why(sh: &Shared) -> Option<String> {
    match &sh.actions {
        Actions::Available => None,
        Actions::Unavailable(w) => Some(w.clone()),
    }
}

pub(super) async fn ask<T>(
    sh: &Shared,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    sh.node
        .send(make(tx))
        .await
        .map_err(|_| "the node is stopping".to_string())?;
    rx.await.map_err(|_| "the node is stopping".to_string())
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn snapshot(sh: &Shared) -> Result<Snapshot, String> {
    let status = ask(sh, ApiRequest::Status).await?;
    let view = ask(sh, ApiRequest::View).await?;
    let events = ask(sh, |tx| ApiRequest::Events(0, tx))
        .await?
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    Ok(Snapshot {
        status,
        view,
        events,
        now_ms: now_ms(),
    })
}

/// Which page, with its query.
enum Page {
    Overview,
    Backlog(BacklogQuery),
    Story(String),
    Mesh,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct BacklogQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    label: String,
}

/// A page in full, or (`fragment`) only the part live updates replace.
async fn page(sh: &Shared, headers: &HeaderMap, p: Page, fragment: bool) -> Response {
    let snap = match snapshot(sh).await {
        Ok(s) => s,
        Err(e) => return message(sh, StatusCode::SERVICE_UNAVAILABLE, "Node unavailable", &e),
    };
    let session = sh.sessions.of(headers);
    let can_act = session.is_some() && sh.actions == Actions::Available;
    let (name, title, url, query, body) = match p {
        Page::Overview => (
            "_overview.html",
            "Overview".to_string(),
            "/fragment/overview".to_string(),
            None,
            overview_ctx(&snap),
        ),
        Page::Backlog(q) => {
            let body = backlog_ctx(&snap, &q);
            (
                "_backlog.html",
                "Backlog".into(),
                "/fragment/backlog".into(),
                Some(q),
                body,
            )
        }
        Page::Mesh => (
            "_mesh.html",
            "Mesh".into(),
            "/fragment/mesh".into(),
            None,
            mesh_ctx(&snap),
        ),
        Page::Story(id) => {
            let Ok(st) = snap.view.resolve(&id) else {
                return message(
                    sh,
                    StatusCode::NOT_FOUND,
                    "No such story",
                    &format!("There is no story {id} in this node's view."),
                );
            };
            let log = ask(sh, |tx| {
                ApiRequest::Log(
                    LogQuery {
                        story: Some(st.key.to_string()),
                        tail: Some(200),
                    },
                    tx,
                )
            })
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
            // The view keeps no body: the node reads it from its document.
            let body = ask(sh, |tx| ApiRequest::Bodies(vec![st.key.to_string()], tx))
                .await
                .ok()
                .and_then(|mut b| b.remove(st.key.as_str()))
                .unwrap_or_default();
            let url = format!("/fragment/story/{}", st.id);
            (
                "_story.html",
                format!("{} {}", st.id, st.fact.title),
                url,
                None,
                story_ctx(&snap, st, &body, log),
            )
        }
    };
    let flash = match (&session, fragment) {
        (Some((sid, _)), false) => sh.sessions.take_flash(sid),
        _ => None,
    };
    let ctx = context! {
        fragment => name,
        title => title,
        fragment_url => url,
        query => Serde(query),
        me => data::short(&snap.status.peer_id),
        me_full => snap.status.peer_id,
        csrf => session.as_ref().map(|(_, s)| s.csrf.clone()),
        logged_in => session.is_some(),
        can_act => can_act,
        actions_why => why(sh),
        login_refused => sh.login_refused.clone(),
        flash => flash,
        now => data::when(snap.now_ms),
        ..body
    };
    render(
        sh,
        StatusCode::OK,
        if fragment { name } else { "base.html" },
        ctx,
    )
}

fn overview_ctx(s: &Snapshot) -> Value {
    let (per_hour, latency) = data::chart_data(s, 12);
    let rest = to_value(json!({
        "page": "overview",
        "figures": data::figures(s),
        "attention": data::attention(s),
        "nodes": data::nodes(s),
        "today": data::today(s),
        "mesh_paused": s.view.steering.all.as_ref().map(|p| p.reason.clone()),
        "latency_rows": latency.iter().map(|(p, ms)| (*p, data::dur(*ms))).collect::<Vec<_>>(),
        "per_hour_total": per_hour.iter().sum::<u64>(),
    }));
    context! {
        throughput => Value::from_safe_string(charts::throughput(&per_hour)),
        latency => Value::from_safe_string(charts::latency(&latency)),
        ..rest
    }
}

/// A serializable value for the templates.
fn to_value(j: serde_json::Value) -> Value {
    Value::from(Serde(j))
}

fn backlog_ctx(s: &Snapshot, q: &BacklogQuery) -> Value {
    let needle = q.q.trim().to_lowercase();
    let all = s.view.stories_ordered();
    let rows: Vec<data::StoryRow> = all
        .iter()
        .filter(|st| q.state.is_empty() || st.status.as_str() == q.state)
        .filter(|st| needle.is_empty() || st.fact.title.to_lowercase().contains(&needle))
        .filter(|st| q.label.is_empty() || st.fact.labels.contains(&q.label))
        .map(|st| data::story_row(st))
        .collect();
    let states: Vec<(&str, usize)> = crate::core::model::StoryStatus::ALL
        .iter()
        .map(|k| (k.as_str(), all.iter().filter(|st| st.status == *k).count()))
        .collect();
    to_value(json!({
        "page": "backlog",
        "rows": rows,
        "states": states,
        "total": all.len(),
        "f": q,
    }))
}

/// One result of a story's phases, with its handoff.
#[derive(Serialize)]
struct ResultRow {
    phase: &'static str,
    round: u32,
    holder: String,
    at: String,
    handoff: crate::core::model::Handoff,
    verdict: Option<&'static str>,
    escalations: Vec<String>,
    cost: String,
}

fn story_ctx(
    s: &Snapshot,
    st: &crate::core::state::StoryView,
    body: &str,
    log: Vec<crate::core::state::AuditEntry>,
) -> Value {
    let results: Vec<ResultRow> = s
        .view
        .history(&st.key)
        .into_iter()
        .map(|r| ResultRow {
            phase: r.phase.as_str(),
            round: r.round,
            holder: data::short(&r.holder),
            at: data::when(r.written_at_ms),
            verdict: r.handoff.verdict.map(|v| match v {
                crate::core::model::Verdict::Approve => "approve",
                crate::core::model::Verdict::Reject => "reject",
            }),
            escalations: r
                .escalations
                .iter()
                .map(|e| format!("{}: {}", e.kind.as_str(), e.detail))
                .collect(),
            cost: crate::core::state::usd(r.handoff.cost_micro_usd),
            handoff: r.handoff.clone(),
        })
        .collect();
    let changed: Vec<String> = s
        .view
        .history(&st.key)
        .iter()
        .filter(|r| matches!(r.phase, Phase::Implement | Phase::Rework))
        .flat_map(|r| r.handoff.changed_files.iter().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let events: Vec<data::EventRow> = s
        .events
        .iter()
        .filter(|e| e.story == st.id || e.story == st.key)
        .map(data::event_row)
        .collect();
    let log: Vec<serde_json::Value> = log
        .into_iter()
        .map(|a| {
            json!({
                "at": a.at_ms.map(data::when),
                "author": data::short(&a.author),
                "action": a.action,
                "standing": a.standing.as_str(),
            })
        })
        .collect();
    to_value(json!({
        "page": "story",
        "story": data::story_row(st),
        "key": st.key,
        "body": body,
        "files": st.fact.files,
        "depends": st.depends_on_ids,
        "round": st.round,
        "attempts": st.attempts,
        "failures": st.more.failures,
        "blocked_reason": st.more.blocked_reason,
        "paused": st.more.paused.as_ref().map(|p| p.reason.clone()),
        "cancelled": st.more.cancelled.as_ref().map(|p| p.reason.clone()),
        "notes": st.more.notes.iter().map(|n| n.text.clone()).collect::<Vec<_>>(),
        "phases_done": st.phases_done.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "merged": st.more.merged.as_ref().map(|m| json!({
            "commit": m.commit, "holder": data::short(&m.holder), "at": data::when(m.written_at_ms),
        })),
        "results": results,
        "changed": changed,
        "events": events,
        "log": log,
        "attention": data::attention(s).into_iter().filter(|a| a.story == st.id).collect::<Vec<_>>(),
    }))
}

fn mesh_ctx(s: &Snapshot) -> Value {
    let claims: Vec<serde_json::Value> = s
        .status
        .claims
        .iter()
        .map(|c| {
            json!({
                "holder": data::short(&c.holder),
                "resources": c.resources,
                "age": data::dur(c.age_ms),
                "expires": data::dur(c.expires_in_ms),
            })
        })
        .collect();
    let r = &s.view.roster;
    to_value(json!({
        "page": "mesh",
        "nodes": data::nodes(s),
        "claims": claims,
        "mesh_paused": s.view.steering.all.as_ref().map(|p| p.reason.clone()),
        "enforced": r.enforced,
        "operators": r.operators.iter().map(|o| data::short(o)).collect::<Vec<_>>(),
        "admitted": r.admitted.len(),
        "revoked": r.revoked.iter().map(|e| data::short(&e.peer)).collect::<Vec<_>>(),
    }))
}

async fn overview(State(sh): St, h: HeaderMap) -> Response {
    page(&sh, &h, Page::Overview, false).await
}
async fn overview_fragment(State(sh): St, h: HeaderMap) -> Response {
    page(&sh, &h, Page::Overview, true).await
}
async fn backlog(State(sh): St, h: HeaderMap, Query(q): Query<BacklogQuery>) -> Response {
    page(&sh, &h, Page::Backlog(q), false).await
}
async fn backlog_fragment(State(sh): St, h: HeaderMap, Query(q): Query<BacklogQuery>) -> Response {
    page(&sh, &h, Page::Backlog(q), true).await
}
async fn story(State(sh): St, h: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    page(&sh, &h, Page::Story(id), false).await
}
async fn story_fragment(State(sh): St, h: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    page(&sh, &h, Page::Story(id), true).await
}
async fn mesh(State(sh): St, h: HeaderMap) -> Response {
    page(&sh, &h, Page::Mesh, false).await
}
async fn mesh_fragment(State(sh): St, h: HeaderMap) -> Response {
    page(&sh, &h, Page::Mesh, true).await
}

/// What in an observation is worth a page update (not every heartbeat).
fn relevant(o: &Observation) -> (Vec<u8>, Vec<String>, Vec<String>, Vec<String>, u64) {
    (
        o.heads_digest.to_vec(),
        o.alive.clone(),
        o.suspect.clone(),
        o.dead.clone(),
        o.events,
    )
}

/// Server-sent events: one `change` each time the node's document, membership or
/// timeline changed, at most every [`LIVE_MIN_GAP`]; the page then fetches its fragment.
async fn live(State(sh): St) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut rx = sh.observe.clone();
    let last = relevant(&rx.borrow_and_update());
    let stream = futures::stream::unfold((rx, last, true), |(mut rx, last, first)| async move {
        if !first {
            // A rate limit, not a synchronisation: changes in the gap are not lost, the
            // next comparison sees them.
            tokio::time::sleep(LIVE_MIN_GAP).await;
        }
        loop {
            let now = relevant(&rx.borrow_and_update());
            if now != last {
                let ev = SseEvent::default().event("change").data("1");
                return Some((Ok(ev), (rx, now, false)));
            }
            rx.changed().await.ok()?;
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login_page(State(sh): St, h: HeaderMap) -> Response {
    login_form(&sh, StatusCode::OK, None, sh.sessions.of(&h).is_some())
}

fn login_form(sh: &Shared, code: StatusCode, error: Option<&str>, logged_in: bool) -> Response {
    render(
        sh,
        code,
        "login.html",
        context! {
            error => error,
            logged_in => logged_in,
            login_refused => sh.login_refused.clone(),
            actions_why => why(sh),
        },
    )
}

async fn login(State(sh): St, Form(f): Form<LoginForm>) -> Response {
    if let Some(why) = &sh.login_refused {
        return message(&sh, StatusCode::FORBIDDEN, "Login refused", why);
    }
    if !sh.sessions.token_ok(&f.token) {
        tracing::warn!("dashboard: a login with a wrong token");
        let e = "That is not this node's control token (the \"token\" in control.json in its data dir).";
        return login_form(&sh, StatusCode::UNAUTHORIZED, Some(e), false);
    }
    let id = sh.sessions.open();
    tracing::info!("dashboard: a session opened");
    see_other("/", Some(auth::session_cookie(&id, sh.tls)))
}

pub(super) fn see_other(to: &str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(sh): St, h: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Some((id, s)) = sh.sessions.of(&h) {
        if auth::same_secret(&f.csrf, &s.csrf) {
            sh.sessions.close(&id);
        }
    }
    see_other("/", Some(auth::expired_cookie()))
}
