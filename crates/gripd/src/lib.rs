//! gripd library.
