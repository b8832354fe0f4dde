//! gripd library.

pub mod routes;
