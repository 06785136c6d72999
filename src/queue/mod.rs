//! How alerts are kept: a durable FIFO per integration in sled, written by one group-committing
//! writer ([`writer`]) and read and acknowledged by the sender.

pub mod envelope;
pub mod received;
pub mod store;
pub mod writer;

pub use envelope::Envelope;
pub use received::Received;
pub use store::{DeadLetter, Depth, Store, StoreError};
pub use writer::{Ingest, IngestError};
