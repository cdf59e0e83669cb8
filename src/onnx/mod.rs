//! ONNX files: the protobuf schema, native inspection, and the built-in models.

pub mod builtin;
pub mod inspect;
pub mod proto;
