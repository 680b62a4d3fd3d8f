//! The worker contract shared by the operator and the SDKs: environment names and the
//! termination message a worker writes before it exits.

pub mod env;
mod message;

pub use message::*;
