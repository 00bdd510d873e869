//! Vigil wire protocol: the types generated from `proto/vigil/v1/vigil.proto`,
//! and [`codec`], the one place where they are converted to and from the
//! domain types of `vigil-core`.

/// Protocol version 1.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("vigil.v1");
}

pub mod codec;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
