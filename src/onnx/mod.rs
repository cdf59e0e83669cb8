//! ONNX files: the protobuf schema, native inspection, and the built-in models.

pub(crate) mod builtin;
pub(crate) mod inspect;
pub(crate) mod layout;
pub(crate) mod proto;
