//! grip: the GRIP protocol, no I/O.

pub mod header;
pub mod tnetstring;
