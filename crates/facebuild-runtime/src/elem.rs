//! The element types a model's inputs and outputs may have. facebuild prepares every tensor
//! in f32; each input is fed in the model's own type (float16 I/O exports, uint8 image
//! inputs, int64 indices), and outputs of any numeric type are read back as f32, so every
//! comparison and metric works on one type.

use ndarray::ArrayD;

/// A tensor element type facebuild can feed and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// float32, what facebuild prepares.
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16.
    Bf16,
    /// float64.
    F64,
    /// uint8 (image inputs).
    U8,
    /// int8.
    I8,
    /// int32.
    I32,
    /// int64.
    I64,
    /// bool.
    Bool,
}

/// A value converted from and to f32: rounded and saturated for integers, as a cast of
/// pixel values is expected to behave.
pub trait FromF32: Copy {
    /// `v` in this type.
    fn from_f32(v: f32) -> Self;
    /// This value in f32.
    fn to_f32(self) -> f32;
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl FromF32 for $t {
            fn from_f32(v: f32) -> Self {
                // `as` saturates (and maps NaN to 0).
                v.round() as $t
            }
            fn to_f32(self) -> f32 {
                self as f32
            }
        }
    )*};
}
int_elem!(u8, i8, i32, i64);

impl FromF32 for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl FromF32 for f64 {
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}
impl FromF32 for half::f16 {
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}
impl FromF32 for half::bf16 {
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}
impl FromF32 for bool {
    fn from_f32(v: f32) -> Self {
        v != 0.0
    }
    fn to_f32(self) -> f32 {
        f32::from(u8::from(self))
    }
}

/// `$body` with `$t` the Rust type of the element type `$elem`: one dispatch for every
/// runtime's feeding and reading.
macro_rules! with_type {
    ($elem:expr, $t:ident => $body:expr) => {
        match $elem {
            $crate::elem::Elem::F32 => {
                type $t = f32;
                $body
            }
            $crate::elem::Elem::F16 => {
                type $t = half::f16;
                $body
            }
            $crate::elem::Elem::Bf16 => {
                type $t = half::bf16;
                $body
            }
            $crate::elem::Elem::F64 => {
                type $t = f64;
                $body
            }
            $crate::elem::Elem::U8 => {
                type $t = u8;
                $body
            }
            $crate::elem::Elem::I8 => {
                type $t = i8;
                $body
            }
            $crate::elem::Elem::I32 => {
                type $t = i32;
                $body
            }
            $crate::elem::Elem::I64 => {
                type $t = i64;
                $body
            }
            $crate::elem::Elem::Bool => {
                type $t = bool;
                $body
            }
        }
    };
}
pub(crate) use with_type;

/// `a` converted element by element.
pub fn cast<T: FromF32>(a: &ArrayD<f32>) -> ArrayD<T> {
    a.mapv(T::from_f32)
}

/// Writes `src` into `dst`, converted.
pub fn write_into<T: FromF32>(dst: &mut [T], src: &ArrayD<f32>) {
    for (d, s) in dst.iter_mut().zip(src.iter()) {
        *d = T::from_f32(*s);
    }
}

/// `src` read as f32.
pub fn read_from<T: FromF32>(src: &[T]) -> Vec<f32> {
    src.iter().map(|v| v.to_f32()).collect()
}

impl Elem {
    /// Every type facebuild feeds, by its ONNX name.
    pub const ONNX_NAMES: [(&'static str, Elem); 9] = [
        ("float32", Elem::F32),
        ("float16", Elem::F16),
        ("bfloat16", Elem::Bf16),
        ("float64", Elem::F64),
        ("uint8", Elem::U8),
        ("int8", Elem::I8),
        ("int32", Elem::I32),
        ("int64", Elem::I64),
        ("bool", Elem::Bool),
    ];

    /// The type an ONNX element type name (as `onnx::proto::elem_type_name` gives it) names,
    /// where facebuild can feed it.
    pub fn from_onnx_name(name: &str) -> Option<Elem> {
        Self::ONNX_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
    }

    /// The element type of an ONNX Runtime tensor, where facebuild can feed it.
    pub fn from_ort(t: ort::value::TensorElementType) -> Option<Elem> {
        use ort::value::TensorElementType as T;
        Some(match t {
            T::Float32 => Elem::F32,
            T::Float16 => Elem::F16,
            T::Bfloat16 => Elem::Bf16,
            T::Float64 => Elem::F64,
            T::Uint8 => Elem::U8,
            T::Int8 => Elem::I8,
            T::Int32 => Elem::I32,
            T::Int64 => Elem::I64,
            T::Bool => Elem::Bool,
            _ => return None,
        })
    }

    /// The element type of an OpenVINO tensor, where facebuild can feed it.
    pub fn from_openvino(t: openvino::ElementType) -> Option<Elem> {
        use openvino::ElementType as T;
        Some(match t {
            T::F32 => Elem::F32,
            T::F16 => Elem::F16,
            T::Bf16 => Elem::Bf16,
            T::F64 => Elem::F64,
            T::U8 => Elem::U8,
            T::I8 => Elem::I8,
            T::I32 => Elem::I32,
            T::I64 => Elem::I64,
            T::Boolean => Elem::Bool,
            _ => return None,
        })
    }

    /// OpenVINO's name for the type.
    pub fn to_openvino(self) -> openvino::ElementType {
        use openvino::ElementType as T;
        match self {
            Elem::F32 => T::F32,
            Elem::F16 => T::F16,
            Elem::Bf16 => T::Bf16,
            Elem::F64 => T::F64,
            Elem::U8 => T::U8,
            Elem::I8 => T::I8,
            Elem::I32 => T::I32,
            Elem::I64 => T::I64,
            Elem::Bool => T::Boolean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn integers_round_and_saturate_floats_round_trip() {
        let a = ArrayD::from_shape_vec(IxDyn(&[4]), vec![-3.6, 0.4, 254.6, 300.0]).unwrap();
        assert_eq!(
            cast::<u8>(&a).into_raw_vec_and_offset().0,
            vec![0, 0, 255, 255]
        );
        assert_eq!(
            cast::<i8>(&a).into_raw_vec_and_offset().0,
            vec![-4, 0, 127, 127]
        );
        let h = cast::<half::f16>(&a);
        assert_eq!(read_from(h.as_slice().unwrap())[2], 254.625);
    }
}
