//! grip: the GRIP protocol, no I/O.

pub mod header;
pub mod instruct;
pub mod publish;
pub mod tnetstring;
mod value;
