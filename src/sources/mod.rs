//! How alerts come in. Every source hands alerts to `queue::Ingest` and never touches sled.

pub mod admin;
pub mod http;
