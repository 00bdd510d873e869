//! Vigil wire protocol: the types generated from `proto/vigil/v1/vigil.proto`.
//!
//! This crate holds generated code only. Conversion to domain types happens
//! at the edges, in the agent and controller crates.

#![allow(clippy::all, missing_docs)]

/// Protocol version 1.
pub mod v1 {
    tonic::include_proto!("vigil.v1");
}

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
