//! A stand-in for Grafana OnCall's inbound integration endpoint, for trying the agent locally:
//! prints every alert it receives and answers `200 "Ok."` as OnCall does.
//!
//!     cargo run --example fake_oncall -- 127.0.0.1:9754
//!
//! Only binds loopback addresses.

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::post;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9754".to_string())
        .parse()
        .expect("an address like 127.0.0.1:9754");
    assert!(
        addr.ip().is_loopback(),
        "fake_oncall only listens on loopback"
    );
    let app = Router::new().route(
        "/integrations/v1/{kind}/{token}/",
        post(
            |Path((kind, _token)): Path<(String, String)>, body: Bytes| async move {
                println!("{kind}: {}", String::from_utf8_lossy(&body));
                "\"Ok.\""
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    eprintln!("fake OnCall listening on http://{addr}/integrations/v1/<kind>/<token>/");
    axum::serve(listener, app).await.expect("serve");
}
