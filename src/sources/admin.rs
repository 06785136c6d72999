//! The admin API (dead letters), served on the Unix socket only: the socket's file
//! permissions are its access control.

use axum::Router;

use super::http::HttpState;

pub fn routes() -> Router<HttpState> {
    Router::new()
}
