//! HTTP2 observer (sans-IO, both directions of one connection): not implemented natively yet.
use crate::model::Parser;

/// A new http2 parser, or None while the native implementation is not built in.
pub fn new_parser(_body_limit: usize, _midstream: bool) -> Option<Box<dyn Parser>> {
    None
}
