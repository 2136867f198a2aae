//! The workers page: queues, slots, GPUs, heartbeat age, gone ones marked.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::html;

use super::pages::{frame, took, Section};
use super::session::Viewer;
use super::{problem, UiState};

pub(super) async fn page(
    State(ui): State<UiState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let workers = match ui.api.daemon.workers().await {
        Ok(workers) => workers,
        Err(why) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &viewer,
                &format!("cannot list workers: {why}"),
            )
        }
    };
    let now = sluice_worker::task::now_ms();
    let lease = ui.api.daemon.lease();
    let body = html! {
        h1 { "Workers" }
        p.sub { "A worker silent for longer than a lease (" (humantime::format_duration(lease)) ") is gone: its tasks are taken back." }
        @if workers.is_empty() { p.sub { "No worker has registered." } } @else {
            table {
                thead { tr { th { "Worker" } th { "State" } th { "Queues" } th.num { "Slots" } th.num { "Running" } th.num { "Free" } th { "GPUs" } th { "Docker" } th.num { "Last heartbeat" } } }
                tbody { @for w in &workers {
                    @let silent = now.saturating_sub(w.heartbeat_ms);
                    @let gone = !ui.api.daemon.is_alive(w, now);
                    tr {
                        td.mono { (w.name) }
                        td { span class={ "badge " (if gone { "st-failed" } else { "st-succeeded" }) } { (if gone { "gone" } else { "alive" }) } }
                        td { (w.queues.join(", ")) }
                        td.num { (w.slots) }
                        td.num { (w.running) }
                        td.num { (w.slots.saturating_sub(w.running)) }
                        td { @if w.gpus.is_empty() { "-" } @else { (w.gpus.join(", ")) } }
                        td { (if w.docker { "yes" } else { "no" }) }
                        td.num { (took(Some(silent))) " ago" }
                    }
                } }
            }
        }
    };
    Html(frame("Workers", Section::Workers, &viewer, body).into_string()).into_response()
}
