#![forbid(unsafe_code)]
//! HTTP plumbing shared by k_proxy and k_server: the JSON error type, bounded body and
//! header reads, the method and content-type guards, the reload slot, the accept loop
//! with graceful shutdown, and log set-up.
//!
//! Nothing here decides *who* may do *what*; that policy lives in the binaries.

mod access;
mod body;
mod cli;
mod error;
mod guards;
mod limits;
mod linger;
mod log_limit;
pub mod log_writer;
mod open_files;
mod plain_on_tls;
mod serve;
mod slot;
mod spawn_boxed;
mod telemetry;
mod workers;
mod write_stall;

pub use access::access_line;
pub use body::{DrainLimits, RequestBody};
pub use cli::{ServeArgs, SharedArgs};
pub use linger::{Linger, LingerLimits};
pub use open_files::fit_open_file_limit;

pub use error::{json_response, ApiError, Fault, HttpResponse};
pub use guards::{require_json, require_method, BODY_READ_TIMEOUT};
pub use limits::{body_too_large, check_header_limits, read_body_limited, HeaderLimits};
pub use serve::{serve, shutdown_signal, ConnInfo, ReloadableTls, ServeSettings};
pub use slot::Slot;
pub use spawn_boxed::BoxedSpawn;
pub use telemetry::{describe_error, init_tracing};
pub use workers::current_worker;
pub use write_stall::WriteStallLimit;
