//! grip: the GRIP protocol, no I/O.

pub mod filter;
pub mod header;
pub mod instruct;
pub mod publish;
pub mod sig;
pub mod tnetstring;
mod value;
