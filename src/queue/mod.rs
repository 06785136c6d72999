//! How alerts are kept: a durable FIFO per integration in sled, written by one group-committing
//! writer ([`writer`]) and read and acknowledged by the sender.

pub(crate) mod envelope;
pub(crate) mod received;
pub(crate) mod store;
pub(crate) mod writer;

pub use envelope::{Envelope, key_hash};
pub use received::Received;
pub use store::{DeadLetter, Depth, Store, StoreError};
pub use writer::{Alert, Ingest, IngestError, WriterConfig};
