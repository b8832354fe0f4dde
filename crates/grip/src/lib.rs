//! grip: the GRIP protocol, no I/O.
