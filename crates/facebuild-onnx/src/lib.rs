//! ONNX files: the protobuf schema, native inspection, and the built-in models.

use facebuild_base::{domain, error, util};
use facebuild_cache as cache;

pub mod builtin;
pub mod inspect;
pub mod layout;
pub mod proto;
